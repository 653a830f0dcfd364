//! `density`: what a sprite costs as the host fills. At 10, 100 and 1,000 sprites (or the
//! levels in `BENCH_DENSITY`, e.g. `10,100`): a sequential create, the first exec byte on a
//! warm (frozen) sprite and on a running one, and per idle (warm) sprite the host memory and
//! processes it adds: every process that appeared since the server started without sprites,
//! its proportional set size (PSS, so shared pages are split fairly), and the system's used
//! memory (`MemTotal - MemAvailable`, the figure `free` shows). The boot part of the last ten
//! creates comes from the server's `/metrics`. Ratios are against the first level, in the
//! same run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sprites_testing::TestServer;

use crate::{create_sprite, first_byte, ms, pct, status};

fn pids() -> HashSet<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// PSS of a process in bytes (0 once it is gone).
fn pss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn used_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// Sum and count of a histogram's series (`name`, then its `{labels}`) in a Prometheus text
/// exposition.
fn histogram(text: &str, (name, labels): (&str, &str)) -> (f64, f64) {
    let get = |suffix: &str| {
        let key = format!("{name}_{suffix}{labels} ");
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(&key)?;
                rest.rsplit(' ').next()?.parse::<f64>().ok()
            })
            .unwrap_or(0.0)
    };
    (get("sum"), get("count"))
}

async fn scrape(http: &reqwest::Client, addr: &str) -> Result<String> {
    Ok(http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

struct Level {
    n: usize,
    create: Duration,
    boot: Duration,
    warm_wake: Duration,
    running: Duration,
    procs: f64,
    pss_mib: f64,
    used_mib: f64,
}

pub async fn density_benches() -> Result<()> {
    let levels: Vec<usize> = std::env::var("BENCH_DENSITY")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let s = TestServer::start_with(&[
        "--warm-after",
        "1s",
        "--cold-after",
        "24h",
        "--idle-tick",
        "200ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ])?;
    let metrics = std::fs::read_to_string(s.data_dir.join("spritesd.metrics-addr"))?;
    let metrics = metrics.trim().to_string();
    // The boot part of a create (the runtime's cold start: namespaces, network, launcher,
    // agent up), from the server's own histogram.
    let boots = ("sprites_wake_duration_seconds", "{from=\"cold\"}");
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    // Settle, then take the baseline: the server with no sprite.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = pids();
    let used_before = used_memory();
    let mut made = 0usize;
    let mut out: Vec<Level> = Vec::new();
    for &n in &levels {
        let mut creates = Vec::new();
        let mut boot_before = (0.0, 0.0);
        while made < n {
            if n - made == 10.min(n) {
                boot_before = histogram(&scrape(&http, &metrics).await?, boots);
            }
            let name = format!("d-{made:05}");
            let t = Instant::now();
            create_sprite(&http, &s, &auth, &name).await?;
            creates.push(t.elapsed());
            made += 1;
        }
        let boot_after = histogram(&scrape(&http, &metrics).await?, boots);
        let boot = Duration::from_secs_f64(
            (boot_after.0 - boot_before.0) / (boot_after.1 - boot_before.1).max(1.0),
        );
        // Every sprite idle and frozen before anything is counted.
        let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 5);
        for i in 0..n {
            let name = format!("d-{i:05}");
            while status(&http, &s, &auth, &name).await? != "warm" {
                ensure!(Instant::now() < deadline, "{name} never went warm");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let now: Vec<i32> = pids().difference(&before).copied().collect();
        let pss_total: u64 = now.iter().map(|p| pss(*p)).sum();
        let used = used_memory().saturating_sub(used_before);
        // Wake five of them (spread over the range) from warm, then exec on them running.
        let (mut warm, mut running) = (Vec::new(), Vec::new());
        for k in 0..5 {
            let name = format!("d-{:05}", k * (n - 1) / 4);
            let url = format!("{}/v1/sprites/{name}/exec?cmd=echo&cmd=x", s.url);
            warm.push(first_byte(&http, &url, &auth).await?);
            running.push(first_byte(&http, &url, &auth).await?);
        }
        let last = creates.len().saturating_sub(10);
        out.push(Level {
            n,
            create: pct(creates[last..].to_vec(), 0.5),
            boot,
            warm_wake: pct(warm, 0.5),
            running: pct(running, 0.5),
            procs: now.len() as f64 / n as f64,
            pss_mib: pss_total as f64 / 1048576.0 / n as f64,
            used_mib: used as f64 / 1048576.0 / n as f64,
        });
        let l = out.last().expect("just pushed");
        let base = &out[0];
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "{:>5} sprites: create p50 {} ({:.2}x; of it boot {} mean), warm wake {} ({:.2}x), exec running {} ({:.2}x); per idle sprite {:.2} processes, {:.2} MiB PSS, {:.2} MiB used memory",
            l.n,
            ms(l.create),
            ratio(l.create, base.create),
            ms(l.boot),
            ms(l.warm_wake),
            ratio(l.warm_wake, base.warm_wake),
            ms(l.running),
            ratio(l.running, base.running),
            l.procs,
            l.pss_mib,
            l.used_mib,
        );
    }
    // Going away: the server's own teardown stops every sprite.
    drop(s);
    Ok(())
}
