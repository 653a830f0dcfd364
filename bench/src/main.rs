//! `sprites-bench`: figures for the walking skeleton, each beside its baseline, in one run.
//!
//! * sprite creation latency (p50/p95 over 20), base image already built;
//! * HTTP exec round trip of `true` (our length-prefixed framing and the official paced one)
//!   against a plain host fork/exec of `/bin/true`.
//!
//! Run with `cargo run --release -p sprites-bench` (as root; builds the image on first use).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sprites_testing::TestServer;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s = TestServer::start()?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);

    // Creation latency.
    let mut create = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .post(format!("{}/v1/sprites", s.url))
            .header("authorization", &auth)
            .json(&serde_json::json!({ "name": format!("bench-{i}") }))
            .send()
            .await?;
        ensure!(r.status() == 201, "create failed: {}", r.status());
        create.push(t.elapsed());
    }
    println!(
        "sprite create (n={n}): p50 {}  p95 {}",
        ms(pct(create.clone(), 0.5)),
        ms(pct(create, 0.95))
    );

    // Exec round trip of `true`.
    let url = format!("{}/v1/sprites/bench-0/exec?cmd=true", s.url);
    let mut ours = Vec::new();
    let mut paced = Vec::new();
    for i in 0..(n * 5 + 5) {
        let t = Instant::now();
        let body = http
            .post(&url)
            .header("authorization", &auth)
            .header("sprite-exec-framing", "length-prefixed")
            .send()
            .await?
            .bytes()
            .await?;
        let d = t.elapsed();
        ensure!(
            body.as_ref() == [3, 0, 0, 0, 1, 0],
            "unexpected exec body {body:?}"
        );
        if i >= 5 {
            ours.push(d);
        }
    }
    for _ in 0..n {
        let t = Instant::now();
        let body = http
            .post(&url)
            .header("authorization", &auth)
            .send()
            .await?
            .bytes()
            .await?;
        ensure!(body.as_ref() == [3, 0], "unexpected exec body {body:?}");
        paced.push(t.elapsed());
    }
    let mut host = Vec::new();
    for _ in 0..(n * 5) {
        let t = Instant::now();
        let st = std::process::Command::new("/bin/true").status()?;
        ensure!(st.success());
        host.push(t.elapsed());
    }
    let (o50, h50) = (pct(ours.clone(), 0.5), pct(host.clone(), 0.5));
    println!(
        "exec `true` over HTTP (our framing, n={}): p50 {}  p95 {}",
        ours.len(),
        ms(o50),
        ms(pct(ours, 0.95))
    );
    println!(
        "exec `true` over HTTP (official paced framing, n={n}): p50 {}  p95 {}",
        ms(pct(paced.clone(), 0.5)),
        ms(pct(paced, 0.95))
    );
    println!(
        "host fork/exec /bin/true (n={}): p50 {}  p95 {}",
        host.len(),
        ms(h50),
        ms(pct(host, 0.95))
    );
    println!(
        "ratio exec/fork-exec (p50): {:.1}x",
        o50.as_secs_f64() / h50.as_secs_f64()
    );
    Ok(())
}
