//! `backends`: create-to-first-exec and warm-wake latency on each backend and accelerator
//! available here (p50/p95), and host memory per idle microVM (QEMU + its vsock process).

use std::time::{Duration, Instant};

use anyhow::Result;
use sprites_testing::TestServer;

use crate::{first_byte, ms, pct, wait_for};

fn rss_of(pattern: &str) -> u64 {
    let mut total = 0;
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(pattern)
        {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(p.path().join("status")) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += kb << 10;
            }
        }
    }
    total
}

async fn one_backend(backend: &str, n: usize) -> Result<()> {
    let s = TestServer::start_with(&[
        "--backend",
        backend,
        "--warm-after",
        "300ms",
        "--cold-after",
        "1h",
        "--idle-tick",
        "20ms",
    ])?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let mut create = Vec::new();
    let mut warm = Vec::new();
    let mut hot = Vec::new();
    for i in 0..n {
        let name = format!("b{i}");
        let t = Instant::now();
        crate::create_sprite(&http, &s, &auth, &name).await?;
        let url = format!("{}/v1/sprites/{name}/exec?cmd=echo&cmd=x", s.url);
        first_byte(&http, &url, &auth).await?;
        create.push(t.elapsed());
        hot.push(first_byte(&http, &url, &auth).await?);
        wait_for(&http, &s, &auth, &name, "warm").await?;
        warm.push(first_byte(&http, &url, &auth).await?);
    }
    let line = |what: &str, v: &Vec<Duration>| {
        format!(
            "{what} p50 {} p95 {}",
            ms(pct(v.clone(), 0.5)),
            ms(pct(v.clone(), 0.95))
        )
    };
    println!(
        "{backend} (n={n}): {}; {}; {}",
        line("create-to-first-exec", &create),
        line("exec on a running sprite", &hot),
        line("warm wake (first byte)", &warm)
    );
    if backend == "microvm" {
        // All n sprites are warm (paused) now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let data = s.data_dir.display().to_string();
        let qemu = rss_of("qemu-system-x86_64 -name sprite-b");
        let vsock = rss_of(&format!(
            "vhost-device-vsock --vm guest-cid=3,socket={data}/"
        ));
        println!(
            "microvm: host RSS per idle (warm) VM {:.1} MiB (QEMU, guest memory it touched included) + {:.1} MiB vsock process",
            qemu as f64 / n as f64 / (1 << 20) as f64,
            vsock as f64 / n as f64 / (1 << 20) as f64
        );
    }
    for i in 0..n {
        http.delete(format!("{}/v1/sprites/b{i}", s.url))
            .header("authorization", &auth)
            .send()
            .await?;
    }
    Ok(())
}

pub async fn backend_benches() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let virt = sprites_runtime_microvm::detect::detect(std::path::Path::new("/"));
    println!("host: {}", virt.explain());
    one_backend("namespace", n).await?;
    // `--backend microvm` uses KVM where it is real and TCG otherwise.
    one_backend("microvm", n).await?;
    Ok(())
}
