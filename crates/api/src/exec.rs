//! Exec: query parameters (§3.1, §3.5) and the binary frame format.
//!
//! Non-TTY output frames are one byte of stream id followed by data; the exit frame is
//! `[0x03, code]` with exactly one byte of code. Client stdin frames are `[0x00, data...]` and a
//! lone `[0x04]` closes stdin.

use std::time::Duration;

/// Stream id of client stdin data.
pub const STREAM_STDIN: u8 = 0x00;
/// Stream id of stdout data.
pub const STREAM_STDOUT: u8 = 0x01;
/// Stream id of stderr data.
pub const STREAM_STDERR: u8 = 0x02;
/// Stream id of the exit frame.
pub const STREAM_EXIT: u8 = 0x03;
/// Client frame that closes stdin.
pub const STREAM_STDIN_EOF: u8 = 0x04;

/// Default working directory of commands.
pub const DEFAULT_DIR: &str = "/home/sprite";

/// A decoded output frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFrame<'a> {
    /// Bytes on stdout.
    Stdout(&'a [u8]),
    /// Bytes on stderr.
    Stderr(&'a [u8]),
    /// The process ended with this code.
    Exit(u8),
}

/// Encodes a data frame.
pub fn encode(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(stream);
    v.extend_from_slice(data);
    v
}

/// Decodes one output frame; `None` for an empty or unknown frame.
pub fn decode_output(frame: &[u8]) -> Option<OutputFrame<'_>> {
    let (&id, rest) = frame.split_first()?;
    match id {
        STREAM_STDOUT => Some(OutputFrame::Stdout(rest)),
        STREAM_STDERR => Some(OutputFrame::Stderr(rest)),
        STREAM_EXIT => rest.first().map(|c| OutputFrame::Exit(*c)),
        _ => None,
    }
}

/// Maps a process end to the exit byte clients see: the code, or 128+N for signal N.
pub fn exit_byte(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(c), _) => u8::try_from(c).unwrap_or(255),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        (None, None) => 255,
    }
}

/// A parsed exec request, common to the HTTP and WebSocket forms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// argv, argv[0] included.
    pub cmd: Vec<String>,
    /// Executable; defaults to argv[0].
    pub path: Option<String>,
    /// `KEY=VALUE` pairs laid over the default environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub dir: Option<String>,
    /// PTY mode.
    pub tty: bool,
    /// Pipe client stdin.
    pub stdin: bool,
    /// Terminal rows.
    pub rows: Option<u16>,
    /// Terminal cols.
    pub cols: Option<u16>,
    /// How long the process may outlive its last client.
    pub max_run_after_disconnect: Option<Duration>,
    /// Attach to this session instead of starting a process.
    pub id: Option<String>,
    /// Resume output replay at this byte.
    pub output_offset: Option<u64>,
    /// Legacy flags, accepted and remembered so HTTP exec can reject them.
    pub legacy_flags: Vec<String>,
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid boolean for {k}: {v:?}")),
    }
}

impl ExecRequest {
    /// Parses query pairs. Unknown keys are ignored; bad values are an error message.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut r = ExecRequest::default();
        let mut stdin = None;
        for (k, v) in pairs {
            match k {
                "cmd" | "cmd[]" => r.cmd.push(v.to_string()),
                "path" if !v.is_empty() => r.path = Some(v.to_string()),
                "env" | "env[]" => {
                    let (key, val) = v
                        .split_once('=')
                        .ok_or_else(|| format!("env entries must be KEY=VALUE, got {v:?}"))?;
                    if key.is_empty() {
                        return Err(format!("env entry has an empty name: {v:?}"));
                    }
                    r.env.push((key.to_string(), val.to_string()));
                }
                "dir" if !v.is_empty() => r.dir = Some(v.to_string()),
                "tty" => r.tty = parse_bool(k, v)?,
                "stdin" => stdin = Some(parse_bool(k, v)?),
                "rows" => r.rows = Some(v.parse().map_err(|_| format!("invalid rows: {v:?}"))?),
                "cols" => r.cols = Some(v.parse().map_err(|_| format!("invalid cols: {v:?}"))?),
                "max_run_after_disconnect" if !v.is_empty() => {
                    r.max_run_after_disconnect = Some(parse_duration(v)?)
                }
                "id" | "session_id" if !v.is_empty() => r.id = Some(v.to_string()),
                "output_offset" => {
                    r.output_offset = Some(
                        v.parse()
                            .map_err(|_| format!("invalid output_offset: {v:?}"))?,
                    )
                }
                "detachable" | "cc" if parse_bool(k, v)? => r.legacy_flags.push(k.to_string()),
                _ => {}
            }
        }
        r.stdin = stdin.unwrap_or(r.tty);
        Ok(r)
    }

    /// The program to run: `path`, else argv[0], else `bash`.
    pub fn program(&self) -> String {
        self.path
            .clone()
            .or_else(|| self.cmd.first().cloned())
            .unwrap_or_else(|| "bash".into())
    }

    /// argv with argv[0] filled in when only `path` was given.
    pub fn argv(&self) -> Vec<String> {
        if self.cmd.is_empty() {
            vec![self.program()]
        } else {
            self.cmd.clone()
        }
    }
}

/// Parses a Go-style duration (`10s`, `1m30s`, `1.5s`, `250ms`, `0`). A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, s);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total += n * scale;
        rest = tail;
    }
    secs_to_duration(total, s)
}

fn secs_to_duration(secs: f64, s: &str) -> Result<Duration, String> {
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(encode(STREAM_STDOUT, b"hi"), vec![1, b'h', b'i']);
        assert_eq!(decode_output(&[3, 7]), Some(OutputFrame::Exit(7)));
        assert_eq!(decode_output(&[2, b'x']), Some(OutputFrame::Stderr(b"x")));
        assert_eq!(decode_output(&[]), None);
        assert_eq!(decode_output(&[9]), None);
        assert_eq!(exit_byte(None, Some(9)), 137);
        assert_eq!(exit_byte(Some(300), None), 255);
    }

    #[test]
    fn params() {
        let r = ExecRequest::from_pairs([
            ("cmd", "echo"),
            ("cmd", "a b"),
            ("env", "A=1=2"),
            ("dir", "/tmp"),
            ("stdin", "true"),
            ("max_run_after_disconnect", "1m30s"),
        ])
        .unwrap();
        assert_eq!(r.argv(), vec!["echo", "a b"]);
        assert_eq!(r.program(), "echo");
        assert_eq!(r.env, vec![("A".into(), "1=2".into())]);
        assert!(r.stdin && !r.tty);
        assert_eq!(r.max_run_after_disconnect, Some(Duration::from_secs(90)));
        assert!(ExecRequest::from_pairs([("env", "novalue")]).is_err());
        assert!(ExecRequest::from_pairs([("tty", "maybe")]).is_err());
        let tty = ExecRequest::from_pairs([("tty", "true")]).unwrap();
        assert!(tty.stdin, "TTY defaults to stdin");
        assert_eq!(tty.program(), "bash");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5.0s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
