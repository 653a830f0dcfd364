//! The namespaces the sprite's programs run in, one level below the agent's.
//!
//! On the namespace backend the agent is root of the sprite's user namespace, and so is
//! whoever runs `sudo` in the sprite. Same uid, and that user namespace's capabilities, would
//! let the sprite's root ptrace the agent, read its memory or take its descriptors
//! (`pidfd_getfd`) and answer the host in its place. So at start PID 1 makes a child user
//! namespace (identity-mapped: the same ids, the same files) with its own mount, UTS and IPC
//! namespaces, and every program the agent starts joins those before it execs. The agent
//! itself stays in the parent and is not dumpable, so the kernel's ptrace check
//! (`__ptrace_may_access`: same uid, then "not dumpable needs CAP_SYS_PTRACE over the mm's
//! user namespace") refuses the sprite's root: its capabilities are only in the child.
//!
//! The sprite's root keeps what it needs for its own machine: mounts, hostname, ptrace of
//! its own programs, `sudo`. It can still signal the agent proper (the same uid), which ends
//! its own sprite, and nothing else.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};

/// Namespaces of the sprite's programs (descriptors, close-on-exec).
pub struct Jail {
    user: OwnedFd,
    others: Vec<(OwnedFd, CloneFlags)>,
}

static JAIL: OnceLock<Jail> = OnceLock::new();

/// Size of the sprite's id range: the child maps all of it, one to one.
const IDS: u32 = 65536;

/// Makes the programs' namespaces. Call from PID 1 while it is single-threaded (it forks).
pub fn create() -> Result<(), String> {
    let jail = build()?;
    JAIL.set(jail).map_err(|_| "jail made twice".to_string())
}

fn build() -> Result<Jail, String> {
    let (c2p_r, c2p_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (p2c_r, p2c_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: called before any thread is started; the child only makes syscalls and exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((c2p_r, p2c_w));
            let mut to_parent = File::from(c2p_w);
            let mut from_parent = File::from(p2c_r);
            let mut b = [0u8; 1];
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok()
                && to_parent.write_all(b"u").is_ok()
                && from_parent.read_exact(&mut b).is_ok()
                && unshare(
                    CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC,
                )
                .is_ok()
                && to_parent.write_all(b"n").is_ok();
            // Wait until the parent holds the namespaces (it closes its end), then go.
            let _ = from_parent.read(&mut b);
            // SAFETY: _exit skips the parent's atexit handlers and buffers, as a fork child must.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop((c2p_w, p2c_r));
            let mut from_child = File::from(c2p_r);
            let mut to_child = File::from(p2c_w);
            let result = (|| {
                let mut b = [0u8; 1];
                from_child
                    .read_exact(&mut b)
                    .map_err(|_| "the jail's user namespace could not be made".to_string())?;
                let map = format!("0 0 {IDS}\n");
                for f in ["uid_map", "gid_map"] {
                    std::fs::write(format!("/proc/{child}/{f}"), &map)
                        .map_err(|e| format!("writing the jail's {f}: {e}"))?;
                }
                to_child.write_all(b"m").map_err(|e| e.to_string())?;
                from_child
                    .read_exact(&mut b)
                    .map_err(|_| "the jail's namespaces could not be made".to_string())?;
                let open = |ns: &str| -> Result<OwnedFd, String> {
                    File::open(format!("/proc/{child}/ns/{ns}"))
                        .map(OwnedFd::from)
                        .map_err(|e| format!("opening the jail's {ns} namespace: {e}"))
                };
                Ok(Jail {
                    user: open("user")?,
                    others: vec![
                        (open("mnt")?, CloneFlags::CLONE_NEWNS),
                        (open("uts")?, CloneFlags::CLONE_NEWUTS),
                        (open("ipc")?, CloneFlags::CLONE_NEWIPC),
                    ],
                })
            })();
            drop(to_child);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// Makes this process undumpable: its memory, descriptors and /proc entries are then out of
/// reach of anyone without CAP_SYS_PTRACE over its user namespace. Forks inherit it; an exec
/// resets it, so the programs the agent starts are ptraceable as usual.
pub fn protect_self() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Raw descriptors a forked child joins, in order (user first: it gives the capabilities
/// the others need). Empty where there is no jail (a microVM, whose guest root owns the
/// kernel anyway).
pub fn fds() -> Vec<(RawFd, libc::c_int)> {
    JAIL.get()
        .map(|j| {
            std::iter::once((j.user.as_raw_fd(), libc::CLONE_NEWUSER))
                .chain(
                    j.others
                        .iter()
                        .map(|(fd, f)| (fd.as_raw_fd(), f.bits() as libc::c_int)),
                )
                .collect()
        })
        .unwrap_or_default()
}

/// In a forked child before exec: joins the jail. Async-signal-safe (raw syscalls only).
pub fn enter(fds: &[(RawFd, libc::c_int)]) -> std::io::Result<()> {
    for &(fd, kind) in fds {
        // SAFETY: setns on a descriptor this process holds; no memory is touched.
        if unsafe { libc::setns(fd, kind) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
