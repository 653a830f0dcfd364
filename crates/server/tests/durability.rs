//! Files and tokens survive sprite restarts and `kill -9` of the server.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn survives_kill9_restart_and_sprite_restart() {
    let mut s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("keep").await;
    api.sh("keep", "echo before > ~/data && sync").await;

    s.kill9();
    assert!(!s.sprite_pids().is_empty(), "sprites outlive the server");
    s.restart().unwrap();
    // A fresh client: pooled connections died with the old server.
    let api = Api::new(&s);
    let o = api.exec("keep", &["cat", "/home/sprite/data"]).await;
    assert_eq!(o.stdout, "before\n", "sprite adopted after restart: {o:?}");
    let (st, v) = api.json(Method::GET, "/v1/sprites/keep", None).await;
    assert_eq!(st, StatusCode::OK, "token and record survive kill -9");
    assert_eq!(v["status"], "running");

    // Stop and boot the sprite: the disk is kept, processes are not.
    api.sh("keep", "echo more >> ~/data; (sleep 1000 &)").await;
    let r = api
        .req(Method::POST, "/v1/sprites/keep/restart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let o = api.sh("keep", "cat ~/data; pgrep -c sleep || true").await;
    assert_eq!(o.stdout, "before\nmore\n0\n");

    // Kill everything (server and sprite) as a crash would; the disk still holds the data.
    s.kill9();
    for pid in s.sprite_pids() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.sprite_pids().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s.restart().unwrap();
    let api = Api::new(&s);
    let (_, v) = api.json(Method::GET, "/v1/sprites/keep", None).await;
    assert_eq!(
        v["status"], "cold",
        "a sprite whose processes died is cold: {v}"
    );
    let o = api.exec("keep", &["cat", "/home/sprite/data"]).await;
    assert_eq!(
        o.stdout, "before\nmore\n",
        "exec wakes a cold sprite with its disk"
    );

    // SIGTERM is a clean exit.
    assert!(s.terminate().unwrap(), "graceful shutdown exits 0");
}
