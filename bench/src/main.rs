//! `sprites-bench`: figures for the walking skeleton, each beside its baseline, in one run.
//!
//! * sprite creation latency (p50/p95 over 20), base image already built;
//! * HTTP exec round trip of `true` (our length-prefixed framing and the official paced one)
//!   against a plain host fork/exec of `/bin/true`.
//!
//! * WebSocket exec round trip of `true` against the same host fork/exec;
//! * streaming throughput of `cat` of 1 GiB through a session against `cat` of the same file
//!   on the host into a pipe.
//!
//! * `lifecycle`: warm-wake and cold-wake latency (first exec byte after the wake) beside the
//!   same exec on a running sprite, and host memory of 100 idle sprites, warm and cold.
//!
//! * `network`: TCP throughput and round trip through `sprite proxy` against a direct
//!   loopback connection to the same server program, and sprite URL request latency against
//!   the same request sent straight to the server program on the host.
//!
//! * `storage`: checkpoint and restore time for 1 GiB written and for 10 MiB changed after it;
//!   filesystem API write/read of 256 MiB against `cp` on the host.
//!
//! * `backends`: create-to-first-exec and warm wake on each backend (namespace; microVM on
//!   KVM where real, else TCG), host memory per idle microVM.
//!
//! * `gateway`: a small GET through the Connectors gateway against the same GET straight to
//!   the provider from inside a sprite, and a 1 GiB streamed response both ways.
//!
//! * `mcp`: an MCP `tools/call` of `exec` running `true` against the REST HTTP exec of it.
//!
//! * `density`: create, warm wake and exec, and host processes and memory per idle sprite,
//!   at 10, 100 and 1,000 sprites (`BENCH_DENSITY=10,100` for fewer), ratios to the first.
//!
//! * `image`: base image build from nothing, cached and with one layer more, size on disk,
//!   and create-to-first-exec of the full profile against the slim one.
//!
//! Run with `cargo run --release -p sprites-bench [exec|lifecycle|sessions|network|storage|backends|gateway|mcp|image|density|all]` (as root; builds the
//! image on first use).
//! `BENCH_N` sets the sample count, `BENCH_CAT_MIB` the size of the streamed file.

mod backends;
mod density;
mod gateway;
mod image;
mod mcp;
mod storage;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use sprites_testing::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

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
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if which == "relay" {
        // Internal: a plain TCP relay process, the floor of any relaying hop (see network).
        let mut args = std::env::args().skip(2);
        let (listen, target) = (
            args.next().unwrap_or_default(),
            args.next().unwrap_or_default(),
        );
        return plain_relay(&listen, &target).await;
    }
    if which == "all" || which == "exec" {
        exec_benches().await?;
    }
    if which == "all" || which == "lifecycle" {
        lifecycle_benches().await?;
    }
    if which == "all" || which == "sessions" {
        session_benches().await?;
    }
    if which == "all" || which == "network" {
        network_benches().await?;
    }
    if which == "all" || which == "storage" {
        storage::storage_benches().await?;
    }
    if which == "all" || which == "backends" {
        backends::backend_benches().await?;
    }
    if which == "all" || which == "gateway" {
        gateway::gateway_benches().await?;
    }
    if which == "all" || which == "mcp" {
        mcp::mcp_benches().await?;
    }
    if which == "all" || which == "image" {
        image::image_benches().await?;
    }
    // Not in "all": a thousand sprites take minutes and most of a small host.
    if which == "density" {
        density::density_benches().await?;
    }
    Ok(())
}

/// Creation and exec latency, WebSocket exec and streaming throughput.
async fn exec_benches() -> Result<()> {
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
        "sprite create, back to back (n={n}): p50 {}  p95 {}",
        ms(pct(create.clone(), 0.5)),
        ms(pct(create, 0.95))
    );
    // Spaced out, as people create sprites: the pre-built network pool has refilled.
    let mut spaced = Vec::new();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let r = http
            .post(format!("{}/v1/sprites", s.url))
            .header("authorization", &auth)
            .json(&serde_json::json!({ "name": format!("spaced-{i}") }))
            .send()
            .await?;
        ensure!(r.status() == 201, "create failed: {}", r.status());
        spaced.push(t.elapsed());
    }
    println!(
        "sprite create, 200 ms apart (n={n}): p50 {}  p95 {}",
        ms(pct(spaced.clone(), 0.5)),
        ms(pct(spaced, 0.95))
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
    ws_benches(&s, &http, &auth, n, h50).await
}

/// WebSocket exec round trip and streaming throughput, beside their host baselines.
async fn ws_benches(
    s: &TestServer,
    http: &reqwest::Client,
    auth: &str,
    n: usize,
    h50: Duration,
) -> Result<()> {
    let mut wsd = Vec::new();
    for i in 0..(n * 5 + 5) {
        let t = Instant::now();
        let (mut ws, _) = ws_connect(s, "/v1/sprites/bench-0/exec?cmd=true").await?;
        let mut exit = None;
        while let Some(m) = ws.next().await {
            match m? {
                Message::Binary(b) if b.first() == Some(&3) => exit = b.get(1).copied(),
                Message::Close(_) => break,
                _ => {}
            }
        }
        ensure!(exit == Some(0), "ws exec of true failed");
        if i >= 5 {
            wsd.push(t.elapsed());
        }
    }
    let w50 = pct(wsd.clone(), 0.5);
    println!(
        "exec `true` over WebSocket (n={}): p50 {}  p95 {}  ratio to fork/exec {:.1}x",
        wsd.len(),
        ms(w50),
        ms(pct(wsd, 0.95)),
        w50.as_secs_f64() / h50.as_secs_f64()
    );

    let mib: u64 = std::env::var("BENCH_CAT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let out = http
        .post(format!("{}/v1/sprites/bench-0/exec", s.url))
        .query(&[
            ("cmd", "sh"),
            ("cmd", "-c"),
            ("cmd", &format!("head -c {mib}M /dev/zero > /tmp/big")),
        ])
        .header("authorization", auth)
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(out.ends_with(&[3, 0]), "making the file failed");
    let t = Instant::now();
    let (mut ws, _) = ws_connect(s, "/v1/sprites/bench-0/exec?cmd=cat&cmd=/tmp/big").await?;
    let mut got: u64 = 0;
    while let Some(m) = ws.next().await {
        match m? {
            Message::Binary(b) if b.first() == Some(&1) => got += b.len() as u64 - 1,
            Message::Close(_) => break,
            _ => {}
        }
    }
    let sprite_secs = t.elapsed().as_secs_f64();
    ensure!(
        got == mib << 20,
        "streamed {got} bytes, wanted {}",
        mib << 20
    );

    // The CLI into a pipe, as `sprite exec cat big | consumer` runs.
    let cli = sprites_testing::bin_dir().join("sprite");
    let st = std::process::Command::new(&cli)
        .env("HOME", &s.home)
        .env("SPRITES_API_URL", &s.url)
        .args(["auth", "setup", "--token", &s.token])
        .output()?;
    ensure!(st.status.success(), "auth setup failed");
    let t = Instant::now();
    let mut child = std::process::Command::new(&cli)
        .env("HOME", &s.home)
        .env("SPRITES_API_URL", &s.url)
        .args(["exec", "-s", "bench-0", "--", "cat", "/tmp/big"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let cli_got = drain_stdout(&mut child)?;
    ensure!(child.wait()?.success(), "sprite exec cat failed");
    let cli_secs = t.elapsed().as_secs_f64();
    ensure!(cli_got == mib << 20, "the CLI streamed {cli_got} bytes");

    let host_file = s.data_dir.join("big");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&host_file)?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&block)?;
        }
    }
    let t = Instant::now();
    let mut child = std::process::Command::new("cat")
        .arg(&host_file)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let host_got = drain_stdout(&mut child)?;
    child.wait()?;
    let host_secs = t.elapsed().as_secs_f64();
    ensure!(host_got == mib << 20);
    let _ = std::fs::remove_file(&host_file);
    let rate = |secs: f64| mib as f64 / secs;

    // The official HTTP form (no length prefix): unpaced for a client that reads bytes (curl's
    // User-Agent), paced for a fetch-style reader (no User-Agent here), on 16 MiB (it is slow).
    let official = |ua: Option<&'static str>, cmd: String| {
        let mut r = http
            .post(format!("{}/v1/sprites/bench-0/exec", s.url))
            .query(&[("cmd", "sh"), ("cmd", "-c"), ("cmd", &cmd)])
            .header("authorization", auth);
        if let Some(ua) = ua {
            r = r.header("user-agent", ua);
        }
        async move {
            let t = Instant::now();
            let mut body = r.send().await?.bytes_stream();
            let mut zeros = 0u64;
            while let Some(c) = body.next().await {
                zeros += c?.iter().filter(|b| **b == 0).count() as u64;
            }
            anyhow::Ok((zeros, t.elapsed().as_secs_f64()))
        }
    };
    let (zeros, bytes_secs) = official(Some("curl/8.5.0"), "cat /tmp/big".into()).await?;
    ensure!(
        zeros == (mib << 20) + 1,
        "official form carried {zeros} zero bytes"
    );
    let paced_mib = 16u64.min(mib);
    let (zeros, paced_secs) = official(None, format!("head -c {paced_mib}M /tmp/big")).await?;
    ensure!(
        zeros == (paced_mib << 20) + 1,
        "paced form carried {zeros} zero bytes"
    );
    println!(
        "cat {mib} MiB over HTTP, official framing, a byte reader (curl's User-Agent): {:.0} MiB/s, ratio {:.3} of a host pipe; a fetch-style reader (paced, {paced_mib} MiB): {:.2} MiB/s, ratio {:.4}",
        rate(bytes_secs),
        rate(bytes_secs) / rate(host_secs),
        paced_mib as f64 / paced_secs,
        paced_mib as f64 / paced_secs / rate(host_secs)
    );
    println!(
        "cat {mib} MiB through a WebSocket session: {:.0} MiB/s; host cat into a pipe: {:.0} MiB/s; ratio {:.2}",
        rate(sprite_secs),
        rate(host_secs),
        rate(sprite_secs) / rate(host_secs)
    );
    println!(
        "cat {mib} MiB by `sprite exec` into a pipe: {:.0} MiB/s; ratio {:.2} of the WebSocket session, {:.2} of a host pipe",
        rate(cli_secs),
        rate(cli_secs) / rate(sprite_secs),
        rate(cli_secs) / rate(host_secs)
    );
    Ok(())
}

/// Reads a child's stdout to its end, as a consumer in a pipe would; the bytes read.
fn drain_stdout(child: &mut std::process::Child) -> Result<u64> {
    use std::io::Read;
    let mut so = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let k = so.read(&mut buf)?;
        if k == 0 {
            return Ok(got);
        }
        got += k as u64;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(s: &TestServer, path: &str) -> Result<(Ws, serde_json::Value)> {
    let url = format!("{}{path}", s.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", s.token).parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let info = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
        other => anyhow::bail!("no session_info: {other:?}"),
    };
    Ok((ws, info))
}

/// Time to the first byte of an exec's output (our framing), from the request.
async fn first_byte(http: &reqwest::Client, url: &str, auth: &str) -> Result<Duration> {
    use futures::StreamExt as _;
    let t = Instant::now();
    let resp = http
        .post(url)
        .header("authorization", auth)
        .header("sprite-exec-framing", "length-prefixed")
        .send()
        .await?;
    ensure!(resp.status() == 200, "exec failed: {}", resp.status());
    let mut body = resp.bytes_stream();
    let first = body.next().await.transpose()?;
    let d = t.elapsed();
    ensure!(first.is_some(), "no output");
    while body.next().await.is_some() {}
    Ok(d)
}

/// `POST /v1/sprites` of `name`; an error unless it is created.
async fn create_sprite(
    http: &reqwest::Client,
    s: &TestServer,
    auth: &str,
    name: &str,
) -> Result<()> {
    let r = http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", auth)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await?;
    let status = r.status();
    ensure!(
        status == 201,
        "create {name}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

async fn status(http: &reqwest::Client, s: &TestServer, auth: &str, name: &str) -> Result<String> {
    let v: serde_json::Value = http
        .get(format!("{}/v1/sprites/{name}", s.url))
        .header("authorization", auth)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["status"].as_str().unwrap_or_default().to_string())
}

async fn wait_for(
    http: &reqwest::Client,
    s: &TestServer,
    auth: &str,
    name: &str,
    want: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(http, s, auth, name).await? != want {
        ensure!(Instant::now() < deadline, "{name} never became {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Bytes the sprites of a server hold in memory, from their memory cgroups.
fn sprite_memory(s: &TestServer) -> u64 {
    let instance = sprites_testing::instance_name(&s.data_dir);
    let (dir, file) = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        (
            format!("/sys/fs/cgroup/sprites/{instance}"),
            "memory.current",
        )
    } else {
        (
            format!("/sys/fs/cgroup/memory/sprites/{instance}"),
            "memory.usage_in_bytes",
        )
    };
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join(file)).ok())
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Warm and cold wake latency; memory of 100 idle sprites.
async fn lifecycle_benches() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s = TestServer::start_with(&[
        "--warm-after",
        "150ms",
        "--cold-after",
        "400ms",
        "--idle-tick",
        "20ms",
    ])?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    create_sprite(&http, &s, &auth, "wake").await?;
    let url = format!("{}/v1/sprites/wake/exec?cmd=echo&cmd=x", s.url);
    let (mut hot, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        hot.push(first_byte(&http, &url, &auth).await?);
        wait_for(&http, &s, &auth, "wake", "warm").await?;
        warm.push(first_byte(&http, &url, &auth).await?);
        wait_for(&http, &s, &auth, "wake", "cold").await?;
        cold.push(first_byte(&http, &url, &auth).await?);
    }
    let line = |what: &str, v: &Vec<Duration>| {
        println!(
            "{what} (n={}): p50 {}  p95 {}",
            v.len(),
            ms(pct(v.clone(), 0.5)),
            ms(pct(v.clone(), 0.95))
        )
    };
    line("exec first byte, running sprite", &hot);
    line("exec first byte after warm wake", &warm);
    line("exec first byte after cold wake", &cold);
    println!(
        "wake overhead over a running sprite (p50): warm +{}, cold +{}",
        ms(pct(warm, 0.5).saturating_sub(pct(hot.clone(), 0.5))),
        ms(pct(cold, 0.5).saturating_sub(pct(hot, 0.5)))
    );
    drop(s);

    // 100 idle sprites: memory while warm (frozen, kept) and cold (none).
    let s = TestServer::start_with(&[
        "--warm-after",
        "300ms",
        "--cold-after",
        "1h",
        "--idle-tick",
        "50ms",
    ])?;
    let auth = format!("Bearer {}", s.token);
    let t = Instant::now();
    for i in 0..100 {
        create_sprite(&http, &s, &auth, &format!("idle-{i}")).await?;
    }
    let made = t.elapsed();
    for i in 0..100 {
        wait_for(&http, &s, &auth, &format!("idle-{i}"), "warm").await?;
    }
    let warm_bytes = sprite_memory(&s);
    println!(
        "100 sprites created in {:.2} s; all warm: {:.1} MiB in their cgroups ({:.2} MiB per sprite)",
        made.as_secs_f64(),
        warm_bytes as f64 / 1048576.0,
        warm_bytes as f64 / 1048576.0 / 100.0
    );
    drop(s);
    let s = TestServer::start_with(&[
        "--warm-after",
        "100ms",
        "--cold-after",
        "200ms",
        "--idle-tick",
        "50ms",
    ])?;
    let auth = format!("Bearer {}", s.token);
    for i in 0..100 {
        create_sprite(&http, &s, &auth, &format!("idle-{i}")).await?;
    }
    for i in 0..100 {
        wait_for(&http, &s, &auth, &format!("idle-{i}"), "cold").await?;
    }
    println!(
        "100 sprites, all cold: {} processes, {:.1} MiB in cgroups",
        s.sprite_pids().len(),
        sprite_memory(&s) as f64 / 1048576.0
    );
    Ok(())
}

/// A small TCP server (Python, same program in the sprite and on the host): `s` = sink until
/// EOF then reply with the byte count, `p` = echo one byte per request.
const TCP_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mode = c.recv(1)
    if mode == b"s":
        n = 0
        while True:
            d = c.recv(1 << 20)
            if not d or d.endswith(b"\xff"):
                n += len(d); break
            n += len(d)
        c.sendall(str(n).encode())
    else:
        while True:
            d = c.recv(1)
            if not d: break
            c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Sends `mib` MiB and waits for the count; then `n` one-byte round trips. (MiB/s, RTT p50)
async fn tcp_figures(addr: &str, mib: usize, n: usize) -> Result<(f64, Duration)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    c.write_all(b"s").await?;
    let block = vec![0u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..mib {
        c.write_all(&block).await?;
    }
    c.write_all(&[0xff]).await?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).await?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        reply.trim().parse::<usize>()? == (mib << 20) + 1,
        "sink counted {reply}"
    );
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    c.write_all(b"p").await?;
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(b"x").await?;
        c.read_exact(&mut b).await?;
        rtts.push(t.elapsed());
    }
    Ok((mib as f64 / secs, pct(rtts, 0.5)))
}

/// Accepts on `listen` and relays each connection to `target` with the same buffer sizes as
/// spritesd and the CLI use, and nothing else.
async fn plain_relay(listen: &str, target: &str) -> Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (mut a, _) = l.accept().await?;
        let target = target.to_string();
        tokio::spawn(async move {
            if let Ok(mut b) = tokio::net::TcpStream::connect(&target).await {
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 << 10, 256 << 10)
                        .await;
            }
        });
    }
}

async fn wait_port(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        ensure!(Instant::now() < deadline, "{addr} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A helper process, killed when this goes out of scope (also on an early error return).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Uploads `mib` MiB to the counting server on `port` in sprite `name` through the proxy's
/// WebSocket protocol (spec §5) and checks the count. MiB/s.
async fn ws_upload(s: &TestServer, name: &str, port: u16, mib: usize) -> Result<f64> {
    use futures::SinkExt;
    let url = format!(
        "{}/v1/sprites/{name}/proxy",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", s.token).parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let init = serde_json::json!({"host": "localhost", "port": port});
    ws.send(Message::Text(init.to_string().into())).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("connected") => {}
        other => anyhow::bail!("proxy handshake: {other:?}"),
    }
    let block = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let t = Instant::now();
    ws.send(Message::Binary(bytes::Bytes::from_static(b"s")))
        .await?;
    for _ in 0..mib {
        ws.feed(Message::Binary(block.clone())).await?;
    }
    ws.send(Message::Binary(bytes::Bytes::from_static(&[0xff])))
        .await?;
    let mut reply = Vec::new();
    while let Some(m) = ws.next().await {
        match m? {
            Message::Binary(b) => reply.extend_from_slice(&b),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let count: usize = String::from_utf8_lossy(&reply).trim().parse()?;
    ensure!(count == (mib << 20) + 1, "sink counted {count}");
    Ok(mib as f64 / secs)
}

/// Proxy throughput and round trip vs direct loopback; URL latency vs direct HTTP.
async fn network_benches() -> Result<()> {
    let mib: usize = std::env::var("BENCH_PROXY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        * 50;
    let s = TestServer::start()?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let r = http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"name": "net"}))
        .send()
        .await?;
    ensure!(r.status() == 201);
    // The same server program in the sprite and on the host.
    let script = TCP_SERVER.replace('"', "\\\"");
    let start = format!("printf '%s' \"{script}\" > /tmp/srv.py; setsid python3 /tmp/srv.py 7000 >/dev/null 2>&1 </dev/null & setsid python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &");
    let r = http
        .post(format!("{}/v1/sprites/net/exec", s.url))
        .query(&[("cmd", "bash"), ("cmd", "-c"), ("cmd", start.as_str())])
        .header("authorization", &auth)
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(r.ends_with(&[3, 0]), "starting the servers failed");
    let host_port = free_port()?;
    let host_file = s.data_dir.join("srv.py");
    std::fs::write(&host_file, TCP_SERVER)?;
    let _host_srv = Reaped(
        std::process::Command::new("python3")
            .arg(&host_file)
            .arg(host_port.to_string())
            .spawn()?,
    );
    let host_http_port = free_port()?;
    let _host_http = Reaped(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &host_http_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&s.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    // `sprite proxy` itself.
    let home = s.home.clone();
    let cli = sprites_testing::bin_dir().join("sprite");
    let st = std::process::Command::new(&cli)
        .env("HOME", &home)
        .env("SPRITES_API_URL", &s.url)
        .args(["auth", "setup", "--token", &s.token])
        .output()?;
    ensure!(st.status.success(), "auth setup failed");
    let local = free_port()?;
    let _proxy = Reaped(
        std::process::Command::new(&cli)
            .env("HOME", &home)
            .env("SPRITES_API_URL", &s.url)
            .args(["proxy", "-s", "net", &format!("{local}:7000")])
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let direct_addr = format!("127.0.0.1:{host_port}");
    let proxy_addr = format!("127.0.0.1:{local}");
    wait_port(&direct_addr).await?;
    wait_port(&proxy_addr).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (dt, drtt) = tcp_figures(&direct_addr, mib, n).await?;
    let (pt, prtt) = tcp_figures(&proxy_addr, mib, n).await?;
    println!("TCP {mib} MiB upload: through sprite proxy {pt:.0} MiB/s, direct loopback {dt:.0} MiB/s, ratio {:.2}", pt / dt);
    // The floor of the design: `sprite proxy` and the front door are two relaying processes
    // however little they do. Two plain relay processes, on the same cores, in the same run.
    let me = std::env::current_exe()?;
    let (r1, r2) = (free_port()?, free_port()?);
    let mut relays = Vec::new();
    for (listen, target) in [
        (r2, format!("127.0.0.1:{host_port}")),
        (r1, format!("127.0.0.1:{r2}")),
    ] {
        relays.push(Reaped(
            std::process::Command::new(&me)
                .args(["relay", &format!("127.0.0.1:{listen}"), &target])
                .spawn()?,
        ));
    }
    wait_port(&format!("127.0.0.1:{r1}")).await?;
    let (rt, _) = tcp_figures(&format!("127.0.0.1:{r1}"), mib, n).await?;
    drop(relays);
    println!("TCP {mib} MiB upload through two plain relay processes (nothing but copying): {rt:.0} MiB/s, ratio {:.2} of loopback; sprite proxy reaches {:.2} of that", rt / dt, pt / rt);
    let wt = ws_upload(&s, "net", 7000, mib).await?;
    println!("TCP {mib} MiB upload over the proxy's WebSocket protocol (as the official SDKs speak it), from this process: {wt:.0} MiB/s, ratio {:.2} of loopback", wt / dt);
    println!("TCP 1-byte round trip (n={n}, p50): through sprite proxy {}, direct loopback {}, ratio {:.1}x", ms(prtt), ms(drtt), prtt.as_secs_f64() / drtt.as_secs_f64());

    // Sprite URL latency vs the same request straight to a host server.
    let r = http
        .put(format!("{}/v1/sprites/net", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"url_settings": {"auth": "public"}}))
        .send()
        .await?;
    ensure!(r.status() == 200);
    let sprite: serde_json::Value = r.json().await?;
    let host = sprite["url"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://")?.split(':').next())
        .context("the sprite's URL")?
        .to_string();
    let host = host.as_str();
    let addr: std::net::SocketAddr = s.url.trim_start_matches("http://").parse()?;
    let url_client = reqwest::Client::builder().resolve(host, addr).build()?;
    let sprite_url = format!("http://{host}:{}/", addr.port());
    let direct_url = format!("http://127.0.0.1:{host_http_port}/");
    wait_port(&format!("127.0.0.1:{host_http_port}")).await?;
    let mut u = Vec::new();
    let mut d = Vec::new();
    for i in 0..(n / 5 + 5) {
        let t = Instant::now();
        let r = url_client.get(&sprite_url).send().await?;
        ensure!(r.status() == 200, "sprite URL answered {}", r.status());
        r.bytes().await?;
        let a = t.elapsed();
        let t = Instant::now();
        http.get(&direct_url).send().await?.bytes().await?;
        let b = t.elapsed();
        if i >= 5 {
            u.push(a);
            d.push(b);
        }
    }
    println!(
        "HTTP GET / (n={}, p50/p95): sprite URL {} / {}, direct on the host {} / {}",
        u.len(),
        ms(pct(u.clone(), 0.5)),
        ms(pct(u, 0.95)),
        ms(pct(d.clone(), 0.5)),
        ms(pct(d, 0.95))
    );
    Ok(())
}

/// Listing 1,000 live sessions in one sprite.
async fn session_benches() -> Result<()> {
    let count: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = TestServer::start()?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let r = http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"name": "many"}))
        .send()
        .await?;
    ensure!(r.status() == 201);
    let t = Instant::now();
    for _ in 0..count {
        // TTY sessions outlive their client: open, read session_info, leave.
        let (ws, _) = ws_connect(&s, "/v1/sprites/many/exec?cmd=sleep&cmd=3600&tty=true").await?;
        drop(ws);
    }
    let made = t.elapsed();
    let url = format!("{}/v1/sprites/many/exec", s.url);
    let mut times = Vec::new();
    let mut listed = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let v: serde_json::Value = http
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await?
            .json()
            .await?;
        times.push(t.elapsed());
        listed = v["sessions"].as_array().map(|a| a.len()).unwrap_or(0);
    }
    ensure!(listed >= count, "listed {listed} of {count} sessions");
    println!(
        "{count} live sessions made in {:.2} s; GET /exec lists {listed}: p50 {}  p95 {}",
        made.as_secs_f64(),
        ms(pct(times.clone(), 0.5)),
        ms(pct(times, 0.95))
    );
    Ok(())
}
