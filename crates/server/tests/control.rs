//! The multiplexed control connection (spec §4) in the dialect the Go SDK speaks (unprefixed
//! envelopes for proxy and fs, raw stdin, `release` after every op), which no official suite
//! here runs; the JS and Python suites cover the prefixed dialect through their own SDKs.

mod common;

use std::time::Duration;

use common::{Api, TestServer};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn control(s: &TestServer, sprite: &str, user_agent: &str) -> Ws {
    let url = format!(
        "{}/v1/sprites/{sprite}/control",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    h.insert("user-agent", user_agent.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("control upgrade")
        .0
}

async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(&t).unwrap_or_else(|_| panic!("JSON: {t}")),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

/// Runs a non-TTY exec op to its `op.complete`: (stdout, exit frame, op.complete's code).
async fn exec_op(ws: &mut Ws, args: Value, stdin: &[&[u8]]) -> (String, Option<u8>, i64) {
    let start = json!({"type": "op.start", "op": "exec", "args": args});
    ws.send(Message::text(format!("control:{start}")))
        .await
        .unwrap();
    for chunk in stdin {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    let (mut out, mut exit) = (Vec::new(), None);
    let mut saw_info = false;
    loop {
        match next(ws).await.expect("the op ends with op.complete") {
            Message::Text(t) if t.starts_with("control:") => {
                let v: Value = serde_json::from_str(&t["control:".len()..]).unwrap();
                assert_eq!(v["type"], "op.complete", "{v}");
                assert!(saw_info, "session_info comes first");
                let code = v["args"]["exitCode"].as_i64().expect("exitCode");
                return (String::from_utf8_lossy(&out).into(), exit, code);
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "session_info" {
                    saw_info = true;
                }
            }
            Message::Binary(b) => match b[0] {
                1 => out.extend_from_slice(&b[1..]),
                3 => exit = Some(b[1]),
                _ => {}
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn exec_ops_in_the_go_and_prefixed_dialects() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("ctl").await;

    // Go: raw stdin (no stream byte; here one that starts with the byte other dialects use
    // as a prefix, and one that looks like JSON), a lone 0x04 for EOF, release afterwards.
    let mut ws = control(&s, "ctl", "sprites-go-sdk/1.0").await;
    let stdin: [&[u8]; 3] = [b"\x00AB", b"{CD}", &[4]];
    let (out, exit, code) = exec_op(
        &mut ws,
        json!({"cmd": ["sh", "-c", "od -An -c | tr -s ' '; exit 5"], "stdin": "true"}),
        &stdin,
    )
    .await;
    assert_eq!(out.trim(), "\\0 A B { C D }");
    assert_eq!((exit, code), (Some(5), 5));
    ws.send(Message::text(r#"{"type":"release"}"#))
        .await
        .unwrap();
    // Idle again: a stray release and data are ignored, the next op runs on the same socket.
    ws.send(Message::text(r#"{"type":"release"}"#))
        .await
        .unwrap();
    ws.send(Message::binary(b"junk".to_vec())).await.unwrap();
    let (out, _, code) = exec_op(&mut ws, json!({"cmd": ["echo", "again"]}), &[]).await;
    assert_eq!((out.as_str(), code), ("again\n", 0));

    // Python/JS: prefixed stdin, lenient arg types (a bool and numbers).
    let mut ws = control(&s, "ctl", "sprites-py/0.7.2").await;
    let (out, _, code) = exec_op(
        &mut ws,
        json!({"cmd": ["sh", "-c", "cat; echo \"$A\""], "stdin": true, "env": ["A=b c"]}),
        &[b"\x00piped\n", &[4]],
    )
    .await;
    assert_eq!((out.as_str(), code), ("piped\nb c\n", 0));

    // A second op.start while one runs is refused with op.busy; the first goes on.
    let start = json!({"type": "op.start", "op": "exec", "args": {"cmd": ["sh", "-c", "sleep 1; echo done"]}});
    ws.send(Message::text(format!("control:{start}")))
        .await
        .unwrap();
    ws.send(Message::text(format!("control:{start}")))
        .await
        .unwrap();
    let mut busy = false;
    let mut done = false;
    while let Some(m) = next(&mut ws).await {
        if let Message::Text(t) = &m {
            if let Some(rest) = t.strip_prefix("control:") {
                let v: Value = serde_json::from_str(rest).unwrap();
                if v["type"] == "op.error" {
                    assert_eq!(v["args"]["code"], "op.busy");
                    assert!(v["args"]["error"].is_string());
                    busy = true;
                    continue;
                }
                assert_eq!(v["type"], "op.complete");
                done = true;
                break;
            }
        }
    }
    assert!(busy && done);

    // An exec that fails to start is an op.error with all three fields.
    let bad =
        json!({"type": "op.start", "op": "exec", "args": {"cmd": ["true"], "env": ["NOEQUALS"]}});
    ws.send(Message::text(format!("control:{bad}")))
        .await
        .unwrap();
    let m = next(&mut ws).await.unwrap();
    let t = m.into_text().unwrap();
    let v: Value = serde_json::from_str(t.strip_prefix("control:").unwrap()).unwrap();
    assert_eq!(v["type"], "op.error");
    assert!(
        v["args"]["error"].as_str().unwrap().contains("KEY=VALUE"),
        "{v}"
    );
    assert_eq!(v["args"]["message"], v["args"]["error"]);

    // A missing sprite is a plain 404 before any upgrade (every SDK then falls back).
    let r = api
        .req(Method::GET, "/v1/sprites/nosuch/control")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn go_proxy_and_fs_dialects() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("ctlp").await;
    // An echo server in the sprite.
    api.sh(
        "ctlp",
        "nohup python3 -c 'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", 7007)); s.listen()\nwhile True:\n c,_=s.accept()\n while (d:=c.recv(65536)): c.sendall(d.upper())\n c.close()' >/dev/null 2>&1 &
         for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\",7007))' 2>/dev/null && break; sleep 0.1; done",
    )
    .await;

    let mut ws = control(&s, "ctlp", "sprites-go-sdk/1.0").await;
    for round in 0..2 {
        ws.send(Message::text(
            r#"{"type":"start","operation":"proxy","params":{"host":"localhost","port":7007,"keep_alive":true}}"#,
        ))
        .await
        .unwrap();
        let v = next_json(&mut ws).await;
        assert_eq!(v["status"], "connected", "{v}");
        assert_eq!(v["target"], "localhost:7007");
        ws.send(Message::binary(format!("hello {round}").into_bytes()))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 7 {
            match next(&mut ws).await.unwrap() {
                Message::Binary(b) => got.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, format!("HELLO {round}").into_bytes());
        // Release: the target closes, the socket is idle and takes the next proxy.
        ws.send(Message::text(r#"{"type":"release"}"#))
            .await
            .unwrap();
    }

    // A target that is not there: an error status and an unprefixed op.error.
    ws.send(Message::text(
        r#"{"type":"start","operation":"proxy","params":{"host":"localhost","port":1,"keep_alive":true}}"#,
    ))
    .await
    .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["status"], "error", "{v}");
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "op.error", "{v}");

    // fs ops: unprefixed, URL-encoded string args, Go's workingDir default.
    ws.send(Message::text(
        r#"{"type":"op.start","op":"fs.write","args":"path=ctl%2Fnote.txt&mode=0640&mkdirParents=true"}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::binary(b"written over control".to_vec()))
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["size"], 20, "{v}");
    assert_eq!(next_json(&mut ws).await["type"], "op.complete");

    ws.send(Message::text(
        r#"{"type":"op.start","op":"fs.read","args":"path=%2Fhome%2Fsprite%2Fctl%2Fnote.txt&workingDir=%2F"}"#,
    ))
    .await
    .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["size"], 20, "{v}");
    match next(&mut ws).await.unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], b"written over control"),
        other => panic!("expected the bytes, got {other:?}"),
    }
    assert_eq!(next_json(&mut ws).await["type"], "op.complete");

    for (op, args, check) in [
        ("fs.list", "path=ctl", "entries"),
        ("fs.chmod", "path=ctl%2Fnote.txt&mode=0600", "affected"),
        (
            "fs.copy",
            "source=ctl%2Fnote.txt&dest=ctl%2Fcopy.txt",
            "copied",
        ),
        (
            "fs.rename",
            "source=ctl%2Fcopy.txt&dest=ctl%2Fmoved.txt",
            "dest",
        ),
        ("fs.delete", "path=ctl%2Fmoved.txt", "deleted"),
    ] {
        let start = json!({"type": "op.start", "op": op, "args": args});
        ws.send(Message::text(start.to_string())).await.unwrap();
        let v = next_json(&mut ws).await;
        assert!(v.get(check).is_some(), "{op}: {v}");
        assert_eq!(next_json(&mut ws).await["type"], "op.complete", "{op}");
    }
    let out = api
        .sh("ctlp", "stat -c %a ctl/note.txt; ls ctl")
        .await
        .stdout;
    assert_eq!(out, "600\nnote.txt\n");

    // A missing file: the HTTP API's error shape, then op.error.
    ws.send(Message::text(
        r#"{"type":"op.start","op":"fs.read","args":"path=nope"}"#,
    ))
    .await
    .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["code"], "ENOENT", "{v}");
    assert_eq!(next_json(&mut ws).await["type"], "op.error");
}

#[tokio::test]
async fn an_idle_control_socket_lets_the_sprite_sleep() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("ctli").await;
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/sprites/ctli",
            Some(json!({"idle": {"warm_after": "1s"}})),
        )
        .await;
    assert_eq!(st, 200);
    let mut ws = control(&s, "ctli", "sprites-py/0.7.2").await;
    let (out, _, _) = exec_op(&mut ws, json!({"cmd": ["echo", "hi"]}), &[]).await;
    assert_eq!(out, "hi\n");
    // The socket stays open and idle: the sprite still goes to sleep.
    let mut status = String::new();
    for _ in 0..100 {
        let (_, v) = api.json(Method::GET, "/v1/sprites/ctli", None).await;
        status = v["status"].as_str().unwrap_or("").to_string();
        if status != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        status, "running",
        "an idle control socket kept the sprite awake"
    );
    // And the next op on that socket wakes it.
    let (out, _, code) = exec_op(&mut ws, json!({"cmd": ["echo", "awake"]}), &[]).await;
    assert_eq!((out.as_str(), code), ("awake\n", 0));
}
