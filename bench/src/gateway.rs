//! `gateway`: a small GET through the Connectors gateway against the same GET straight from
//! the sprite to the provider (p50/p95 and their ratio, keep-alive connections, measured by
//! one program inside the sprite), and a large streamed download both ways.
//!
//! The "provider" is an HTTP server in a network namespace of its own at a 198.18.0.0/15
//! address (benchmarking space, which sprites may reach), so both paths leave the sprite.

use std::os::fd::AsFd;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use sprites_testing::TestServer;

/// A namespace with one address and an HTTP server on port 80; removed on drop.
struct Provider {
    ns: String,
    host_if: String,
    addr: std::net::Ipv4Addr,
}

fn run(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    ensure!(st.success(), "{args:?} failed");
    Ok(())
}

impl Provider {
    fn start() -> Result<Self> {
        let pid = std::process::id();
        let n = pid % 200 + 20;
        let ns = format!("bgw{pid}");
        let host_if = format!("bgwh{}", pid % 100000);
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("198.19.{n}.1/24"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.19.{n}.2/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.19.{n}.1"),
        ])?;
        let addr = std::net::Ipv4Addr::new(198, 19, n as u8, 2);
        let path = format!("/run/netns/{ns}");
        let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let fd = std::fs::File::open(&path)?;
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let l = std::net::TcpListener::bind((addr, 80))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
        let l = tokio::net::TcpListener::from_std(listener)?;
        let app = axum::Router::new()
            .route(
                "/small",
                axum::routing::get(|| async { "0123456789abcdef" }),
            )
            .route(
                "/big/{mib}",
                axum::routing::get(
                    |axum::extract::Path(mib): axum::extract::Path<usize>| async move {
                        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
                        let s = futures::stream::iter(
                            (0..mib).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                        );
                        axum::body::Body::from_stream(s)
                    },
                ),
            );
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok(Provider { ns, host_if, addr })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

/// Inside the sprite: n keep-alive GETs of `/small` against each base; p50 and p95 in µs.
const LATENCY: &str = r#"
import http.client, os, sys, time, urllib.parse
n = int(sys.argv[1])
def run(base):
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port or 80)
    t = []
    for i in range(n + 20):
        s = time.perf_counter()
        c.request("GET", u.path + "/small")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        if i >= 20: t.append(time.perf_counter() - s)
    t.sort()
    return t[len(t) // 2] * 1e6, t[int(len(t) * 0.95)] * 1e6
for name, base in (("gateway", sys.argv[2]), ("direct", sys.argv[3])):
    p50, p95 = run(base)
    print(name, round(p50, 1), round(p95, 1))
"#;

pub async fn gateway_benches() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mib: usize = std::env::var("BENCH_GATEWAY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let p = Provider::start()?;
    let base = format!("http://{}", p.addr);
    let s = TestServer::start_with(&["--provider", &format!("openai.base_url={base}")])?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let r = http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"name": "gw"}))
        .send()
        .await?;
    ensure!(r.status() == 201, "create: {}", r.status());
    let r = http
        .post(format!("{}/v1/oauth/connections/api_key", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"provider": "openai", "api_key": "sk-bench", "access_policy": {"allow_all": true}}))
        .send()
        .await?;
    ensure!(r.status() == 201, "connection: {}", r.status());
    let exec = |script: String| {
        let http = http.clone();
        let url = format!("{}/v1/sprites/gw/exec", s.url);
        let auth = auth.clone();
        async move {
            let r = http
                .post(url)
                .query(&[("cmd", "bash"), ("cmd", "-c"), ("cmd", script.as_str())])
                .header("authorization", auth)
                .send()
                .await?;
            ensure!(r.status() == 200, "exec: {}", r.status());
            // Official framing: one frame per chunk, stream byte first; the text is stdout.
            let body = r.bytes().await?;
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control() || *c == '\n' || *c == ' ')
                .collect();
            anyhow::Ok(text)
        }
    };
    let gw = "$SPRITES_GATEWAY_URL/v1/gateway/openai";
    let script = format!(
        "cat > /tmp/lat.py <<'EOF'\n{LATENCY}\nEOF\npython3 /tmp/lat.py {n} \"{gw}\" {base}"
    );
    let out = exec(script).await?;
    let figure = |name: &str| -> Result<(f64, f64)> {
        let line = out
            .lines()
            .find(|l| l.contains(name))
            .with_context(|| format!("no {name} figure in {out:?}"))?;
        let mut it = line
            .split_whitespace()
            .skip_while(|w| !w.ends_with(name))
            .skip(1);
        let p50: f64 = it.next().context("p50")?.parse()?;
        let p95: f64 = it.next().context("p95")?.parse()?;
        Ok((p50, p95))
    };
    let (g50, g95) = figure("gateway")?;
    let (d50, d95) = figure("direct")?;
    println!("gateway: small GET, keep-alive, from inside a sprite (n={n}): through the gateway p50 {g50:.0} µs p95 {g95:.0} µs; straight to the provider p50 {d50:.0} µs p95 {d95:.0} µs");
    println!(
        "gateway: added latency p50 {:.0} µs ({:.2}x direct), p95 {:.0} µs ({:.2}x)",
        g50 - d50,
        g50 / d50,
        g95 - d95,
        g95 / d95
    );
    let speed = |url: String| {
        let exec = &exec;
        async move {
            let out = exec(format!(
                "curl -s -o /dev/null -w '%{{speed_download}} %{{size_download}}' \"{url}\""
            ))
            .await?;
            let mut it = out.split_whitespace().filter(|w| w.parse::<f64>().is_ok());
            let speed: f64 = it.next().context("speed")?.parse()?;
            let size: f64 = it.next().context("size")?.parse()?;
            ensure!(size as usize == mib << 20, "downloaded {size} bytes");
            anyhow::Ok(speed)
        }
    };
    let mut via = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..3 {
        via.push(speed(format!("{gw}/big/{mib}")).await?);
        direct.push(speed(format!("{base}/big/{mib}")).await?);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (v, d) = (med(via), med(direct));
    println!(
        "gateway: {mib} MiB streamed response (median of 3): through the gateway {:.0} MiB/s, straight {:.0} MiB/s ({:.2} of direct)",
        v / (1 << 20) as f64,
        d / (1 << 20) as f64,
        v / d
    );
    Ok(())
}
