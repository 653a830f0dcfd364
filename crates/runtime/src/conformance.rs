//! The backend conformance suite: the behaviour every [`crate::Backend`] must show, written
//! once and run against each backend by that backend's own tests (real sprites, no fakes).
//!
//! Each check takes a backend and a fresh [`SpriteSpec`] (with its own disk) and panics with
//! a readable message when the backend misbehaves.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sprites_agent_protocol::{FRAMING_HEADER, FRAMING_LENGTH_PREFIXED};

use crate::{agent, Backend, SpriteSpec};

/// Output of a command run through the agent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// stdout bytes as text.
    pub stdout: String,
    /// stderr bytes as text.
    pub stderr: String,
    /// Exit byte.
    pub code: Option<u8>,
}

/// Runs `argv` in the sprite through the agent's `/exec`.
pub async fn exec(backend: &dyn Backend, spec: &SpriteSpec, argv: &[&str]) -> Output {
    let query: Vec<String> = argv.iter().map(|a| format!("cmd={}", encode(a))).collect();
    let req = http::Request::post(format!("/exec?{}", query.join("&")))
        .header(http::header::HOST, "sprite")
        .header(FRAMING_HEADER, FRAMING_LENGTH_PREFIXED)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let stream = backend.connect(spec).await.expect("connect to agent");
    let resp = agent::send(stream, req).await.expect("exec request");
    assert!(
        resp.status().is_success(),
        "exec {argv:?}: {}",
        resp.status()
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("exec body")
        .to_bytes();
    parse(&body)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse(mut b: &[u8]) -> Output {
    let mut out = Output::default();
    let (mut so, mut se) = (Vec::new(), Vec::new());
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let data = &b[5..5 + len];
        match b[0] {
            1 => so.extend_from_slice(data),
            2 => se.extend_from_slice(data),
            3 => out.code = data.first().copied(),
            x => panic!("unknown stream {x}"),
        }
        b = &b[5 + len..];
    }
    out.stdout = String::from_utf8_lossy(&so).into_owned();
    out.stderr = String::from_utf8_lossy(&se).into_owned();
    out
}

/// Boots, answers with its identity, runs commands as the sprite user, stops.
pub async fn boots_and_execs(backend: &dyn Backend, spec: &SpriteSpec) {
    assert!(
        !backend.is_running(spec).await,
        "a new sprite is not running"
    );
    backend.start(spec).await.expect("start");
    assert!(backend.is_running(spec).await);
    let info = agent::info(backend.connect(spec).await.expect("connect"))
        .await
        .expect("info");
    assert_eq!(info.hostname, spec.hostname);
    assert_eq!(info.protocol, sprites_agent_protocol::PROTOCOL_VERSION);
    let o = exec(
        backend,
        spec,
        &["sh", "-c", "id -un; pwd; echo err >&2; exit 5"],
    )
    .await;
    assert_eq!(
        o,
        Output {
            stdout: "sprite\n/home/sprite\n".into(),
            stderr: "err\n".into(),
            code: Some(5)
        }
    );
    backend.stop(spec).await.expect("stop");
    assert!(!backend.is_running(spec).await, "stopped");
    assert!(backend.connect(spec).await.is_err(), "no agent after stop");
}

/// The disk outlives the processes: files survive stop and start; processes do not.
pub async fn disk_persists(backend: &dyn Backend, spec: &SpriteSpec) {
    backend.start(spec).await.expect("start");
    let o = exec(
        backend,
        spec,
        &[
            "sh",
            "-c",
            "echo persisted > ~/p && sudo sh -c 'echo root > /etc/p' && sync",
        ],
    )
    .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    backend.stop(spec).await.expect("stop");
    backend.start(spec).await.expect("start again");
    let o = exec(
        backend,
        spec,
        &["sh", "-c", "cat ~/p /etc/p; pgrep -c -x sleep || true"],
    )
    .await;
    assert_eq!(o.stdout, "persisted\nroot\n0\n");
    backend.stop(spec).await.expect("stop");
}

/// A paused sprite runs nothing, its memory is kept, and it resumes where it stopped.
pub async fn pause_and_resume(backend: &dyn Backend, spec: &SpriteSpec) {
    backend.start(spec).await.expect("start");
    let o = exec(
        backend,
        spec,
        &["sh", "-c", "echo $$ > /tmp/pid; (sleep 1000 &) ; echo ok"],
    )
    .await;
    assert_eq!(o.stdout, "ok\n");
    backend.pause(spec).await.expect("pause");
    assert!(
        backend.is_running(spec).await,
        "a paused sprite still exists"
    );
    // A frozen agent cannot answer.
    // A frozen agent cannot answer (a backend may also refuse to connect at all).
    let answered = tokio::time::timeout(Duration::from_millis(500), async {
        match backend.connect(spec).await {
            Ok(s) => agent::info(s).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(!matches!(answered, Ok(true)), "a paused sprite answered");
    backend.resume(spec).await.expect("resume");
    let o = exec(backend, spec, &["pgrep", "-c", "-x", "sleep"]).await;
    assert_eq!(o.stdout, "1\n", "processes survive pause/resume");
    backend.stop(spec).await.expect("stop");
}

/// The sprite does not see host files, and cleanup leaves nothing running.
pub async fn isolated_and_clean(
    backend: &dyn Backend,
    spec: &SpriteSpec,
    host_marker: &std::path::Path,
) {
    backend.start(spec).await.expect("start");
    let p = host_marker.display().to_string();
    let o = exec(
        backend,
        spec,
        &[
            "sh",
            "-c",
            &format!("test -e {p} && echo visible || echo hidden"),
        ],
    )
    .await;
    assert_eq!(
        o.stdout, "hidden\n",
        "host file {p} visible inside the sprite"
    );
    backend.stop(spec).await.expect("stop");
    backend.cleanup(spec).await.expect("cleanup");
    assert!(!backend.is_running(spec).await);
}
