//! `image`: what base images cost. For the slim and full profiles: the build from nothing
//! (the sum of the layers' recorded build times, or measured with `BENCH_IMAGE_COLD=1`), a
//! rebuild with every layer cached, and a rebuild after one layer more (`--add`) against the
//! build from nothing; the base's size and the disk it takes beside its layers (hard links);
//! then create-to-first-exec on each profile in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sprites_testing::{bin_dir, image_variant, TestServer};

use crate::{first_byte, ms, pct};

fn build(dir: &Path, profile: &str, add: &[&str]) -> Result<Duration> {
    let tmp = tempfile_dir()?;
    let mut cmd = Command::new(bin_dir().join("spritesd"));
    cmd.args(["image", "build", "--profile", profile, "--data-dir"])
        .arg(&tmp)
        .arg("--image-dir")
        .arg(dir)
        .stderr(std::process::Stdio::null());
    for p in add {
        cmd.args(["--add", p]);
    }
    let t = Instant::now();
    let st = cmd.status()?;
    let took = t.elapsed();
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(st.success(), "image build {profile} {add:?} failed");
    Ok(took)
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("sprites-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Each layer's name and the seconds it took to build.
type LayerTimes = Vec<(String, f64)>;

/// The current base's id and the seconds its layers took to build from nothing.
fn current(dir: &Path) -> Result<(String, f64, LayerTimes)> {
    let id = std::fs::read_to_string(dir.join("current"))?
        .trim()
        .to_string();
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("bases").join(&id).join("image.json"),
    )?)?;
    let layers: Vec<(String, f64)> = info["layers"]
        .as_array()
        .context("image.json has no layers")?
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or("?").to_string(),
                l["seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    Ok((id, layers.iter().map(|(_, s)| s).sum(), layers))
}

/// `du` of `paths` together (hard links counted once), in bytes.
fn du(paths: &[PathBuf]) -> Result<u64> {
    let out = Command::new("du").arg("-sbc").args(paths).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("du printed no total")?;
    Ok(total)
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

async fn create_to_first_exec(dir: &Path, n: usize) -> Result<Vec<Duration>> {
    let s = TestServer::start_with(&["--image-dir", dir.to_str().context("image dir")?])?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let mut v = Vec::new();
    for i in 0..n {
        let name = format!("i{i}");
        let t = Instant::now();
        crate::create_sprite(&http, &s, &auth, &name).await?;
        let url = format!("{}/v1/sprites/{name}/exec?cmd=node&cmd=--version", s.url);
        first_byte(&http, &url, &auth).await?;
        v.push(t.elapsed());
    }
    Ok(v)
}

pub async fn image_benches() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cold = std::env::var("BENCH_IMAGE_COLD").is_ok_and(|v| v == "1");
    let mut dirs = Vec::new();
    for profile in ["slim", "full"] {
        let dir = if cold {
            let d = std::env::temp_dir().join(format!("sprites-bench-cold-{profile}"));
            let _ = std::fs::remove_dir_all(&d);
            let took = build(&d, profile, &[])?;
            println!(
                "image {profile}: build from nothing (measured) {:.1} s",
                took.as_secs_f64()
            );
            d
        } else {
            image_variant(&format!("bench-{profile}"), profile, &[])?
        };
        let (id, from_nothing, layers) = current(&dir)?;
        let where_: Vec<String> = layers.iter().map(|(n, s)| format!("{n} {s:.1}s")).collect();
        println!(
            "image {profile}: build from nothing {from_nothing:.1} s (layers: {})",
            where_.join(", ")
        );
        let warm = build(&dir, profile, &[])?;
        println!(
            "image {profile}: rebuild, every layer cached {:.2} s ({:.4} of from nothing)",
            warm.as_secs_f64(),
            warm.as_secs_f64() / from_nothing
        );
        // One more layer on top (a small package), then back to the plain profile. The layer
        // and its base (the top key is the base's id) are removed first so they are really
        // built.
        build(&dir, profile, &["cowsay"])?;
        let top = std::fs::read_to_string(dir.join("current"))?
            .trim()
            .to_string();
        ensure!(top != id && !top.is_empty(), "--add made no layer");
        std::fs::remove_dir_all(dir.join("layers").join(&top))?;
        std::fs::remove_dir_all(dir.join("bases").join(&top))?;
        let extra = build(&dir, profile, &["cowsay"])?;
        println!(
            "image {profile}: rebuild with one layer added (--add cowsay, incl. apt update) {:.1} s ({:.3} of from nothing)",
            extra.as_secs_f64(),
            extra.as_secs_f64() / from_nothing
        );
        build(&dir, profile, &[])?;
        let base = dir.join("bases").join(&id);
        let alone = du(&[base.join("rootfs")])?;
        let with_layers = du(&[dir.join("layers"), base.join("rootfs")])?;
        let layers_only = du(&[dir.join("layers")])?;
        println!(
            "image {profile}: base {} on disk; base and all cached layers together {} (layers alone {}: the base adds {})",
            mib(alone),
            mib(with_layers),
            mib(layers_only),
            mib(with_layers.saturating_sub(layers_only))
        );
        dirs.push((profile, dir));
    }
    let mut lines = Vec::new();
    for (profile, dir) in &dirs {
        let v = create_to_first_exec(dir, n).await?;
        lines.push((profile, pct(v.clone(), 0.5), pct(v, 0.95)));
    }
    for (profile, p50, p95) in &lines {
        println!(
            "create to first exec of `node --version`, {profile} (n={n}): p50 {} p95 {}",
            ms(*p50),
            ms(*p95)
        );
    }
    if let [(_, slim, _), (_, full, _)] = lines[..] {
        println!(
            "create to first exec: full / slim = {:.2}",
            full.as_secs_f64() / slim.as_secs_f64()
        );
    }
    Ok(())
}
