//! The Rust SDK against a real spritesd.

use std::time::Duration;

use sprites::{Client, Error};
use sprites_testing::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client(s: &TestServer) -> Client {
    Client::new(&s.token).base_url(&s.url)
}

#[tokio::test]
async fn crud_and_output() {
    let s = TestServer::start().unwrap();
    let c = client(&s);
    let sp = c.create_sprite("rs").await.unwrap();
    assert_eq!(sp.name, "rs");
    assert!(matches!(
        c.create_sprite("rs").await,
        Err(Error::Api { status: 409, .. })
    ));
    assert!(c.get_sprite("missing").await.unwrap_err().is_not_found());
    for i in 0..3 {
        c.create_sprite(&format!("page-{i}")).await.unwrap();
    }
    let page = c
        .list_sprites(&sprites::ListOptions {
            prefix: Some("page-".into()),
            max_results: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.has_more);
    assert_eq!(c.list_all_sprites(Some("page-")).await.unwrap().len(), 3);
    let handle = c.sprite("rs");
    assert_eq!(
        handle
            .set_url_auth("public")
            .await
            .unwrap()
            .url_settings
            .auth
            .as_deref(),
        Some("public")
    );

    let out = handle
        .command("echo", ["hi", "there"])
        .output()
        .await
        .unwrap();
    assert_eq!((out.stdout.as_slice(), out.code), (&b"hi there\n"[..], 0));
    let out = handle
        .command("sh", ["-c", "cat; echo err >&2; exit 4"])
        .stdin_bytes(b"in".to_vec())
        .env("X", "1")
        .current_dir("/tmp")
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"in");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.code, 4);
    assert!(!out.success());
    let big = handle
        .command("seq", ["1", "100000"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        big.stdout.len(),
        (1..=100000)
            .map(|i: u32| i.to_string().len() + 1)
            .sum::<usize>()
    );
    handle.delete().await.unwrap();
    assert!(handle.get().await.unwrap_err().is_not_found());
    let bad = Client::new("personal/a/b/c").base_url(&s.url);
    assert_eq!(
        bad.list_sprites(&Default::default())
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    let down = Client::new("x/y/z/w").base_url("http://127.0.0.1:9");
    assert!(matches!(
        down.get_sprite("a").await,
        Err(Error::Connect { .. })
    ));
}

#[tokio::test]
async fn spawn_streams_tty_and_sessions() {
    let s = TestServer::start().unwrap();
    let c = client(&s);
    c.create_sprite("st").await.unwrap();
    let h = c.sprite("st");

    // Non-TTY: streaming stdin and stdout.
    let mut child = h.command("tr", ["a-z", "A-Z"]).spawn().await.unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"streamed text\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut got = String::new();
    stdout.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "STREAMED TEXT\n");
    assert_eq!(child.wait().await.unwrap(), 0);

    // TTY with resize; detach; list; attach with replay; kill.
    let mut child = h
        .command("bash", Vec::<String>::new())
        .tty(100, 30)
        .spawn()
        .await
        .unwrap();
    assert!(child.tty);
    let id = child.session_id.clone();
    let mut out = child.stdout.take().unwrap();
    let mut input = child.stdin.take().unwrap();
    child.resize(77, 21).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    input
        .write_all(b"stty size; echo mark-$((1+1))\r")
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("mark-2") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), out.next_chunk())
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("21 77"), "{seen}");
    child.detach().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sessions = h.sessions().await.unwrap();
    assert!(
        sessions.iter().any(|x| x.id == id && x.tty && !x.exited),
        "{sessions:?}"
    );
    let mut again = h.attach(&id).await.unwrap();
    let mut out = again.stdout.take().unwrap();
    let mut replay = String::new();
    while !replay.contains("mark-2") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), out.next_chunk())
            .await
            .unwrap()
            .unwrap();
        replay.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = h.kill_session(&id, "SIGHUP", "5s").await.unwrap();
    assert_eq!(events.first().map(|e| e.kind.as_str()), Some("signal"));
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("complete"));
    assert_eq!(again.wait().await.unwrap(), 129);
    assert!(h.attach("987654").await.unwrap_err().is_not_found());
}
