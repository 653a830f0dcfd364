//! `spritesd image …`: builds base images with progress (a live line on a terminal, a line
//! per step and a heartbeat in a pipe), lists them, and says where a build's time went.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sprites_storage::image::{Base, BuildEvent, Images, Profile};

/// How often a build in a pipe says it is still working.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Builds (or finds in the cache) the base of `profile` and makes it current.
pub fn build(image_dir: &Path, profile: Profile, extra: &[String]) -> anyhow::Result<Base> {
    let mirror = sprites_storage::mirror::detect(Path::new("/"))?;
    eprintln!(
        "building the {} base image from {} ({}) in {}",
        profile.as_str(),
        mirror.uri,
        mirror.suite,
        image_dir.display()
    );
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    // In a pipe, a thread says every HEARTBEAT which layer is still building.
    let building: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heart = (!tty).then(|| {
        let (building, stop) = (building.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() < HEARTBEAT {
                    continue;
                }
                last = Instant::now();
                // Said only of a layer that has been building a while, not one just begun.
                let now = building.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some((name, t)) = now.filter(|(_, t)| t.elapsed() >= HEARTBEAT) {
                    eprintln!("  … {name}: still building, {}s", t.elapsed().as_secs());
                }
            }
        })
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    };
    let images = Images::new(image_dir);
    let result = images.build(profile, &mirror, extra, &mut |ev| match ev {
        BuildEvent::Building {
            index,
            count,
            layer,
        } => {
            let line = format!("[{}/{count}] {}: {}", index + 1, layer.name, layer.what);
            match &bar {
                Some(b) => {
                    b.set_length(count as u64);
                    b.set_position(index as u64);
                    b.set_message(format!("{}: {}", layer.name, layer.what));
                    b.reset_elapsed();
                }
                None => eprintln!("{line}"),
            }
            *building.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((layer.name.to_string(), Instant::now()));
        }
        BuildEvent::Ready {
            index,
            count,
            layer,
            cached,
            took,
            bytes,
        } => {
            *building.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if let Some(b) = &bar {
                b.set_length(count as u64);
                b.set_position(index as u64 + 1);
            }
            let how = if cached {
                "cached".to_string()
            } else {
                format!("built in {:.1}s", took.as_secs_f64())
            };
            say(format!(
                "[{}/{count}] {}: {how}, {}",
                index + 1,
                layer.name,
                human_bytes(bytes)
            ));
        }
        BuildEvent::Flattening => {
            if let Some(b) = &bar {
                b.set_message("joining the layers into a base");
            } else {
                eprintln!("joining the layers into a base");
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(h) = heart {
        let _ = h.join();
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = result?;
    sprites_storage::disk::DiskFactory::new(image_dir).ensure_template()?;
    let built: Vec<String> = report
        .layers
        .iter()
        .filter(|(_, cached, _)| !cached)
        .map(|(n, _, s)| format!("{n} {s:.1}s"))
        .collect();
    eprintln!(
        "base image {} ({}, Debian {}) ready in {:.1}s: {}{}, joining {:.1}s",
        report.base.id(),
        profile.as_str(),
        report.base.info.suite,
        started.elapsed().as_secs_f64(),
        if built.is_empty() {
            "every layer cached".to_string()
        } else {
            format!("built {}", built.join(", "))
        },
        if report.reused {
            " (an identical base existed)"
        } else {
            ""
        },
        report.flatten_seconds
    );
    Ok(report.base)
}

/// Prints the bases, newest first, marking the current one.
pub fn list(image_dir: &Path) -> anyhow::Result<()> {
    let images = Images::new(image_dir);
    let current = images.current().map(|b| b.id().to_string());
    println!(
        "{:<34} {:<7} {:<10} {:>10}  LAYERS",
        "ID", "PROFILE", "BUILT", "SIZE"
    );
    for b in images.bases() {
        let mark = if current.as_deref() == Some(b.id()) {
            " (current)"
        } else {
            ""
        };
        let built: String = sprites_api::timefmt::format_millis(b.info.built_at as i64 * 1000)
            .chars()
            .take(10)
            .collect();
        let bytes: u64 = b.info.layers.iter().map(|l| l.bytes).sum();
        let names: Vec<&str> = b.info.layers.iter().map(|l| l.name.as_str()).collect();
        println!(
            "{:<34} {:<7} {:<10} {:>10}  {}{mark}",
            b.id(),
            b.info.profile.as_str(),
            built,
            human_bytes(bytes),
            names.join(",")
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
