//! Exec: query parameters (§3.1, §3.5) and the binary frame format.
//!
//! Non-TTY output frames are one byte of stream id followed by data; the exit frame is
//! `[0x03, code]` with exactly one byte of code. Client stdin frames are `[0x00, data...]` and a
//! lone `[0x04]` closes stdin.

use std::time::Duration;

pub use crate::duration::parse_duration;
use crate::duration::{format_duration, WireDuration};
use crate::signal::{parse_signal, signal_name};

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

/// Time `kill` waits for the process to exit before it sends SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /exec/{id}/kill` options (§3.4): in the query (Go, JS) or a JSON body (Python,
/// `{"signal":"SIGINT","timeout":5}`); the query wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillRequest {
    /// Signal number, SIGTERM by default.
    pub signal: i32,
    /// How long to wait before SIGKILL; zero sends the signal only.
    pub timeout: Duration,
}

impl KillRequest {
    /// Parses the query pairs and the body (empty, `null` or a JSON object).
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            signal: Option<serde_json::Value>,
            #[serde(default)]
            timeout: Option<WireDuration>,
        }
        let (mut signal, mut timeout) = (None, None);
        for (k, v) in pairs {
            match k {
                "signal" if signal.is_none() => signal = Some(parse_signal_name(v)?),
                "timeout" if timeout.is_none() => timeout = Some(parse_duration(v)?),
                _ => {}
            }
        }
        if !body.trim_ascii().is_empty() {
            let b: Option<Body> = serde_json::from_slice(body)
                .map_err(|e| format!("invalid kill request body: {e}"))?;
            if let Some(b) = b {
                if signal.is_none() {
                    signal = match b.signal {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) => Some(parse_signal_name(&s)?),
                        Some(serde_json::Value::Number(n)) => {
                            Some(parse_signal_name(&n.to_string())?)
                        }
                        Some(_) => return Err("signal must be a name or a number".into()),
                    };
                }
                timeout = timeout.or(b.timeout.map(|t| t.0));
            }
        }
        Ok(Self {
            signal: signal.unwrap_or(15),
            timeout: timeout.unwrap_or(DEFAULT_KILL_TIMEOUT),
        })
    }

    /// The query that asks for this request.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        vec![
            ("signal", self.signal.to_string()),
            ("timeout", format_duration(self.timeout)),
        ]
    }
}

fn parse_signal_name(s: &str) -> Result<i32, String> {
    parse_signal(s).ok_or_else(|| format!("unknown signal {s:?}"))
}

/// A control message a client sends on the exec WebSocket: a text frame, or a binary frame
/// starting with `{` (the JS dialect). Anything else is not a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    /// `{"type":"resize","cols":C,"rows":R}`.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// `{"type":"signal","signal":"SIGINT"}`.
    Signal(i32),
    /// `{"type":"stdin_eof"}`.
    StdinEof,
}

impl ControlMessage {
    /// Parses one message; `None` for malformed or unknown ones, which are ignored.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
        let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
        match v["type"].as_str()? {
            "resize" => Some(Self::Resize {
                cols: dim("cols")?,
                rows: dim("rows")?,
            }),
            "signal" => v["signal"]
                .as_str()
                .and_then(parse_signal)
                .map(Self::Signal),
            "stdin_eof" => Some(Self::StdinEof),
            _ => None,
        }
    }

    /// The JSON a client sends for this message.
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Self::Resize { cols, rows } => {
                serde_json::json!({"type": "resize", "cols": cols, "rows": rows})
            }
            Self::Signal(n) => serde_json::json!({
                "type": "signal",
                "signal": signal_name(n).unwrap_or_else(|| n.to_string()),
            }),
            Self::StdinEof => serde_json::json!({"type": "stdin_eof"}),
        }
    }
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
    fn kill_requests() {
        let k = KillRequest::parse([("signal", "INT"), ("timeout", "500ms")], b"").unwrap();
        assert_eq!((k.signal, k.timeout), (2, Duration::from_millis(500)));
        let k = KillRequest::parse([], br#"{"signal":"SIGINT","timeout":5}"#).unwrap();
        assert_eq!((k.signal, k.timeout), (2, Duration::from_secs(5)));
        let k =
            KillRequest::parse([("signal", "KILL")], br#"{"signal":15,"timeout":null}"#).unwrap();
        assert_eq!((k.signal, k.timeout), (9, DEFAULT_KILL_TIMEOUT));
        let k = KillRequest::parse([], b" null ").unwrap();
        assert_eq!((k.signal, k.timeout), (15, DEFAULT_KILL_TIMEOUT));
        for (q, body) in [
            ("", r#"{"timeout":1e20}"#),
            ("", r#"{"timeout":-1}"#),
            ("", r#"{"timeout":"NaN"}"#),
            ("", r#"{"timeout":"inf"}"#),
            ("", r#"{"timeout":true}"#),
            ("", r#"{"signal":"BOGUS"}"#),
            ("", r#"{"signal":[]}"#),
            ("", "not json"),
            ("1e20", ""),
            ("-1", ""),
            ("NaN", ""),
        ] {
            let pairs = (!q.is_empty()).then_some(("timeout", q));
            assert!(
                KillRequest::parse(pairs, body.as_bytes()).is_err(),
                "{q:?} {body:?}"
            );
        }
    }

    #[test]
    fn control_messages() {
        let m = ControlMessage::parse(br#"{"type":"resize","cols":120,"rows":40}"#);
        assert_eq!(
            m,
            Some(ControlMessage::Resize {
                cols: 120,
                rows: 40
            })
        );
        let m = ControlMessage::parse(br#"{"type":"signal","signal":"SIGINT"}"#);
        assert_eq!(m, Some(ControlMessage::Signal(2)));
        assert_eq!(
            ControlMessage::parse(br#"{"type":"stdin_eof"}"#),
            Some(ControlMessage::StdinEof)
        );
        for bad in [
            r#"{"type":"resize","cols":70000,"rows":1}"#,
            r#"{"type":"resize","cols":-1,"rows":1}"#,
            r#"{"type":"signal","signal":"BOGUS"}"#,
            r#"{"type":"keepalive"}"#,
            r#"[1]"#,
            "{",
        ] {
            assert_eq!(ControlMessage::parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
