//! Test harness: starts a real `spritesd` (real namespaces, real SQLite, real sockets) on a
//! free port with a temporary data dir, and tears down every sprite it made.
//!
//! The base image is shared between tests (building it takes a minute): it lives in
//! `$SPRITES_TEST_IMAGE_DIR`, default `/var/cache/sprites/images`, and is built on first use
//! under a file lock so parallel tests build it once.
//!
//! Only for tests: production code never depends on this crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Directory holding `spritesd`, `sprite-agent` and `sprite`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SPRITES_BIN_DIR") {
        return PathBuf::from(d);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Shared base image directory.
pub fn image_dir() -> PathBuf {
    std::env::var("SPRITES_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/cache/sprites/images"))
}

/// Whether `dir` has a complete current base image.
fn has_current_base(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("current")).is_ok_and(|id| {
        dir.join("bases")
            .join(id.trim())
            .join("image.json")
            .exists()
    })
}

/// Builds the shared image once (the slim profile: what the tests need, in a fraction of
/// the full one's time).
pub fn ensure_image() -> Result<()> {
    let dir = image_dir();
    std::fs::create_dir_all(&dir)?;
    if has_current_base(&dir) {
        return Ok(());
    }
    let lock = std::fs::File::create(dir.join(".build.lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking image dir: {e}"))?;
    if has_current_base(&dir) {
        return Ok(());
    }
    build_image(&dir, "slim", &[])
}

fn build_image(dir: &Path, profile: &str, add: &[&str]) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cmd = Command::new(bin_dir().join("spritesd"));
    cmd.args(["image", "build", "--profile", profile, "--data-dir"])
        .arg(tmp.path())
        .arg("--image-dir")
        .arg(dir);
    for p in add {
        cmd.args(["--add", p]);
    }
    if !cmd.status()?.success() {
        bail!(
            "building the {profile} base image in {} failed",
            dir.display()
        );
    }
    Ok(())
}

/// An image directory of its own, `<shared>-<name>`, kept across runs, whose current base
/// is `profile` plus the Debian packages `add` (each build after the first finds its layers
/// cached). Its layer cache starts as hard links of the shared one's, so the layers the two
/// have in common are not built again. For tests that change which base is current (the
/// shared directory's must stay put under tests running beside them).
pub fn image_variant(name: &str, profile: &str, add: &[&str]) -> Result<PathBuf> {
    ensure_image()?;
    let shared = image_dir();
    let dir = PathBuf::from(format!("{}-{name}", shared.display()));
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".build.lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking image dir: {e}"))?;
    if !dir.join("layers").exists() && shared.join("layers").exists() {
        let st = Command::new("cp")
            .arg("-al")
            .arg(shared.join("layers"))
            .arg(dir.join("layers"))
            .status()?;
        if !st.success() {
            bail!(
                "seeding {} from the shared layer cache failed",
                dir.display()
            );
        }
    }
    build_image(&dir, profile, add)?;
    Ok(dir)
}

/// A running `spritesd` and its data dir.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Admin token of org `personal`.
    pub token: String,
    /// Data dir (kept across restarts of the same server).
    pub data_dir: PathBuf,
    /// Home of CLI invocations.
    pub home: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with a fresh data dir.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `spritesd serve` flags (kept across restarts).
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        Self::start_in(Path::new("/tmp"), extra)
    }

    /// [`TestServer::start_with`] with the data dir in `parent` (an [`XfsVolume`], say).
    pub fn start_in(parent: &Path, extra: &[&str]) -> Result<Self> {
        ensure_image()?;
        // Short path: agent socket paths must fit in 108 bytes.
        let tmp = tempfile::Builder::new().prefix("sp").tempdir_in(parent)?;
        let data_dir = tmp.path().join("d");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home)?;
        let mut s = TestServer {
            url: String::new(),
            token: String::new(),
            data_dir,
            home,
            port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            _tmp: tmp,
        };
        s.spawn()?;
        s.token = std::fs::read_to_string(s.data_dir.join("admin-token"))?
            .trim()
            .to_string();
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join("spritesd.log"))?;
        let addr_file = self.data_dir.join("spritesd.addr");
        let _ = std::fs::remove_file(&addr_file);
        // A test may bring its own image directory (see `image_variant`).
        // Test servers keep their disks in their temp data dir unless a test asks for the
        // pool: one loop-mounted volume per server would outlive the temp dirs.
        let pool_args: Vec<std::ffi::OsString> = if self.extra.iter().any(|a| a == "--storage-pool")
        {
            vec![]
        } else {
            vec!["--storage-pool".into(), "none".into()]
        };
        let image_args = if self.extra.iter().any(|a| a == "--image-dir") {
            vec![]
        } else {
            vec!["--image-dir".into(), image_dir().into_os_string()]
        };
        let child = Command::new(bin_dir().join("spritesd"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(image_args)
            .args(pool_args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting spritesd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // The server writes its bound address once it listens (port 0 = any free port).
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                let addr: std::net::SocketAddr = addr.trim().parse()?;
                self.port = addr.port();
                self.url = format!("http://{addr}");
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("spritesd exited early ({st}):\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("spritesd did not listen in time:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("spritesd.log")).unwrap_or_default()
    }

    /// Pid of the running server.
    pub fn server_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9` the server (sprites keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the server and wait for it to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )?;
        Ok(c.wait()?.success())
    }

    /// The same server (data dir, port) with other extra arguments from the next start.
    pub fn with_extra(mut self, extra: &[&str]) -> Self {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Starts the server again on the same data dir and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// A `sprite` CLI command pointed at this server with its own HOME.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin_dir().join("sprite"));
        c.env("HOME", &self.home)
            .env("SPRITES_API_URL", &self.url)
            .env_remove("SPRITE_TOKEN")
            .env_remove("SPRITE_ORG")
            .current_dir(&self.home);
        c
    }

    /// Runs the CLI with `args` and returns its output.
    pub fn run_cli(&self, args: &[&str]) -> Result<Output> {
        Ok(self.cli().args(args).stdin(Stdio::null()).output()?)
    }

    /// Creates a token for `org` with `spritesd token create`.
    pub fn create_token(&self, org: &str) -> Result<String> {
        let out = Command::new(bin_dir().join("spritesd"))
            .args(["token", "create", "--org", org, "--data-dir"])
            .arg(&self.data_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout.lines().last().unwrap_or_default().trim().to_string())
    }

    /// Pids of every process of this server's sprites (launchers included).
    pub fn sprite_pids(&self) -> Vec<i32> {
        let needle = self.data_dir.join("run");
        let needle = needle.as_os_str().as_encoded_bytes().to_vec();
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Host pid of the agent proper (PID 1's child running the agent) of sprite `id`, found
    /// from its launcher. Inside, the sprite's root cannot look at the agent; the host can.
    pub fn agent_pid(&self, id: &str) -> Option<i32> {
        let short = id.strip_prefix("sprite-").unwrap_or(id);
        let launcher =
            std::fs::read_to_string(self.data_dir.join("run").join(short).join("launcher.pid"))
                .ok()?;
        let children = |pid: i32| -> Vec<i32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        };
        let is_agent = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/.sprite/bin/sprite-agent"))
        };
        // launcher (L1) -> C -> PID 1 (the agent binary as init) -> the agent proper.
        let mut todo = vec![launcher.trim().parse::<i32>().ok()?];
        while let Some(pid) = todo.pop() {
            for c in children(pid) {
                if is_agent(pid) && is_agent(c) {
                    return Some(c);
                }
                todo.push(c);
            }
        }
        None
    }

    /// Kills every sprite this server started, by cgroup, and waits for their launchers.
    fn kill_sprites(&self) {
        let instance = instance_name(&self.data_dir);
        for ctrl in ["", "freezer/", "memory/", "pids/"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}sprites/{instance}"));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if ctrl == "freezer/" {
                    let _ = std::fs::write(e.path().join("freezer.state"), "THAWED");
                }
                let _ = std::fs::write(e.path().join("cgroup.freeze"), "0");
                if let Ok(procs) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                    for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                }
            }
        }
        // MicroVM sprites are processes of their own (QEMU, vhost-device-vsock) named by
        // paths under the data dir, outside any cgroup.
        let data = self.data_dir.to_string_lossy().into_owned();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&data)
                && (cmd.contains("qemu-system") || cmd.contains("vhost-device-vsock"))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.sprite_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.remove_networks();
        for ctrl in ["", "freezer/", "memory/", "pids/"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}sprites/{instance}"));
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl TestServer {
    /// Removes the network namespaces (and uplink slots) of this server's sprites: with the
    /// server killed, nobody else will.
    fn remove_networks(&self) {
        let ids: Vec<String> = std::fs::read_dir(self.data_dir.join("run"))
            .map(|d| {
                d.flatten()
                    .map(|e| format!("sprite-{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let pool = format!("pool:{}:", instance_name(&self.data_dir));
        let Ok(slots) = std::fs::read_dir("/run/sprites-net") else {
            return;
        };
        for slot in slots.flatten() {
            let owner = std::fs::read_to_string(slot.path()).unwrap_or_default();
            if !(owner.starts_with(&pool) || ids.contains(&owner)) {
                continue;
            }
            let n = slot.file_name().to_string_lossy().into_owned();
            for ns in [format!("sp-{n}"), format!("sr-{n}")] {
                let _ = Command::new("ip")
                    .args(["netns", "del", &ns])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_file(slot.path());
        }
    }
}

/// Same naming as the server's `Config::instance`.
pub fn instance_name(data_dir: &Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("d{:08x}", h as u32)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        self.kill_sprites();
    }
}

/// A fresh XFS filesystem (with reflinks) in a sparse file, loop-mounted; unmounted on drop.
/// For the code paths that need a filesystem with reflinks when the host's is ext4.
pub struct XfsVolume {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl XfsVolume {
    /// Makes and mounts a volume of `size_gib` (sparse: costs what is written).
    pub fn new(size_gib: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("xfs").tempdir_in("/tmp")?;
        let image = PathBuf::from(format!("{}.img", dir.path().display()));
        std::fs::File::create(&image)?.set_len(size_gib << 30)?;
        let out = Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&image)
            .output()
            .context("running mkfs.xfs (install xfsprogs)")?;
        if !out.status.success() {
            bail!("mkfs.xfs: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&image);
            bail!("mounting XFS: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self { dir, image })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for XfsVolume {
    fn drop(&mut self) {
        // Lazy: a sprite's loop device may still be letting go of its disk.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        let _ = std::fs::remove_file(&self.image);
    }
}
