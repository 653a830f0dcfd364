//! The few QMP (QEMU Machine Protocol) calls the backend needs, one connection per call: the
//! protocol is line-delimited JSON, so this is a handful of lines rather than a dependency.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Runs `command` (with `args`) on the QMP socket at `sock` and returns its `return` value.
pub async fn call(sock: &Path, command: &str, args: Option<Value>) -> std::io::Result<Value> {
    let stream = tokio::net::UnixStream::connect(sock).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let next = |v: Option<String>| {
        v.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed"))
    };
    next(lines.next_line().await?)?; // greeting
    for (i, cmd) in ["qmp_capabilities", command].into_iter().enumerate() {
        let mut req = json!({ "execute": cmd });
        if i == 1 {
            if let Some(a) = &args {
                req["arguments"] = a.clone();
            }
        }
        w.write_all(format!("{req}\n").as_bytes()).await?;
        loop {
            let line = next(lines.next_line().await?)?;
            let v: Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if v.get("event").is_some() {
                continue; // asynchronous events are not answers
            }
            if let Some(e) = v.get("error") {
                return Err(std::io::Error::other(format!("QMP {cmd}: {e}")));
            }
            if i == 1 {
                return Ok(v.get("return").cloned().unwrap_or(Value::Null));
            }
            break;
        }
    }
    unreachable!("the loop returns on the second command's answer")
}
