//! PID 1: reap every orphan, forward termination signals to the agent, and when the agent
//! exits, end the sprite cleanly.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Runs as PID 1. Never returns.
pub fn main() -> ! {
    // Before any other process exists in the sprite: make the programs' namespaces and put
    // the agent out of their reach. Without that the sprite's root could become the agent,
    // so a failure stops the sprite rather than run it unprotected. A microVM's guest root
    // owns its kernel by design; there the host's bounds are the protection.
    if std::env::var_os(sprites_agent_protocol::VM_ENV_VAR).is_none() {
        if let Err(e) = crate::jail::protect_self().and_then(|()| crate::jail::create()) {
            eprintln!("init: cannot keep the sprite's programs away from the agent: {e}");
            std::process::exit(1)
        }
    }
    let all = SigSet::all();
    if let Err(e) = all.thread_block() {
        eprintln!("init: blocking signals: {e}");
    }
    // SAFETY: no threads exist yet; the child immediately execs or builds its own runtime.
    let agent = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = SigSet::empty().thread_set_mask();
            crate::server::main();
            std::process::exit(0)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("init: fork: {e}");
            std::process::exit(1)
        }
    };
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        match sig {
            Signal::SIGCHLD => {
                if let Some(code) = reap(agent) {
                    end_sprite(code)
                }
            }
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT => {
                let _ = kill(agent, sig);
            }
            _ => {}
        }
    }
}

/// Reaps every exited child; returns the agent's exit code if the agent was among them.
fn reap(agent: Pid) -> Option<i32> {
    let mut agent_code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => agent_code = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                agent_code = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return agent_code,
            Ok(_) => {}
        }
    }
}

fn end_sprite(code: i32) -> ! {
    eprintln!("init: agent exited with {code}; stopping the sprite");
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    if std::env::var_os(sprites_agent_protocol::VM_ENV_VAR).is_some() {
        // PID 1 of a VM: power off (exiting would panic the guest kernel).
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(code)
}
