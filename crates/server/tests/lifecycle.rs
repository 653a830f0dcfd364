//! Sprites that sleep and wake: idle → warm (frozen) → cold (stopped), transparent wakes,
//! tasks holding a sprite awake (issue: lifecycle).

mod common;

use std::time::{Duration, Instant};

use common::{Api, TestServer};
use reqwest::Method;

const FAST: &[&str] = &[
    "--warm-after",
    "600ms",
    "--cold-after",
    "3s",
    "--idle-tick",
    "100ms",
];

async fn status(api: &Api, name: &str) -> String {
    let (_, v) = api
        .json(Method::GET, &format!("/v1/sprites/{name}"), None)
        .await;
    v["status"].as_str().unwrap_or_default().to_string()
}

async fn wait_status(api: &Api, name: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let st = status(api, name).await;
        if st == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {st}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_goes_warm_then_cold_and_wakes_on_exec() {
    let s = TestServer::start_with(FAST).unwrap();
    let api = Api::new(&s);
    api.create("sleepy").await;
    api.sh("sleepy", "echo kept > ~/f").await;
    wait_status(&api, "sleepy", "warm", Duration::from_secs(10)).await;
    let (_, v) = api.json(Method::GET, "/v1/sprites/sleepy", None).await;
    assert!(v["last_warming_at"].is_string(), "{v}");
    // Warm wake: the same processes, thawed.
    let o = api.exec("sleepy", &["cat", "/home/sprite/f"]).await;
    assert_eq!(o.stdout, "kept\n");
    wait_status(&api, "sleepy", "warm", Duration::from_secs(10)).await;
    wait_status(&api, "sleepy", "cold", Duration::from_secs(15)).await;
    assert!(
        s.sprite_pids().is_empty(),
        "a cold sprite has no process left"
    );
    // Cold wake: booted again, disk intact.
    let o = api.exec("sleepy", &["cat", "/home/sprite/f"]).await;
    assert_eq!(o.stdout, "kept\n");
    assert_eq!(status(&api, "sleepy").await, "running");
}

#[tokio::test]
async fn frozen_processes_resume_where_they_stopped() {
    // Long cold_after: this test needs the sprite to stay warm, even on a loaded machine.
    let s = TestServer::start_with(&[
        "--warm-after",
        "600ms",
        "--cold-after",
        "5m",
        "--idle-tick",
        "100ms",
    ])
    .unwrap();
    let api = Api::new(&s);
    api.create("counter").await;
    // A loop that logs a counter and the time, detached from any exec session.
    api.exec(
        "counter",
        &["bash", "-c", "setsid bash -c 'i=0; while true; do i=$((i+1)); echo \"$i $(date +%s%N)\" >> /tmp/log; sleep 0.05; done' >/dev/null 2>&1 < /dev/null &"],
    )
    .await;
    wait_status(&api, "counter", "warm", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Wake it, give the loop time to write again, then read the log.
    api.exec("counter", &["true"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = api.exec("counter", &["cat", "/tmp/log"]).await;
    let rows: Vec<(u64, u128)> = o
        .stdout
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert!(rows.len() > 5, "{o:?}");
    for w in rows.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "the counter never restarted");
    }
    let longest_gap_ms = rows
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / 1_000_000)
        .max()
        .unwrap();
    let span_ms = (rows.last().unwrap().1 - rows[0].1) / 1_000_000;
    assert!(
        longest_gap_ms >= 1000,
        "no pause seen in the log (longest gap {longest_gap_ms} ms, {} rows over {span_ms} ms)\n{}",
        rows.len(),
        s.log()
    );
}

#[tokio::test]
async fn tasks_hold_a_sprite_awake() {
    let s = TestServer::start_with(FAST).unwrap();
    let api = Api::new(&s);
    api.create("busy").await;
    let curl = |args: &str| format!("curl -sS --unix-socket /.sprite/api.sock {args}");
    let o = api.sh("busy", &curl("-w ' %{http_code}' -H 'Content-Type: application/json' -X POST http://sprite/v1/tasks -d '{\"name\":\"agent\",\"expire\":\"1h\"}'")).await;
    assert!(o.stdout.ends_with(" 201"), "{o:?}");
    let o = api.sh("busy", &curl("-w ' %{http_code}' -X POST http://sprite/v1/tasks -d '{\"name\":\"agent\",\"expire\":60}'")).await;
    assert!(o.stdout.ends_with(" 409"), "{o:?}");
    let o = api.sh("busy", &curl("http://sprite/v1/tasks")).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["tasks"][0]["name"], "agent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(&api, "busy").await,
        "running",
        "a live task keeps the sprite running"
    );
    let o = api
        .sh(
            "busy",
            &curl("-w '%{http_code}' -X DELETE http://sprite/v1/tasks/agent"),
        )
        .await;
    assert_eq!(o.stdout, "204");
    wait_status(&api, "busy", "warm", Duration::from_secs(10)).await;
    // Expiry releases the hold by itself.
    let o = api
        .sh(
            "busy",
            &curl(
                "-w ' %{http_code}' -X PUT http://sprite/v1/tasks/short -d '{\"expire\":\"2s\"}'",
            ),
        )
        .await;
    assert!(o.stdout.ends_with(" 200"), "{o:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(&api, "busy").await, "running");
    wait_status(&api, "busy", "warm", Duration::from_secs(10)).await;
    let o = api
        .sh(
            "busy",
            &curl("-w '%{http_code}' http://sprite/v1/tasks/short"),
        )
        .await;
    assert!(o.stdout.ends_with("404"), "{o:?}");
    let o = api.sh("busy", &curl("-w ' %{http_code}' -X POST http://sprite/v1/tasks -d '{\"name\":\"long\",\"expire\":\"2h\"}'")).await;
    assert!(o.stdout.ends_with(" 400"), "{o:?}");
}

#[tokio::test]
async fn an_attached_session_keeps_the_sprite_running() {
    let s = TestServer::start_with(FAST).unwrap();
    let api = Api::new(&s);
    api.create("held").await;
    // A streaming HTTP exec holds the sprite for as long as it runs.
    let o = api.sh("held", "sleep 2; echo done").await;
    assert_eq!(o.stdout, "done\n");
    let (_, v) = api.json(Method::GET, "/v1/sprites/held", None).await;
    assert!(
        v["last_warming_at"].is_null(),
        "went warm during an exec: {v}"
    );
    wait_status(&api, "held", "warm", Duration::from_secs(10)).await;
}

/// Agents that never answer (a hostile guest can make its agent do that) cost their own
/// sprites their sleep, not everyone's: the idle detector looks at sprites concurrently, so
/// a quiet sprite still goes warm on time while three silent agents time out.
#[tokio::test]
async fn silent_agents_do_not_hold_back_other_sprites_sleep() {
    let s = TestServer::start_with(FAST).unwrap();
    let api = Api::new(&s);
    let mut stopped = Vec::new();
    for i in 0..3 {
        let id = api.create(&format!("silent{i}")).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let pid = s.agent_pid(&id).expect("the agent's pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
        stopped.push(pid);
    }
    api.create("quiet").await;
    // Before, each pass waited 2 s for every silent agent in turn.
    wait_status(&api, "quiet", "warm", Duration::from_secs(3)).await;
    for pid in stopped {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT);
    }
}
