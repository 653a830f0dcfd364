//! The filesystem API (spec §9) in a real sprite.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

async fn write(api: &Api, q: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
    let r = api
        .req(Method::PUT, "/v1/sprites/f/fs/write")
        .query(q)
        .body(body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

#[tokio::test]
async fn filesystem_operations_as_the_sprite_user() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("f").await;

    let (st, v) = write(
        &api,
        &[
            ("path", "notes/a.txt"),
            ("workingDir", "/home/sprite"),
            ("mkdirParents", "true"),
            ("mode", "0640"),
        ],
        b"hello fs".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"path": "/home/sprite/notes/a.txt", "size": 8, "mode": "0640"})
    );
    let o = api
        .exec("f", &["stat", "-c", "%U %a %s", "/home/sprite/notes/a.txt"])
        .await;
    assert_eq!(
        o.stdout, "sprite 640 8\n",
        "written as the sprite user with the mode"
    );

    let r = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[("path", "/home/sprite/notes/a.txt")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello fs");
    let r = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[
            ("path", "/home/sprite/notes/a.txt"),
            ("start", "6"),
            ("end", "8"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"fs");

    // list a directory; list a file = stat.
    let (st, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["count"], 1);
    assert_eq!(v["entries"][0]["name"], "a.txt");
    assert_eq!(v["entries"][0]["type"], "file");
    assert_eq!(v["entries"][0]["isDir"], false);
    let (_, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=a.txt&workingDir=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["entries"][0]["size"], 8);
    let (_, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=/home/sprite&recursive=true&pattern=*.txt",
            None,
        )
        .await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/home/sprite/notes/a.txt"),
        "{v}"
    );

    // Errors carry errno codes and matching statuses.
    let (st, e) = api
        .json(Method::GET, "/v1/sprites/f/fs/read?path=/nope", None)
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ENOENT"))
    );
    let (st, e) = write(&api, &[("path", "/etc/evil")], b"x".to_vec()).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES")),
        "the sprite user cannot write /etc"
    );
    assert_ne!(
        api.exec("f", &["test", "-e", "/etc/evil"]).await.code,
        Some(0),
        "nothing was created"
    );
    let (st, _) = write(
        &api,
        &[("path", "/etc/allowed"), ("asRoot", "true")],
        b"root".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        api.exec("f", &["stat", "-c", "%U", "/etc/allowed"])
            .await
            .stdout,
        "root\n"
    );
    let (st, e) = api
        .json(Method::GET, "/v1/sprites/f/fs/read?path=/etc/shadow", None)
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES"))
    );
    let (st, _) = write(&api, &[("path", "/x"), ("mode", "99")], vec![]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A refused upload bigger than any buffer still gets its own answer, not a broken
    // connection: the agent reads the rest before it answers.
    let (st, e) = write(&api, &[("path", "/etc/too-big")], vec![7u8; 320 << 20]).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES")),
        "{e}"
    );

    // rename, copy, chmod, chown, delete.
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/rename", Some(json!({"source": "notes/a.txt", "dest": "notes/b.txt", "workingDir": "/home/sprite"}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/copy", Some(json!({"source": "/home/sprite/notes", "dest": "/home/sprite/copy", "recursive": true}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["totalBytes"], 8);
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites/f/fs/chmod",
            Some(json!({"path": "/home/sprite/copy/b.txt", "mode": "0600"})),
        )
        .await;
    assert_eq!(
        (st, v["affected"][0]["mode"].as_str()),
        (StatusCode::OK, Some("0600"))
    );
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/chown", Some(json!({"path": "/home/sprite/copy", "uid": "root", "gid": 0, "recursive": true, "asRoot": true}))).await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    assert_eq!(
        api.exec("f", &["stat", "-c", "%U %a", "/home/sprite/copy/b.txt"])
            .await
            .stdout,
        "root 600\n"
    );
    let (st, e) = api
        .json(
            Method::DELETE,
            "/v1/sprites/f/fs/delete?path=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("ENOTEMPTY"))
    );
    let (st, v) = api
        .json(
            Method::DELETE,
            "/v1/sprites/f/fs/delete?path=/home/sprite/notes&recursive=true",
            None,
        )
        .await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(1)));
    assert_ne!(
        api.exec("f", &["test", "-e", "/home/sprite/notes"])
            .await
            .code,
        Some(0)
    );

    // A large file streams both ways intact.
    let big: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let want = hex(&sha2::Sha256::digest(&big));
    let (st, v) = write(&api, &[("path", "/tmp/big.bin")], big).await;
    assert_eq!((st, v["size"].as_u64()), (StatusCode::OK, Some(16 << 20)));
    let got = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[("path", "/tmp/big.bin")])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex(&sha2::Sha256::digest(&got)), want);
    assert!(api
        .exec("f", &["sha256sum", "/tmp/big.bin"])
        .await
        .stdout
        .starts_with(&want));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- /fs/watch, /fs/tar ----

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/fs/watch` on sprite `name` and sends the subscribe frame.
async fn watch(s: &TestServer, name: &str, subscribe: Value) -> Ws {
    let url = format!(
        "{}/v1/sprites/{name}/fs/watch",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    ws
}

/// The next JSON frame; `None` once the socket closed.
async fn frame(ws: &mut Ws) -> Option<Value> {
    loop {
        // Only a guard against hanging: a frame that never comes fails here.
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Event frames up to and including the first matching `want`; all of them are returned.
async fn until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        // Only a guard against hanging.
        let v = tokio::time::timeout(Duration::from_secs(30), frame(ws))
            .await
            .unwrap_or_else(|_| panic!("no matching event; saw {seen:?}"))
            .unwrap_or_else(|| panic!("closed; saw {seen:?}"));
        assert_eq!(v["type"], "event", "{v}");
        let done = want(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn is(ev: &Value, path: &str, kind: &str) -> bool {
    ev["path"] == path && ev["event"] == kind
}

/// Inotify instances the agent of sprite `id` holds, looked at from the host (the sprite's
/// own root cannot look at its agent).
fn agent_inotify_fds(s: &TestServer, id: &str) -> usize {
    let pid = s.agent_pid(id).expect("the agent's pid");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify"))
        })
        .count()
}

#[tokio::test]
async fn watch_reports_changes_including_new_directories() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    // `write` above targets sprite "f".
    let id = api.create("f").await["id"].as_str().unwrap().to_string();
    api.sh("f", "mkdir -p /home/sprite/watched").await;
    assert_eq!(agent_inotify_fds(&s, &id), 0);

    let mut ws = watch(
        &s,
        "f",
        json!({"type": "subscribe", "paths": ["watched"], "recursive": true, "workingDir": "/home/sprite"}),
    )
    .await;
    let v = frame(&mut ws).await.unwrap();
    assert_eq!(
        v,
        json!({"type": "subscribed", "paths": ["/home/sprite/watched"]})
    );
    assert_eq!(agent_inotify_fds(&s, &id), 1, "one inotify instance");

    // A write through the API is the target's create + write; its temp file stays hidden.
    let (st, _) = write(
        &api,
        &[("path", "/home/sprite/watched/a.txt")],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let seen = until(&mut ws, |e| is(e, "/home/sprite/watched/a.txt", "write")).await;
    assert!(
        seen.iter()
            .any(|e| is(e, "/home/sprite/watched/a.txt", "create")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|e| e["path"].as_str().unwrap().ends_with("/a.txt")),
        "only the target shows up: {seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(last["size"], 5);
    assert_eq!(last["isDir"], false);
    assert!(
        sprites_api::timefmt::parse_millis(last["timestamp"].as_str().unwrap()).is_some(),
        "RFC 3339 timestamp: {last}"
    );

    // A directory made after subscribing is watched too, with what was made inside it at once.
    api.sh(
        "f",
        "mkdir -p /home/sprite/watched/new/deeper && echo hi > /home/sprite/watched/new/deeper/f.txt",
    )
    .await;
    let seen = until(&mut ws, |e| {
        is(e, "/home/sprite/watched/new/deeper/f.txt", "create")
    })
    .await;
    let new_dir = seen
        .iter()
        .find(|e| is(e, "/home/sprite/watched/new", "create"))
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(new_dir["isDir"], true);
    api.sh("f", "echo more >> /home/sprite/watched/new/deeper/f.txt")
        .await;
    until(&mut ws, |e| {
        is(e, "/home/sprite/watched/new/deeper/f.txt", "write")
    })
    .await;
    api.sh("f", "chmod 600 /home/sprite/watched/a.txt").await;
    until(&mut ws, |e| is(e, "/home/sprite/watched/a.txt", "chmod")).await;
    api.sh(
        "f",
        "mv /home/sprite/watched/a.txt /home/sprite/watched/b.txt",
    )
    .await;
    let seen = until(&mut ws, |e| is(e, "/home/sprite/watched/b.txt", "create")).await;
    assert!(
        seen.iter()
            .any(|e| is(e, "/home/sprite/watched/a.txt", "rename")),
        "{seen:?}"
    );
    api.sh("f", "rm -r /home/sprite/watched/new").await;
    until(&mut ws, |e| is(e, "/home/sprite/watched/new", "remove")).await;

    // Closing the socket ends the watcher and its inotify instance.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = agent_inotify_fds(&s, &id);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the inotify fd was closed with the socket");

    // A file can be watched on its own, including its replacement by a write.
    let mut ws = watch(
        &s,
        "f",
        json!({"type": "subscribe", "paths": ["/home/sprite/watched/b.txt"], "recursive": false}),
    )
    .await;
    assert_eq!(frame(&mut ws).await.unwrap()["type"], "subscribed");
    api.sh("f", "touch /home/sprite/watched/other").await;
    let (st, _) = write(
        &api,
        &[("path", "/home/sprite/watched/b.txt")],
        b"replaced".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let seen = until(&mut ws, |e| is(e, "/home/sprite/watched/b.txt", "write")).await;
    assert!(
        seen.iter()
            .all(|e| e["path"] == "/home/sprite/watched/b.txt"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn watch_refuses_paths_the_sprite_user_cannot_read() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("we").await;
    let mut ws = watch(
        &s,
        "we",
        json!({"type": "subscribe", "paths": ["/root"], "recursive": true, "workingDir": "/"}),
    )
    .await;
    let v = frame(&mut ws).await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("/root: Permission denied"),
        "{v}"
    );
    assert_eq!(
        frame(&mut ws).await,
        None,
        "nothing to watch: the socket closes"
    );

    // One bad path among good ones: an error for it, the rest is watched.
    let mut ws = watch(
        &s,
        "we",
        json!({"type": "subscribe", "paths": ["missing", "/tmp"], "workingDir": "/home/sprite"}),
    )
    .await;
    let v = frame(&mut ws).await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["path"], "/home/sprite/missing");
    let v = frame(&mut ws).await.unwrap();
    assert_eq!(v, json!({"type": "subscribed", "paths": ["/tmp"]}));

    let mut ws = watch(&s, "we", json!({"type": "hello"})).await;
    assert_eq!(frame(&mut ws).await.unwrap()["type"], "error");
    assert_eq!(frame(&mut ws).await, None);
}

/// A ustar header (checksum included).
fn tar_header(name: &str, kind: u8, size: u64, mode: u32, link: &str) -> Vec<u8> {
    fn put(h: &mut [u8], off: usize, s: &[u8]) {
        h[off..off + s.len()].copy_from_slice(s);
    }
    let mut h = vec![0u8; 512];
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0001750\0");
    put(&mut h, 116, b"0001750\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"14000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = kind;
    put(&mut h, 157, link.as_bytes());
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// An archive of (name, type flag, data, link target) entries.
fn tar_of(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        out.extend(tar_header(name, *kind, data.len() as u64, 0o644, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

async fn put_tar(
    api: &Api,
    sprite: &str,
    q: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let r = api
        .req(Method::PUT, &format!("/v1/sprites/{sprite}/fs/tar"))
        .query(q)
        .body(body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

async fn get_tar(api: &Api, sprite: &str, q: &[(&str, &str)]) -> reqwest::Response {
    api.req(Method::GET, &format!("/v1/sprites/{sprite}/fs/tar"))
        .query(q)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tar_round_trip_keeps_the_tree() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("t").await;
    let o = api
        .sh(
            "t",
            "cd /home/sprite && mkdir -p t/sub/deep t/empty && printf hello > t/a.txt && \
             printf '#!/bin/sh\\necho hi\\n' > t/sub/run.sh && chmod 755 t/sub/run.sh && \
             head -c 300000 /dev/urandom > t/sub/deep/blob && chmod 600 t/sub/deep/blob && \
             ln -s ../a.txt t/sub/link && chmod 750 t/empty",
        )
        .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    let r = get_tar(&api, "t", &[("path", "t"), ("workingDir", "/home/sprite")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let archive = r.bytes().await.unwrap().to_vec();
    let (st, v) = put_tar(
        &api,
        "t",
        &[("path", "copy"), ("workingDir", "/home/sprite")],
        archive.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let run_sh = "#!/bin/sh\necho hi\n".len() as u64;
    assert_eq!(
        v,
        json!({"path": "/home/sprite/copy", "files": 4, "bytes": 5 + run_sh + 300000})
    );
    let listing = "find . -printf '%P %y %m %u %l\\n' | sort; \
                   find . -type f -exec sha256sum {} + | sort";
    let orig = api
        .sh("t", &format!("cd /home/sprite/t && {listing}"))
        .await;
    let copy = api
        .sh("t", &format!("cd /home/sprite/copy && {listing}"))
        .await;
    assert_eq!(orig.stdout, copy.stdout);
    for line in [
        "sub/link l 777 sprite ../a.txt",
        "sub/run.sh f 755 sprite ",
        "sub/deep/blob f 600 sprite ",
        "empty d 750 sprite ",
    ] {
        assert!(copy.stdout.contains(line), "{line:?} in {}", copy.stdout);
    }

    // As root, extracted files belong to root; a single file travels under its own name.
    let (st, v) = put_tar(
        &api,
        "t",
        &[("path", "/opt/rootcopy"), ("asRoot", "true")],
        archive,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        api.exec("t", &["stat", "-c", "%U", "/opt/rootcopy/sub/deep/blob"])
            .await
            .stdout,
        "root\n"
    );
    let one = get_tar(&api, "t", &[("path", "/home/sprite/t/a.txt")])
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let (st, v) = put_tar(&api, "t", &[("path", "/tmp/single")], one).await;
    assert_eq!((st, v["files"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    assert_eq!(
        api.exec("t", &["cat", "/tmp/single/a.txt"]).await.stdout,
        "hello"
    );

    // Errors before the first byte come as JSON.
    let r = get_tar(&api, "t", &[("path", "/root")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["code"].as_str(), v["path"].as_str()),
        (Some("EACCES"), Some("/root"))
    );
    let r = get_tar(&api, "t", &[("path", "/nope")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tar_upload_never_escapes_its_directory() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("e").await;
    api.sh(
        "e",
        "mkdir -p /home/sprite/dst && ln -s /etc /home/sprite/dst/out",
    )
    .await;
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("parent", tar_of(&[("../escaped.txt", b'0', b"x", "")])),
        (
            "deeper parent",
            tar_of(&[("a/../../escaped.txt", b'0', b"x", "")]),
        ),
        ("absolute", tar_of(&[("/tmp/abs-evil", b'0', b"x", "")])),
        (
            "symlink to /etc",
            tar_of(&[("etc", b'2', b"", "/etc"), ("etc/evil", b'0', b"x", "")]),
        ),
        ("symlink up", tar_of(&[("up", b'2', b"", "../../..")])),
        ("hard link out", tar_of(&[("hl", b'1', b"", "/etc/passwd")])),
        (
            "through a symlink on disk",
            tar_of(&[("out/evil", b'0', b"x", "")]),
        ),
        ("device", tar_of(&[("null", b'3', b"", "")])),
    ];
    for (what, archive) in attempts {
        // As root, so only the containment checks stand in the way.
        let (st, v) = put_tar(
            &api,
            "e",
            &[("path", "/home/sprite/dst"), ("asRoot", "true")],
            archive,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["code"], "EINVAL", "{what}: {v}");
        assert!(v["error"].is_string() && v["path"].is_string(), "{v}");
    }
    let o = api
        .sh(
            "e",
            "for f in /home/sprite/escaped.txt /tmp/abs-evil /home/sprite/dst/tmp /etc/evil \
             /home/sprite/dst/etc /home/sprite/dst/up /home/sprite/dst/hl /home/sprite/dst/null; \
             do if test -e $f || test -L $f; then echo $f; fi; done",
        )
        .await;
    assert_eq!(o.stdout, "", "nothing was written");
    assert_eq!(
        api.sh("e", "ls -A /home/sprite/dst").await.stdout,
        "out\n",
        "only what was there before"
    );
}

#[tokio::test]
async fn tar_upload_respects_permissions() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("p").await;
    let archive = tar_of(&[("planted.txt", b'0', b"x", "")]);
    let (st, v) = put_tar(&api, "p", &[("path", "/etc")], archive.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES")),
        "{v}"
    );
    assert_eq!(v["path"], "/etc/planted.txt");
    let (st, v) = put_tar(&api, "p", &[("path", "/etc/newdir")], archive.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES")),
        "{v}"
    );
    assert_ne!(
        api.sh("p", "test -e /etc/planted.txt || test -e /etc/newdir")
            .await
            .code,
        Some(0),
        "nothing was written"
    );
    // Refused before the body was read: the answer still arrives while a large upload streams.
    let chunks = futures::stream::iter(0..32).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20]));
    let big =
        futures::stream::iter([Ok(tar_header("big", b'0', 32 << 20, 0o644, ""))]).chain(chunks);
    let r = api
        .req(Method::PUT, "/v1/sprites/p/fs/tar")
        .query(&[("path", "/etc/newdir")])
        .body(reqwest::Body::wrap_stream(big))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let chunks = futures::stream::iter(0..32).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20]));
    let r = api
        .req(Method::PUT, "/v1/sprites/p/fs/write")
        .query(&[("path", "/etc/big")])
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (st, _) = put_tar(&api, "p", &[("path", "/etc"), ("asRoot", "true")], archive).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        api.exec("p", &["stat", "-c", "%U", "/etc/planted.txt"])
            .await
            .stdout,
        "root\n"
    );
}

#[tokio::test]
async fn tar_streams_without_holding_the_archive() {
    const FILE: u64 = 100 << 20;
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let id = api.create("m").await["id"].as_str().unwrap().to_string();
    // Two 100 MiB files, generated as the upload goes.
    let parts = ["one.bin", "two.bin"].into_iter().flat_map(|name| {
        let head = futures::stream::iter([Ok::<_, std::io::Error>(tar_header(
            name, b'0', FILE, 0o644, "",
        ))]);
        let body =
            futures::stream::iter(0..FILE / (1 << 20)).map(|i| Ok(vec![(i % 251) as u8; 1 << 20]));
        [head.boxed(), body.boxed()]
    });
    let stream = futures::stream::iter(parts)
        .flatten()
        .chain(futures::stream::iter([Ok(vec![0u8; 1024])]));
    let r = api
        .req(Method::PUT, "/v1/sprites/m/fs/tar")
        .query(&[("path", "/home/sprite/big")])
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let st = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["files"].as_u64(), v["bytes"].as_u64()),
        (Some(2), Some(2 * FILE))
    );

    let mut body = get_tar(&api, "m", &[("path", "/home/sprite/big")])
        .await
        .bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        total += chunk.unwrap().len() as u64;
    }
    assert!(total > 2 * FILE, "the whole tree came back: {total}");
    let pid = s.agent_pid(&id).expect("the agent's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("VmHWM of the agent: {status}"));
    assert!(
        kib < 64 << 10,
        "the agent's peak memory stayed far below the 200 MiB moved: {kib} KiB"
    );
}

/// Concurrent writes to one path never mix: the file ends up whole, one writer's bytes.
#[tokio::test]
async fn concurrent_writes_to_one_path_do_not_mix() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("f").await;
    let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 4 << 20]).collect();
    let writes = bodies
        .iter()
        .map(|b| write(&api, &[("path", "/home/sprite/same.bin")], b.clone()));
    for (st, v) in futures::future::join_all(writes).await {
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let got = api
        .req(
            Method::GET,
            "/v1/sprites/f/fs/read?path=/home/sprite/same.bin",
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 4 << 20);
    assert!(
        bodies.iter().any(|b| b[..] == got[..]),
        "the file is one writer's bytes, not a mix"
    );
    let o = api
        .sh("f", "ls -a /home/sprite | grep -c sprite-write || true")
        .await;
    assert_eq!(o.stdout, "0\n", "no temporary files left: {o:?}");
}
