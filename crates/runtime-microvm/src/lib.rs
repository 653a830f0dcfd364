//! The microVM backend (RFC 0001): each sprite is a QEMU `microvm` with its own kernel (Debian's
//! cloud kernel), the base image and the sprite's disk as virtio-blk devices, a tap in the
//! sprite's network namespace, and the same agent as PID 1, reached over vsock through a
//! `vhost-device-vsock` process. KVM where the host has real hardware virtualization, TCG
//! (software emulation) elsewhere. Warm = the QEMU process stopped (memory kept).
//!
//! QEMU and the vsock process run in their own sessions, so sprites outlive the server, which
//! finds them again through their pid files and QMP sockets.
//!
//! Architecture invariant: like every backend, this crate boots, pauses and stops sprites and
//! makes no policy decisions; it knows no HTTP routes.

pub mod detect;
mod qmp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sprites_agent_protocol as proto;
use sprites_runtime::host::live_pid;
use sprites_runtime::{AgentStream, Backend, BackendError, BackendKind, SpriteSpec};
use sprites_storage::guest::GuestArtifacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How guests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// Software emulation (slow to boot; works anywhere).
    Tcg,
}

/// Configuration of the microVM backend.
#[derive(Clone)]
pub struct MicroVmConfig {
    /// Directory of per-sprite runtime files (sockets, pid files, console logs).
    pub run_root: PathBuf,
    /// Image cache holding the guest artifacts (`storage::guest`).
    pub image_dir: PathBuf,
    /// The agent binary put into guests.
    pub agent_bin: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// The `vhost-device-vsock` program.
    pub vsock_bin: PathBuf,
    /// Sprite networking; `None` gives guests loopback only.
    pub network: Option<Arc<sprites_network::Network>>,
    /// Most guest memory in MiB, whatever the sprite's memory limit says.
    pub memory_cap_mib: u64,
    /// Virtual CPUs per guest.
    pub vcpus: u32,
}

/// The microVM backend.
pub struct MicroVmBackend {
    cfg: MicroVmConfig,
    guest: GuestArtifacts,
    /// The guest initramfs with this server's agent appended.
    initrd: PathBuf,
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Guests each get their own vsock device, so they can all use the same CID.
const GUEST_CID: u32 = 3;

struct Paths {
    dir: PathBuf,
    qmp: PathBuf,
    vhost: PathBuf,
    vsock: PathBuf,
    qemu_pid: PathBuf,
    vsock_pid: PathBuf,
    console: PathBuf,
    initrd: PathBuf,
}

impl Paths {
    fn new(dir: PathBuf) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            vhost: dir.join("vhost.sock"),
            vsock: dir.join("vsock.sock"),
            qemu_pid: dir.join("qemu.pid"),
            vsock_pid: dir.join("vsock.pid"),
            console: dir.join("console.log"),
            initrd: dir.join("initrd.cpio.gz"),
            dir,
        }
    }
}

fn other(e: impl std::fmt::Display) -> BackendError {
    BackendError::Other(e.to_string())
}

/// The checkpoint disks to show (`<id>.ext4` beside the sprite's disk), at most five,
/// oldest first. A running VM cannot take new disks, so views change at its next boot.
fn checkpoint_images(spec: &SpriteSpec) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(spec.checkpoint_images_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".ext4")?.to_string();
            (!id.starts_with('.') && id.len() <= 17).then(|| (id, e.path()))
        })
        .collect();
    v.sort_by_key(|(id, _)| {
        id.trim_start_matches('v')
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    let extra = v.len().saturating_sub(5);
    v.drain(..extra);
    v
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(0)
}

impl MicroVmBackend {
    /// A backend over ready guest artifacts (see `storage::guest`); writes the guest
    /// initramfs with `cfg.agent_bin` in it.
    pub fn new(cfg: MicroVmConfig) -> Result<Self, BackendError> {
        let guest = GuestArtifacts::new(&cfg.image_dir);
        if !guest.is_ready() {
            return Err(other(
                "the microVM guest is not built (spritesd image build builds it)",
            ));
        }
        std::fs::create_dir_all(&cfg.run_root)?;
        let initrd = cfg.run_root.join("initramfs-agent.cpio.gz");
        guest
            .initramfs_with_agent(&cfg.agent_bin, &initrd)
            .map_err(other)?;
        Ok(Self { cfg, guest, initrd })
    }

    fn paths(&self, id: &str) -> Paths {
        Paths::new(
            self.cfg
                .run_root
                .join(id.strip_prefix("sprite-").unwrap_or(id)),
        )
    }

    fn qemu_pid(&self, id: &str) -> Option<i32> {
        let p = self.paths(id);
        live_pid(&p.qemu_pid, &p.dir)
    }

    /// The per-boot initramfs: the agent initramfs plus `/sprite.conf` for this sprite.
    fn write_initrd(
        &self,
        spec: &SpriteSpec,
        p: &Paths,
        net: bool,
        disks: usize,
    ) -> Result<(), BackendError> {
        let tree = p.dir.join("conf-tree");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree)?;
        let env = serde_json::to_string(&spec.env).map_err(other)?;
        let mut conf = format!(
            "export SPRITE_HOSTNAME={}\nexport {}={}\nexport {}={}\nexport {}=1\nexport SPRITE_DISKS={disks}\n",
            shell_quote(&spec.hostname),
            proto::SPRITE_ENV_VAR,
            shell_quote(&env),
            proto::VSOCK_PORT_ENV_VAR,
            proto::AGENT_VSOCK_PORT,
            proto::VM_ENV_VAR,
        );
        if net {
            conf.push_str(&format!(
                "export SPRITE_NET=1\nexport {}=10.0.0.2\n",
                proto::DNS_ENV_VAR
            ));
        }
        std::fs::write(tree.join("sprite.conf"), conf)?;
        let extra = p.dir.join("conf.cpio.gz");
        sprites_storage::guest::cpio_gz(&tree, &extra).map_err(other)?;
        let mut out = std::fs::read(&self.initrd)?;
        out.extend(std::fs::read(&extra)?);
        std::fs::write(&p.initrd, out)?;
        let _ = std::fs::remove_dir_all(&tree);
        let _ = std::fs::remove_file(&extra);
        Ok(())
    }

    /// A tap for the guest in the sprite's namespace, bridged with its veth, so the guest owns
    /// 10.0.0.1 and the router's policy applies unchanged.
    async fn prepare_tap(&self, ns: &str) -> Result<(), BackendError> {
        let script = format!(
            "set -e
             ip -n {ns} link show tap0 >/dev/null 2>&1 || ip -n {ns} tuntap add dev tap0 mode tap
             ip -n {ns} link show br0 >/dev/null 2>&1 || ip -n {ns} link add br0 type bridge
             ip -n {ns} addr flush dev eth0
             ip -n {ns} link set eth0 master br0
             ip -n {ns} link set tap0 master br0
             ip -n {ns} link set tap0 up
             ip -n {ns} link set br0 up"
        );
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .await?;
        if !out.status.success() {
            return Err(other(format!(
                "preparing the guest's tap: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    async fn wait_agent(&self, spec: &SpriteSpec, p: &Paths) -> Result<(), BackendError> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        // No vsock connection before the agent says (on the console) that it listens: a
        // connection requested while the guest's vsock driver is still coming up can wedge
        // vhost-device-vsock for good (seen in CI).
        loop {
            // The end only: the guest writes the console and may write a lot of it.
            let console = sprites_runtime::host::file_tail(&p.console, 64 << 10);
            if console.lines().any(|l| l.contains(proto::READY_MARK)) {
                break;
            }
            if self.qemu_pid(&spec.id).is_none() || Instant::now() > deadline {
                break; // reported below, with the console
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            let last = match self.connect(spec).await {
                Ok(s) => match sprites_runtime::agent::info(s).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if self.qemu_pid(&spec.id).is_none() || Instant::now() > deadline {
                let tail = sprites_runtime::host::file_tail(&p.console, 3000);
                return Err(BackendError::Start {
                    id: spec.id.clone(),
                    reason: format!("the guest's agent did not answer ({last}); console:\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_vsock(&self, p: &Paths) {
        if let Some(pid) = live_pid(&p.vsock_pid, &p.dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(&p.vsock_pid);
    }

    async fn wait_gone(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.qemu_pid(id).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.qemu_pid(id).is_none()
    }
}

#[async_trait]
impl Backend for MicroVmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::MicroVm
    }

    async fn start(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        // The sprite's own base, as a disk (made once per base, on its first boot here).
        let rootfs = spec
            .base
            .clone()
            .or_else(|| {
                sprites_storage::image::Images::new(&self.cfg.image_dir)
                    .current()
                    .map(|b| b.rootfs())
            })
            .ok_or_else(|| other("no base image (spritesd image build makes one)"))?;
        let base_disk =
            tokio::task::spawn_blocking(move || GuestArtifacts::ensure_base_disk(&rootfs))
                .await
                .map_err(other)?
                .map_err(other)?;

        let p = self.paths(&spec.id);
        std::fs::create_dir_all(&p.dir)?;
        for s in [&p.qmp, &p.vhost, &p.vsock] {
            let _ = std::fs::remove_file(s);
        }
        let netns = match &self.cfg.network {
            Some(net) => {
                let (net, id) = (net.clone(), spec.id.clone());
                let plan = tokio::task::spawn_blocking(move || net.up(&id))
                    .await
                    .map_err(other)?
                    .map_err(|e| BackendError::Start {
                        id: spec.id.clone(),
                        reason: e.to_string(),
                    })?;
                self.prepare_tap(&plan.sprite_ns).await?;
                Some(plan.sprite_ns_path())
            }
            None => None,
        };
        let views = checkpoint_images(spec);
        self.write_initrd(spec, &p, netns.is_some(), 2 + views.len())?;
        // Guest-initiated vsock connections to host port P go to `<uds-path>_P`: point the
        // inside-API port at the server's socket for this sprite.
        if let Some(dir) = &spec.host_dir {
            let link = PathBuf::from(format!(
                "{}_{}",
                p.vsock.display(),
                proto::HOST_API_VSOCK_PORT
            ));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(dir.join("api.sock"), &link)?;
        }

        // The vsock device lives in its own process (vhost-user), in its own session, and
        // is not our child (the shell that starts it exits), so it outlives this server
        // without becoming a zombie of it.
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"setsid "$0" "$@" > "$SPRITE_VSOCK_LOG" 2>&1 < /dev/null & echo $!"#)
            .arg(&self.cfg.vsock_bin)
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                p.vhost.display(),
                p.vsock.display()
            ))
            .env("SPRITE_VSOCK_LOG", p.dir.join("vsock.log"))
            .output()
            .await
            .map_err(|e| other(format!("starting {}: {e}", self.cfg.vsock_bin.display())))?;
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::write(&p.vsock_pid, &pid)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.vhost.exists() {
            if Instant::now() > deadline {
                self.kill_vsock(&p);
                return Err(other("vhost-device-vsock did not create its socket"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let mem = (spec.memory_limit >> 20).clamp(128, self.cfg.memory_cap_mib.max(128));
        let (accel, cpu) = match self.cfg.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        let mut append = "console=ttyS0 quiet panic=-1 reboot=t".to_string();
        let khz = host_tsc_khz();
        if khz > 0 {
            // Without it about 40 % of TCG boots hang calibrating the clock.
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={ns}"))
                    .arg("--")
                    .arg("qemu-system-x86_64");
                c
            }
            None => tokio::process::Command::new("qemu-system-x86_64"),
        };
        cmd.arg("-name")
            .arg(format!("sprite-{}", spec.hostname))
            .arg("-M")
            .arg(format!("microvm,accel={accel},memory-backend=mem"))
            .args(["-cpu", cpu, "-m", &format!("{mem}M")])
            // The CPUs it asked for (`config.cpus`), as the guest's own vCPUs.
            .args([
                "-smp",
                &spec
                    .cpu_limit
                    .unwrap_or(self.cfg.vcpus)
                    .clamp(1, host_cpus())
                    .to_string(),
            ])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            // Appending, so that trimming the log (see `trim_console`) starts it over.
            .arg("-chardev")
            .arg(format!(
                "file,id=con,path={},append=on",
                p.console.display()
            ))
            .args(["-serial", "chardev:con"])
            .arg("-kernel")
            .arg(self.guest.kernel())
            .arg("-initrd")
            .arg(&p.initrd)
            .arg("-append")
            .arg(&append)
            .arg("-drive")
            .arg(format!(
                "id=base,file={},format=raw,if=none,readonly=on",
                base_disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=base,serial=base"])
            .arg("-drive")
            .arg(format!(
                "id=disk,file={},format=raw,if=none,discard=unmap",
                spec.disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=disk,serial=disk"]);
        // Recent checkpoints the server wrote beside the disk, shown read-only by the guest.
        for (i, (id, img)) in views.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "id=ck{i},file={},format=raw,if=none,readonly=on",
                    img.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-device,drive=ck{i},serial=ck-{id}"));
        }
        cmd.arg("-chardev")
            .arg(format!("socket,id=vs,path={}", p.vhost.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vs"]);
        if netns.is_some() {
            cmd.args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
                .args(["-device", "virtio-net-device,netdev=n0"]);
        }
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", p.qmp.display()))
            .arg("-daemonize")
            .arg("-pidfile")
            .arg(&p.qemu_pid)
            .stdin(std::process::Stdio::null());
        let out = cmd.output().await?;
        if !out.status.success() {
            self.kill_vsock(&p);
            return Err(BackendError::Start {
                id: spec.id.clone(),
                reason: format!("qemu: {}", String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        if let Err(e) = self.wait_agent(spec, &p).await {
            let _ = self.stop(spec).await;
            return Err(e);
        }
        Ok(())
    }

    async fn is_running(&self, spec: &SpriteSpec) -> bool {
        let running = self.qemu_pid(&spec.id).is_some();
        if running {
            if let Some(net) = &self.cfg.network {
                let (net, id) = (net.clone(), spec.id.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || net.up(&id)).await {
                    tracing::warn!(id = %spec.id, "re-adopting network: {e}");
                }
            }
        }
        running
    }

    async fn is_paused(&self, spec: &SpriteSpec) -> bool {
        let p = self.paths(&spec.id);
        let paused = self
            .qemu_pid(&spec.id)
            .is_some_and(|pid| sprites_runtime::host::process_state(pid) == Some('T'));
        if paused {
            let _ = std::fs::write(p.dir.join("paused"), "");
        } else {
            let _ = std::fs::remove_file(p.dir.join("paused"));
        }
        paused
    }

    async fn connect(&self, spec: &SpriteSpec) -> Result<AgentStream, BackendError> {
        let p = self.paths(&spec.id);
        trim_console(&p.console);
        if p.dir.join("paused").exists() {
            // A connection request left pending in a paused guest's vsock queue can wedge
            // vhost-device-vsock, so none is made; the runtime resumes sprites before use.
            return Err(other(format!("sprite {} is paused", spec.id)));
        }
        let mut s = match tokio::net::UnixStream::connect(&p.vsock).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(BackendError::NotRunning(spec.id.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        // Hybrid vsock (as Firecracker's): ask for the guest port, expect "OK <port>".
        s.write_all(format!("CONNECT {}\n", proto::AGENT_VSOCK_PORT).as_bytes())
            .await?;
        let mut line = Vec::new();
        let handshake = async {
            let mut b = [0u8; 1];
            while line.len() < 64 {
                if s.read(&mut b).await? == 0 {
                    return Err(BackendError::NotRunning(spec.id.clone()));
                }
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            Ok(())
        };
        // Generous: a connection given up before the guest answers can wedge the vsock device.
        tokio::time::timeout(Duration::from_secs(30), handshake)
            .await
            .map_err(|_| other("vsock connect timed out"))??;
        if !line.starts_with(b"OK") {
            return Err(other(format!(
                "vsock connect answered {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(Box::new(s))
    }

    async fn stop(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let p = self.paths(&spec.id);
        if self.qemu_pid(&spec.id).is_some() {
            let _ = self.resume(spec).await;
            // The agent ends processes, syncs and powers the guest off.
            if let Ok(s) = self.connect(spec).await {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    sprites_runtime::agent::shutdown(s),
                )
                .await;
            }
            if !self.wait_gone(&spec.id, STOP_TIMEOUT).await {
                tracing::warn!(id = %spec.id, "guest did not power off; quitting QEMU");
                let _ = qmp::call(&p.qmp, "quit", None).await;
                if !self.wait_gone(&spec.id, Duration::from_secs(5)).await {
                    if let Some(pid) = self.qemu_pid(&spec.id) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    self.wait_gone(&spec.id, Duration::from_secs(5)).await;
                }
            }
        }
        self.kill_vsock(&p);
        if let Some(net) = &self.cfg.network {
            let (net, id) = (net.clone(), spec.id.clone());
            let _ = tokio::task::spawn_blocking(move || net.down(&id)).await;
        }
        if self.qemu_pid(&spec.id).is_some() {
            return Err(other(format!("sprite {} did not stop", spec.id)));
        }
        Ok(())
    }

    /// Stops the QEMU process itself (SIGSTOP): vCPUs and devices stop, memory stays. QMP
    /// `stop` would also stop the vhost-user vsock rings, which vhost-device-vsock 0.3 does
    /// not always restart (measured: the agent becomes unreachable after `cont`).
    async fn pause(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let p = self.paths(&spec.id);
        let pid = self
            .qemu_pid(&spec.id)
            .ok_or_else(|| BackendError::NotRunning(spec.id.clone()))?;
        std::fs::write(p.dir.join("paused"), "")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .map_err(|e| other(format!("pausing QEMU: {e}")))?;
        Ok(())
    }

    async fn resume(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let p = self.paths(&spec.id);
        if let Some(pid) = self.qemu_pid(&spec.id) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            )
            .map_err(|e| other(format!("resuming QEMU: {e}")))?;
        }
        let _ = std::fs::remove_file(p.dir.join("paused"));
        Ok(())
    }

    async fn freeze_disk(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        // The guest kernel owns the filesystem: its agent freezes it (a paused guest is run
        // for that and paused again at thaw).
        if self.is_paused(spec).await {
            self.resume(spec).await?;
            std::fs::write(self.paths(&spec.id).dir.join("paused-for-freeze"), "")?;
        }
        let s = self.connect(spec).await?;
        sprites_runtime::agent::fsfreeze(s, true).await
    }

    async fn thaw_disk(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        if self.qemu_pid(&spec.id).is_none() {
            return Ok(());
        }
        let thawed = match self.connect(spec).await {
            Ok(s) => sprites_runtime::agent::fsfreeze(s, false).await,
            Err(e) => Err(e),
        };
        let marker = self.paths(&spec.id).dir.join("paused-for-freeze");
        if std::fs::remove_file(&marker).is_ok() {
            self.pause(spec).await?;
        }
        thawed
    }

    async fn update_limits(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        // Guest memory is fixed at boot; the new limit applies from the next boot.
        tracing::info!(id = %spec.id, "memory limit of a microVM changes at its next boot");
        Ok(())
    }

    async fn cleanup(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let p = self.paths(&spec.id);
        self.kill_vsock(&p);
        if let Some(net) = &self.cfg.network {
            let (net, id) = (net.clone(), spec.id.clone());
            let _ = tokio::task::spawn_blocking(move || net.down(&id)).await;
        }
        match std::fs::remove_dir_all(&p.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Largest console log kept: the guest writes it and may write without end.
const CONSOLE_CAP: u64 = 8 << 20;

/// Starts the console log over once it passes [`CONSOLE_CAP`]. QEMU appends, so its next
/// write lands at the new end. Called on every connection to the agent (the idle detector
/// makes one each tick while the sprite runs), so the log stays within a tick's output of
/// the cap.
fn trim_console(path: &std::path::Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > CONSOLE_CAP) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn the_console_log_starts_over_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        // Opened the way QEMU's `append=on` opens it.
        let mut qemu = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        qemu.write_all(&vec![b'x'; 1 << 20]).unwrap();
        super::trim_console(&log);
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            1 << 20,
            "small: kept"
        );
        qemu.write_all(&vec![b'x'; super::CONSOLE_CAP as usize])
            .unwrap();
        super::trim_console(&log);
        qemu.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after\n");
    }
}
