//! Cgroups of a sprite: memory and pids limits, the freezer, and killing every process.
//!
//! Works with the unified hierarchy (cgroup v2, the default on current distributions) and with
//! the legacy per-controller hierarchies (v1), which some hosts, these build machines among
//! them, still mount.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "freezer"];
/// v1 hierarchies used where the host mounts them: CPU quota and accounting (what lxcfs
/// reads for a sprite's CPUs, `/proc/stat` and load).
const V1_OPTIONAL: &[&str] = &["cpu", "cpuacct"];

/// Caps the processes of every sprite of server `instance` together, so that sprites can
/// never take the host's last process ids (each sprite has its own limit below this one).
pub fn limit_instance(instance: &str, pids: u64) -> io::Result<()> {
    let root = Path::new(ROOT);
    let rel = Path::new("sprites").join(instance);
    let dir = if root.join("cgroup.controllers").exists() {
        let mut d = root.to_path_buf();
        for part in rel.iter() {
            enable_v2_controllers(&d);
            d.push(part);
            std::fs::create_dir_all(&d)?;
        }
        d
    } else {
        let d = root.join("pids").join(rel);
        std::fs::create_dir_all(&d)?;
        d
    };
    std::fs::write(dir.join("pids.max"), pids.to_string())
}

/// Enables the controllers sprites use below `dir` (v2). One write each: a write naming a
/// controller the host does not delegate fails whole.
fn enable_v2_controllers(dir: &Path) {
    for c in ["+memory", "+pids", "+cpu"] {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), c);
    }
}

/// The cgroup(s) of one sprite.
#[derive(Debug, Clone)]
pub struct Cgroup {
    v2: bool,
    /// v2: one directory. v1: one per controller, named in `controllers`.
    dirs: Vec<PathBuf>,
    controllers: Vec<&'static str>,
}

impl Cgroup {
    /// The cgroup of sprite `id` under this server instance.
    pub fn new(instance: &str, id: &str) -> Self {
        Self::under(Path::new(ROOT), instance, id)
    }

    fn under(root: &Path, instance: &str, id: &str) -> Self {
        let v2 = root.join("cgroup.controllers").exists();
        let rel = Path::new("sprites").join(instance).join(id);
        let (dirs, controllers) = if v2 {
            (vec![root.join(&rel)], Vec::new())
        } else {
            let controllers: Vec<&'static str> = V1_CONTROLLERS
                .iter()
                .chain(
                    V1_OPTIONAL
                        .iter()
                        .filter(|c| root.join(c).join("cgroup.procs").exists()),
                )
                .copied()
                .collect();
            let dirs = controllers
                .iter()
                .map(|c| root.join(c).join(&rel))
                .collect();
            (dirs, controllers)
        };
        Self {
            v2,
            dirs,
            controllers,
        }
    }

    /// The directory of `controller`; `None` on v1 when the host does not mount it.
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        if self.v2 {
            return Some(&self.dirs[0]);
        }
        let i = self.controllers.iter().position(|c| *c == controller)?;
        Some(&self.dirs[i])
    }

    fn dir(&self, controller: &str) -> &Path {
        self.dir_of(controller).unwrap_or(&self.dirs[0])
    }

    /// Creates the cgroup and sets its limits; `cpus` caps its CPU time at that many CPUs.
    pub fn create(&self, memory: u64, pids: u64, cpus: Option<u32>) -> io::Result<()> {
        if self.v2 {
            // Controllers must be enabled in every ancestor's subtree_control.
            let dir = &self.dirs[0];
            let mut ancestors: Vec<&Path> = dir
                .ancestors()
                .skip(1)
                .take_while(|p| p.starts_with(ROOT))
                .collect();
            ancestors.reverse();
            for a in ancestors {
                std::fs::create_dir_all(a)?;
                enable_v2_controllers(a);
            }
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("memory.max"), memory.to_string())?;
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            std::fs::write(dir.join("pids.max"), pids.to_string())?;
            if let Some(n) = cpus {
                // Not fatal: a host may not delegate the cpu controller.
                let _ = std::fs::write(dir.join("cpu.max"), format!("{} 100000", n * 100_000));
            }
        } else {
            for d in &self.dirs {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(
                self.dir("memory").join("memory.limit_in_bytes"),
                memory.to_string(),
            )?;
            std::fs::write(self.dir("pids").join("pids.max"), pids.to_string())?;
            if let (Some(n), Some(cpu)) = (cpus, self.dir_of("cpu")) {
                let _ = std::fs::write(cpu.join("cpu.cfs_period_us"), "100000");
                let _ = std::fs::write(cpu.join("cpu.cfs_quota_us"), (n * 100_000).to_string());
            }
        }
        Ok(())
    }

    /// Changes the memory limit of a live cgroup.
    pub fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        if self.v2 {
            std::fs::write(self.dirs[0].join("memory.max"), bytes.to_string())
        } else {
            std::fs::write(
                self.dir("memory").join("memory.limit_in_bytes"),
                bytes.to_string(),
            )
        }
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Pids in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        let Ok(t) = std::fs::read_to_string(self.dirs[0].join("cgroup.procs")) else {
            return Vec::new();
        };
        t.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Freezes (`true`) or thaws every process and waits until the kernel reports it done.
    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, value, done) = if self.v2 {
            ("cgroup.freeze", if frozen { "1" } else { "0" }, None)
        } else {
            let v = if frozen { "FROZEN" } else { "THAWED" };
            ("freezer.state", v, Some(v))
        };
        let dir = self.dir("freezer");
        std::fs::write(dir.join(file), value)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reached = match done {
                Some(want) => std::fs::read_to_string(dir.join(file))?.trim() == want,
                None => {
                    let ev = std::fs::read_to_string(dir.join("cgroup.events"))?;
                    ev.lines()
                        .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" })
                }
            };
            if reached {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "cgroup freezer did not settle",
                ));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Whether the processes are frozen now.
    pub fn is_frozen(&self) -> bool {
        let dir = self.dir("freezer");
        if self.v2 {
            std::fs::read_to_string(dir.join("cgroup.events"))
                .map(|ev| ev.lines().any(|l| l == "frozen 1"))
                .unwrap_or(false)
        } else {
            std::fs::read_to_string(dir.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false)
        }
    }

    /// Kills every process: freeze so nothing can fork, SIGKILL all, thaw so they die.
    pub fn kill_all(&self) -> io::Result<()> {
        if !self.dirs[0].exists() {
            return Ok(());
        }
        if self.v2 && self.dirs[0].join("cgroup.kill").exists() {
            return std::fs::write(self.dirs[0].join("cgroup.kill"), "1");
        }
        let _ = self.set_frozen(true);
        for pid in self.procs() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        self.set_frozen(false)
    }

    /// Removes the cgroup directories. They must be empty of processes.
    pub fn remove(&self) -> io::Result<()> {
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_hierarchy() {
        let v1 = tempfile::tempdir().unwrap();
        let c = Cgroup::under(v1.path(), "inst", "abc");
        assert!(!c.v2);
        assert_eq!(c.dir("pids"), v1.path().join("pids/sprites/inst/abc"));
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory pids").unwrap();
        let c = Cgroup::under(v2.path(), "inst", "abc");
        assert!(c.v2);
        assert_eq!(c.dir("freezer"), v2.path().join("sprites/inst/abc"));
    }
}
