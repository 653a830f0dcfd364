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

/// The last `max` characters of the text file at `path` (empty if unreadable). Reads only
/// the file's end: a sprite writes its console log and may make it as large as it likes.
pub fn file_tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    // A character is at most 4 bytes.
    let want = (max as u64).saturating_mul(4);
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(want))).is_err() {
        return String::new();
    }
    let mut raw = Vec::new();
    let _ = f.take(want).read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let skip = text.chars().count().saturating_sub(max);
    text.chars().skip(skip).collect()
}

/// The host's total memory in bytes (`MemTotal` of `/proc/meminfo`).
pub fn memory_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The most process ids the host hands out (`kernel.pid_max`, bounded by `threads-max`).
pub fn pid_max() -> Option<u64> {
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let pid_max = read("/proc/sys/kernel/pid_max")?;
    Some(match read("/proc/sys/kernel/threads-max") {
        Some(t) => pid_max.min(t),
        None => pid_max,
    })
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
        // A sprite's console log of 64 GiB (sparse here): only its end is read.
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(64 << 30).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        let mut f = f;
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all("la fin é".as_bytes()).unwrap();
        assert_eq!(file_tail(&log, 6), " fin é");
    }

    #[test]
    fn host_facts() {
        assert!(memory_total().unwrap() > 64 << 20);
        assert!(pid_max().unwrap() >= 300);
    }
}
