//! Small facts about host processes and files that every backend needs: whether a pid file
//! names a live process of ours, a process's run state, the end of a log.

use std::path::Path;

/// A process's state letter from `/proc/<pid>/stat` (`R`, `S`, `T` stopped, `Z` zombie, ...).
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
}

/// The pid in `pid_file` if that process is alive (not a zombie) and its command line
/// contains `needle`, so a stale pid file after a reboot is not taken for a live sprite.
pub fn live_pid(pid_file: &Path, needle: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if matches!(process_state(pid), None | Some('Z')) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = needle.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len())
        .any(|w| w == needle)
        .then_some(pid)
}

/// The last `max` characters of the text file at `path` (empty if unreadable).
pub fn file_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let skip = text.chars().count().saturating_sub(max);
    text.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        let me = std::env::current_exe().unwrap();
        assert_eq!(live_pid(&pid_file, &me), Some(std::process::id() as i32));
        assert_eq!(live_pid(&pid_file, Path::new("/no/such/needle")), None);
        assert_eq!(live_pid(&dir.path().join("missing"), &me), None);
        let log = dir.path().join("log");
        std::fs::write(&log, "héllo world").unwrap();
        assert_eq!(file_tail(&log, 5), "world");
        assert_eq!(file_tail(&log, 100), "héllo world");
        assert_eq!(file_tail(&dir.path().join("none"), 5), "");
    }
}
