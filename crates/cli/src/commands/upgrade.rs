//! `sprite upgrade`: replaces this binary with the server's CLI build, checked against the
//! SHA-256 the server states, atomically (a rename over the old file in its own directory).

use anyhow::{bail, Context as _, Result};
use sha2::Digest;

use crate::context::Ctx;

/// The version of this binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn upgrade(
    ctx: &Ctx,
    check: bool,
    force: bool,
    version: Option<String>,
    channel: Option<String>,
) -> Result<i32> {
    let client = ctx.anonymous_client();
    let release = client
        .cli_release(version.as_deref(), channel.as_deref())
        .await?;
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    let build = release.build_for(os, arch).with_context(|| {
        format!(
            "{} offers sprite {} but no build for {os}-{arch}",
            ctx.url, release.version
        )
    })?;
    let same = release.version == VERSION;
    if check {
        if same {
            println!("sprite {VERSION} is up to date");
        } else {
            println!(
                "sprite {} is available (this is {VERSION}): run `sprite upgrade`",
                release.version
            );
        }
        return Ok(0);
    }
    if same && !force {
        println!("sprite {VERSION} is up to date (--force reinstalls it)");
        return Ok(0);
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = exe
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    let bytes = client.download(&build.url).await?;
    let got: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != build.sha256 {
        bail!(
            "checksum mismatch for {}: got {got}, the server says {}; nothing was replaced",
            build.url,
            build.sha256
        );
    }
    // Written beside the old binary, then renamed over it: a crash leaves one or the other.
    let tmp = dir.join(format!(".sprite-upgrade-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &exe)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        bail!("replacing {}: {e}", exe.display());
    }
    println!(
        "sprite {} installed at {} (was {VERSION})",
        release.version,
        exe.display()
    );
    Ok(0)
}
