//! The server's limits on what one sprite may ask for, sized from the host, and the one place
//! every number a client sends for a sprite's resources is range-checked.

use sprites_api::SpriteConfig;

/// Smallest memory limit a sprite boots with, in MiB.
pub const MIN_MEMORY_MB: u64 = 64;
/// Process ids kept for the host whatever sprites do: an eighth of `pid_max`, at least this.
const MIN_PID_RESERVE: u64 = 2048;
/// Default process limit of one sprite, where the host has room for it.
const DEFAULT_PIDS: u64 = 4096;

/// What one sprite may ask for on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest memory limit, MiB (default: the host's memory).
    pub max_memory_mb: u64,
    /// Most CPUs a sprite may ask for (the host's).
    pub max_cpus: u32,
    /// Largest disk a sprite may ask for, GB (the size of its disk image).
    pub max_storage_gb: u64,
    /// Processes of all sprites together: the host's pids less a reserve for the host.
    pub pids_total: u64,
}

impl Limits {
    /// Limits sized from this host's memory, CPUs and process ids.
    pub fn from_host() -> Self {
        let pid_max = sprites_runtime::host::pid_max().unwrap_or(32768);
        Self {
            max_memory_mb: sprites_runtime::host::memory_total()
                .map(|b| b >> 20)
                .unwrap_or(u64::MAX >> 20),
            max_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            max_storage_gb: sprites_storage::disk::DISK_SIZE_BYTES / 1_000_000_000,
            pids_total: pids_total(pid_max),
        }
    }

    /// The default process limit of one sprite: 4096, or less on a host with few pids, so
    /// that a handful of sprites cannot take the whole budget alone.
    pub fn default_pids(&self) -> u64 {
        DEFAULT_PIDS.min(self.pids_total / 4).max(64)
    }

    /// Checks a memory size in MiB: a clear message when it is out of range.
    pub fn check_memory_mb(&self, field: &str, mb: u64) -> Result<(), String> {
        if mb < MIN_MEMORY_MB || mb > self.max_memory_mb {
            return Err(format!(
                "{field} must be between {MIN_MEMORY_MB} and {} MiB on this server, not {mb}",
                self.max_memory_mb
            ));
        }
        Ok(())
    }

    /// Checks every number of a sprite's requested config.
    pub fn check_config(&self, c: &SpriteConfig) -> Result<(), String> {
        if let Some(mb) = c.ram_mb {
            self.check_memory_mb("config.ram_mb", mb)?;
        }
        if let Some(n) = c.cpus {
            if n == 0 || n > self.max_cpus {
                return Err(format!(
                    "config.cpus must be between 1 and {} on this server, not {n}",
                    self.max_cpus
                ));
            }
        }
        if let Some(gb) = c.storage_gb {
            if gb == 0 || gb > self.max_storage_gb {
                return Err(format!(
                    "config.storage_gb must be between 1 and {} on this server, not {gb}",
                    self.max_storage_gb
                ));
            }
        }
        Ok(())
    }
}

/// Processes all sprites of a host may have together, given its `pid_max`.
fn pids_total(pid_max: u64) -> u64 {
    let reserve = (pid_max / 8).max(MIN_PID_RESERVE);
    pid_max.saturating_sub(reserve).max(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_memory_mb: 24 * 1024,
            max_cpus: 2,
            max_storage_gb: 100,
            pids_total: pids_total(32768),
        }
    }

    #[test]
    fn the_host_keeps_a_pid_reserve() {
        // The host of the report: pid_max 32768, eight sprites of 4096 took every pid.
        let l = limits();
        assert_eq!(l.pids_total, 32768 - 4096);
        assert_eq!(l.default_pids(), 4096);
        assert_eq!(pids_total(4_194_304), 4_194_304 - 524_288);
        // A small host: the reserve is at least 2048 and one sprite gets a quarter.
        assert_eq!(pids_total(8192), 6144);
        let small = Limits {
            pids_total: pids_total(8192),
            ..l
        };
        assert_eq!(small.default_pids(), 1536);
    }

    #[test]
    fn sizes_are_range_checked() {
        let l = limits();
        let cfg = |ram_mb, cpus, storage_gb| SpriteConfig {
            ram_mb,
            cpus,
            storage_gb,
            region: None,
        };
        assert!(l.check_config(&cfg(Some(512), Some(1), Some(10))).is_ok());
        assert!(l.check_config(&cfg(None, None, None)).is_ok());
        for bad in [
            cfg(Some(u64::MAX), None, None),
            cfg(Some(1 << 30), None, None),
            cfg(Some(1), None, None),
            cfg(Some(0), None, None),
            cfg(None, Some(0), None),
            cfg(None, Some(3), None),
            cfg(None, None, Some(0)),
            cfg(None, None, Some(101)),
        ] {
            let e = l.check_config(&bad).unwrap_err();
            assert!(e.contains("must be between"), "{e}");
        }
        assert!(l
            .check_memory_mb("memory.limit_mb", 16)
            .unwrap_err()
            .contains("between 64 and 24576 MiB"));
    }
}
