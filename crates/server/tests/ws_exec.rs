//! WebSocket exec, sessions, attach, kill (spec §3.1–3.4) through spritesd into real sprites.

mod common;

use std::time::Duration;

use common::{Api, TestServer};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &TestServer, path_and_query: &str) -> (Ws, Value) {
    let url = format!("{}{path_and_query}", s.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(resp.headers()["x-sprite-capabilities"], "signal");
    let first = next(&mut ws).await.expect("session_info");
    let Message::Text(t) = first else {
        panic!("first message must be text: {first:?}")
    };
    let info: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(info["type"], "session_info");
    assert!(
        info["session_id"].is_string(),
        "session_id is a JSON string: {info}"
    );
    (ws, info)
}

async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

/// Reads a non-TTY stream to its end: (stdout, stderr, exit, close code).
async fn drain_non_tty(ws: &mut Ws) -> (String, String, Option<u8>, Option<u16>) {
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(m) = next(ws).await {
        match m {
            Message::Binary(b) => match b.first() {
                Some(1) => out.extend_from_slice(&b[1..]),
                Some(2) => err.extend_from_slice(&b[1..]),
                Some(3) => {
                    assert_eq!(b.len(), 2, "exit frame is exactly two bytes");
                    assert!(exit.is_none());
                    exit = Some(b[1]);
                }
                _ => panic!("unexpected frame {b:?}"),
            },
            Message::Close(f) => {
                return (
                    String::from_utf8_lossy(&out).into(),
                    String::from_utf8_lossy(&err).into(),
                    exit,
                    f.map(|f| f.code.into()),
                )
            }
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("socket ended without a close frame")
}

/// Reads TTY output until `needle` shows up.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        match next(ws).await {
            Some(Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Message::Text(_)) => {}
            other => panic!("stream ended before {needle:?}: {other:?}; saw {seen:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn non_tty_frames_stdin_and_exit() {
    let s = TestServer::start().unwrap();
    Api::new(&s).create("w").await;
    let (mut ws, info) = connect(
        &s,
        "/v1/sprites/w/exec?cmd=sh&cmd=-c&cmd=echo%20hi;%20echo%20e%20%3E%262;%20exit%206",
    )
    .await;
    assert_eq!(info["tty"], false);
    let (out, err, exit, close) = drain_non_tty(&mut ws).await;
    assert_eq!(
        (out.as_str(), err.as_str(), exit, close),
        ("hi\n", "e\n", Some(6), Some(1000))
    );

    // stdin: 0x00-prefixed data, then 0x04 closes it.
    let (mut ws, _) = connect(
        &s,
        "/v1/sprites/w/exec?cmd=sh&cmd=-c&cmd=tr%20a-z%20A-Z;%20echo%20done&stdin=true",
    )
    .await;
    ws.send(Message::Binary(b"\x00hello ".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"\x00world\n".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![4u8].into())).await.unwrap();
    let (out, _, exit, _) = drain_non_tty(&mut ws).await;
    assert_eq!((out.as_str(), exit), ("HELLO WORLD\ndone\n", Some(0)));

    // stdin=false: the process sees EOF at once.
    let (mut ws, _) = connect(&s, "/v1/sprites/w/exec?cmd=cat&stdin=false").await;
    let (out, _, exit, _) = drain_non_tty(&mut ws).await;
    assert_eq!((out.as_str(), exit), ("", Some(0)));

    // Signals as text messages reach the process group.
    let (mut ws, _) = connect(&s, "/v1/sprites/w/exec?cmd=sleep&cmd=100").await;
    ws.send(Message::Text(r#"{"type":"signal","signal":"TERM"}"#.into()))
        .await
        .unwrap();
    let (_, _, exit, _) = drain_non_tty(&mut ws).await;
    assert_eq!(exit, Some(128 + 15));
}

#[tokio::test]
async fn tty_sessions_survive_detach_and_replay() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("t").await;
    let (mut ws, info) = connect(&s, "/v1/sprites/t/exec?cmd=bash&tty=true&cols=120&rows=40").await;
    assert_eq!(info["tty"], true);
    let id = info["session_id"].as_str().unwrap().to_string();
    ws.send(Message::Binary(
        b"echo mark-$((6*7)); stty size; tty\r".to_vec().into(),
    ))
    .await
    .unwrap();
    let seen = read_until(&mut ws, "40 120").await;
    assert!(seen.contains("mark-42"));
    ws.send(Message::Text(
        r#"{"type":"resize","cols":90,"rows":20}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(b"stty size\r".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "20 90").await;
    // Vanish without a close frame.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = api.json(Method::GET, "/v1/sprites/t/exec", None).await;
    let sess = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(sess["tty"], true);
    assert_eq!(sess["exited"], false, "TTY sessions outlive their client");
    assert!(sprites_api::timefmt::parse_millis(sess["created"].as_str().unwrap()).is_some());

    // Output produced while detached is replayed on attach, then live output follows.
    api.sh("t", "true").await;
    let (mut ws, info) = connect(&s, &format!("/v1/sprites/t/exec/{id}")).await;
    assert_eq!(info["is_owner"], false);
    let replay = read_until(&mut ws, "20 90").await;
    assert!(
        replay.contains("mark-42"),
        "scrollback replayed: {replay:?}"
    );
    ws.send(Message::Binary(b"exit 4\r".to_vec().into()))
        .await
        .unwrap();
    let mut exit = None;
    while let Some(m) = next(&mut ws).await {
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "exit" {
                    exit = v["exit_code"].as_u64();
                }
            }
            Message::Close(f) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(exit, Some(4), "TTY exit comes as JSON before the close");

    // Legacy attach form and output_offset: an exited session replies with info then exit.
    let (mut ws, _) = connect(
        &s,
        &format!("/v1/sprites/t/exec?id={id}&output_offset=100000000"),
    )
    .await;
    let m = next(&mut ws).await.unwrap();
    assert!(
        matches!(m, Message::Text(ref t) if t.contains("\"exit\"")),
        "{m:?}"
    );

    // Unknown session: 404 with a JSON body on the upgrade.
    let r = api
        .req(Method::GET, "/v1/sprites/t/exec/99999")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    let r = api
        .req(Method::HEAD, "/v1/sprites/t/exec")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("sprite-version"));
}

#[tokio::test]
async fn non_tty_client_vanishing_ends_the_process_after_the_grace() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("v").await;
    let (mut ws, info) = connect(
        &s,
        "/v1/sprites/v/exec?cmd=sh&cmd=-c&cmd=echo%20up;%20sleep%20300&max_run_after_disconnect=1s",
    )
    .await;
    let id = info["session_id"].as_str().unwrap().to_string();
    assert!(matches!(next(&mut ws).await, Some(Message::Binary(_))));
    drop(ws);
    let mut exited = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, list) = api.json(Method::GET, "/v1/sprites/v/exec", None).await;
        let sess = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id.as_str())
            .cloned()
            .unwrap();
        if sess["exited"] == true {
            exited = true;
            break;
        }
    }
    assert!(
        exited,
        "the process was ended after max_run_after_disconnect"
    );
    assert_eq!(
        api.exec("v", &["pgrep", "-c", "-x", "sleep"]).await.stdout,
        "0\n"
    );
}

#[tokio::test]
async fn kill_streams_ndjson_and_escalates() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("k").await;
    // A process that ignores TERM forces the escalation to KILL.
    let (_ws, info) = connect(
        &s,
        "/v1/sprites/k/exec?cmd=sh&cmd=-c&cmd=trap%20%27%27%20TERM;%20sleep%20300&tty=true",
    )
    .await;
    let id = info["session_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api
        .req(
            Method::POST,
            &format!("/v1/sprites/k/exec/{id}/kill?signal=TERM&timeout=500ms"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let types: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        ["signal", "timeout", "killed", "exited", "complete"],
        "{text}"
    );
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 137);
    let r = api
        .req(Method::POST, &format!("/v1/sprites/k/exec/{id}/kill"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "already exited");
    let r = api
        .req(Method::POST, "/v1/sprites/k/exec/424242/kill")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Python sends the signal in a JSON body.
    let (_ws2, info) = connect(&s, "/v1/sprites/k/exec?cmd=sleep&cmd=300&tty=true").await;
    let id = info["session_id"].as_str().unwrap().to_string();
    let r = api
        .req(Method::POST, &format!("/v1/sprites/k/exec/{id}/kill"))
        .json(&serde_json::json!({"signal": "SIGINT", "timeout": 5}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("SIGINT") && text.contains("\"exit_code\":130"),
        "{text}"
    );
    let r = api
        .req(
            Method::POST,
            &format!("/v1/sprites/k/exec/{id}/kill?signal=SIGBOGUS"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status() == 400 || r.status() == 410);
}

#[tokio::test]
async fn sessions_survive_a_server_restart() {
    let mut s = TestServer::start().unwrap();
    Api::new(&s).create("r").await;
    let (mut ws, info) = connect(&s, "/v1/sprites/r/exec?cmd=bash&tty=true").await;
    let id = info["session_id"].as_str().unwrap().to_string();
    ws.send(Message::Binary(b"echo before-restart\r".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "before-restart\r\n").await;
    s.kill9();
    // The relay was in the old server: the client loses its socket, the session lives on.
    s.restart().unwrap();
    let (mut ws, _) = connect(&s, &format!("/v1/sprites/r/exec/{id}")).await;
    read_until(&mut ws, "before-restart").await;
    ws.send(Message::Binary(b"echo after-restart\r".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "after-restart\r\n").await;
}

#[tokio::test]
async fn a_client_that_never_reads_costs_bounded_memory() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let created = api.create("slow").await;
    let (_ws, _) = connect(
        &s,
        "/v1/sprites/slow/exec?cmd=yes&max_run_after_disconnect=0",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Read from the host: the sprite's own root cannot look at its agent.
    let pid = s
        .agent_pid(created["id"].as_str().unwrap())
        .expect("the agent's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in the agent's status");
    assert!(
        rss_kb < 64 * 1024,
        "agent RSS {rss_kb} KiB with an unread stream"
    );
    let (_, list) = api.json(Method::GET, "/v1/sprites/slow/exec", None).await;
    assert!(list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["command"] == "yes" && x["exited"] == false));
}

#[tokio::test]
async fn fast_output_is_never_lost_by_an_attached_client() {
    let s = TestServer::start().unwrap();
    Api::new(&s).create("big").await;
    // ~24 MB, far more than the 1 MiB ring: the process is held back, nothing is dropped.
    let (mut ws, _) = connect(&s, "/v1/sprites/big/exec?cmd=seq&cmd=1&cmd=3500000").await;
    let (out, _, exit, _) = drain_non_tty(&mut ws).await;
    assert_eq!(exit, Some(0));
    let expected: String = (1..=3_500_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "output differs");
}
