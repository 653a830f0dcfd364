//! `storage`: checkpoint and restore time for 1 GiB written and for 10 MiB changed after it,
//! a fork from the 1 GiB checkpoint against an empty create,
//! and filesystem API write/read throughput of a 256 MiB file against `cp` on the host.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sprites_testing::TestServer;

use crate::ms;

struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
    sprites_dir: std::path::PathBuf,
}

impl Api {
    async fn sh(&self, name: &str, script: &str) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/v1/sprites/{name}/exec", self.base))
            .query(&[("cmd", "sh"), ("cmd", "-c"), ("cmd", script)])
            .header("authorization", &self.auth)
            .header("sprite-exec-framing", "length-prefixed")
            .send()
            .await?;
        ensure!(r.status().is_success(), "exec: {}", r.status());
        let body = r.bytes().await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Runs a create or restore to the end; its duration and final line. Waits first for the
    /// server's background work (checkpoint views, written 2 s after the last checkpoint)
    /// so each figure is the operation alone.
    async fn stream(&self, path: &str) -> Result<(Duration, String)> {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.settle().await;
        let t = Instant::now();
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .json(&serde_json::json!({}))
            .send()
            .await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
        let text = r.text().await?;
        let took = t.elapsed();
        let last = text.lines().last().unwrap_or_default().to_string();
        ensure!(last.contains("\"complete\""), "{path} failed: {text}");
        let stats = text
            .lines()
            .filter(|l| l.contains("stored") || l.contains("rewrote"))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["data"].as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok((took, stats))
    }
}

impl Api {
    /// Waits until no checkpoint view is being written (a `.vN.tmp` in a sprite's
    /// checkpoints directory) and reports how long that took, if it was busy.
    async fn settle(&self) {
        let t = Instant::now();
        let busy = || {
            std::fs::read_dir(&self.sprites_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|d| std::fs::read_dir(d.path().join("checkpoints")).ok())
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".tmp"))
        };
        while busy() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if t.elapsed() > Duration::from_millis(100) {
            println!(
                "  (waited {} for background checkpoint views)",
                ms(t.elapsed())
            );
        }
    }
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Time to write `mib` MiB from memory to a file in `dir` and fsync it: the floor of any
/// checkpoint that stores that much new data durably there.
fn durable_write(dir: &std::path::Path, mib: u64) -> Result<Duration> {
    use std::io::Write;
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let path = dir.join("durable-write-baseline");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for i in 0..mib {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&b)?;
    }
    f.sync_all()?;
    let took = t.elapsed();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(took)
}

pub async fn storage_benches() -> Result<()> {
    let gib: u64 = std::env::var("BENCH_CKPT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let s = TestServer::start()?;
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&s.data_dir)
        .output()?;
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_string();
    println!("-- data dir on the host's filesystem ({fs}) with --storage-pool none: checkpoints read all allocated chunks");
    let api = checkpoint_benches(&s, gib).await?;
    fs_benches(&s, &api).await?;
    drop(s);

    println!(
        "-- the default install: the data dir's reflink storage pool (XFS in a file): checkpoints read only the chunks written since the last"
    );
    let s = TestServer::start_with(&["--storage-pool", "auto", "--storage-pool-gb", "40"])?;
    checkpoint_benches(&s, gib).await?;
    let pool = s.data_dir.join("pool");
    drop(s);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&pool)
        .status();
    Ok(())
}

async fn checkpoint_benches(s: &TestServer, gib: u64) -> Result<Api> {
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
        auth: format!("Bearer {}", s.token),
        sprites_dir: s.data_dir.join("sprites"),
    };
    let r = api
        .http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", &api.auth)
        .json(&serde_json::json!({ "name": "ckbench" }))
        .send()
        .await?;
    ensure!(r.status() == 201, "create: {}", r.status());

    // The empty sprite first: what a checkpoint costs with (almost) nothing written.
    let (empty, stats) = api.stream("/v1/sprites/ckbench/checkpoint").await?;
    println!("checkpoint of a fresh sprite: {}  ({stats})", ms(empty));

    api.sh(
        "ckbench",
        &format!("head -c {gib}M /dev/urandom > /home/sprite/big && sync"),
    )
    .await?;
    let (full, stats) = api.stream("/v1/sprites/ckbench/checkpoint").await?;
    let floor = durable_write(&s.data_dir, gib)?;
    println!(
        "checkpoint after {gib} MiB written: {}  = {:.2} s per GiB  ({stats}); writing {gib} MiB + fsync on the same filesystem: {} (ratio {:.2})",
        ms(full),
        full.as_secs_f64() * 1024.0 / gib as f64,
        ms(floor),
        full.as_secs_f64() / floor.as_secs_f64()
    );
    api.sh(
        "ckbench",
        "head -c 10M /dev/urandom > /home/sprite/delta && sync",
    )
    .await?;
    let (inc, stats) = api.stream("/v1/sprites/ckbench/checkpoint").await?;
    println!("checkpoint after 10 MiB changed: {}  ({stats})", ms(inc));
    let (same, stats) = api.stream("/v1/sprites/ckbench/checkpoint").await?;
    println!("checkpoint with nothing changed: {}  ({stats})", ms(same));

    // Back to the fresh sprite (1 GiB of chunks become holes), then forward to the 1 GiB + 10
    // MiB state (1 GiB written), then to the 1 GiB state (10 MiB differ).
    let (r0, stats) = api
        .stream("/v1/sprites/ckbench/checkpoints/v0/restore")
        .await?;
    println!("restore {gib} MiB -> fresh disk: {}  ({stats})", ms(r0));
    let (r2, stats) = api
        .stream("/v1/sprites/ckbench/checkpoints/v2/restore")
        .await?;
    println!("restore fresh -> {gib} MiB + 10 MiB: {}  ({stats})", ms(r2));
    let (r1, stats) = api
        .stream("/v1/sprites/ckbench/checkpoints/v1/restore")
        .await?;
    println!("restore undoing the 10 MiB change: {}  ({stats})", ms(r1));
    let t = Instant::now();
    let out = api.sh("ckbench", "ls /home/sprite").await?;
    ensure!(
        out.contains("big") && !out.contains("delta"),
        "restored disk is not v1: {out}"
    );
    println!("first exec after restore: {}", ms(t.elapsed()));

    // A new sprite from the 1 GiB checkpoint (v1), to its first exec, against creating an
    // empty one the same way.
    let create = |name: &str, body: serde_json::Value| {
        let (api, name) = (&api, name.to_string());
        async move {
            let t = Instant::now();
            let r = api
                .http
                .post(format!("{}/v1/sprites", api.base))
                .header("authorization", &api.auth)
                .json(&body)
                .send()
                .await?;
            ensure!(r.status() == 201, "create {name}: {}", r.status());
            let created = t.elapsed();
            api.sh(&name, "true").await?;
            anyhow::Ok((created, t.elapsed()))
        }
    };
    let (fork, fork_exec) = create(
        "ckfork",
        serde_json::json!({"name": "ckfork", "source": {"sprite": "ckbench", "checkpoint": "v1"}}),
    )
    .await?;
    let (plain, plain_exec) = create("ckplain", serde_json::json!({"name": "ckplain"})).await?;
    println!(
        "fork of a sprite from its {gib} MiB checkpoint: created {} (first exec {}); an empty sprite: {} ({}); ratio {:.1}",
        ms(fork),
        ms(fork_exec),
        ms(plain),
        ms(plain_exec),
        fork.as_secs_f64() / plain.as_secs_f64()
    );
    let out = api.sh("ckfork", "ls /home/sprite").await?;
    ensure!(
        out.contains("big"),
        "the fork lacks the source's file: {out}"
    );
    // From the sprite as it is now: a snapshot, then (with reflinks) one clone of it.
    let (now, now_exec) = create(
        "cknow",
        serde_json::json!({"name": "cknow", "source": {"sprite": "ckbench"}}),
    )
    .await?;
    println!(
        "fork of a sprite with {gib} MiB written, as it is now: created {} (first exec {})",
        ms(now),
        ms(now_exec)
    );
    Ok(api)
}

async fn fs_benches(s: &TestServer, api: &Api) -> Result<()> {
    // Filesystem API throughput against cp on the host.
    let size: u64 = 256 << 20;
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = tempfile_dir()?;
    let src = dir.join("src");
    std::fs::write(&src, &data)?;
    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg(&src)
        .arg(dir.join("dst"))
        .status()?;
    ensure!(st.success(), "cp failed");
    let cp = t.elapsed();
    let t = Instant::now();
    let r = api
        .http
        .put(format!("{}/v1/sprites/ckbench/fs/write", s.url))
        .query(&[("path", "/home/sprite/fsbench"), ("mkdirParents", "true")])
        .header("authorization", &api.auth)
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await?;
    ensure!(r.status().is_success(), "fs write: {}", r.status());
    let w = t.elapsed();
    let t = Instant::now();
    let r = api
        .http
        .get(format!("{}/v1/sprites/ckbench/fs/read", s.url))
        .query(&[("path", "/home/sprite/fsbench")])
        .header("authorization", &api.auth)
        .send()
        .await?;
    ensure!(r.status().is_success(), "fs read: {}", r.status());
    let back = r.bytes().await?;
    let rd = t.elapsed();
    ensure!(
        back.len() as u64 == size && back[..] == data[..],
        "fs read differs"
    );
    println!(
        "fs write 256 MiB: {:.0} MiB/s, fs read: {:.0} MiB/s; host cp: {:.0} MiB/s (ratios {:.2}, {:.2})",
        mibs(size, w),
        mibs(size, rd),
        mibs(size, cp),
        cp.as_secs_f64() / w.as_secs_f64(),
        cp.as_secs_f64() / rd.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("ckbench-{}", std::process::id()));
    std::fs::create_dir_all(&d).context("bench temp dir")?;
    Ok(d)
}
