//! `sprite cp SRC DEST`: copies between this machine and the sprite. The sprite's side is
//! written with a leading `:` (`:/etc/hostname`, `:src` = `/home/sprite/src`); directories go
//! as tar streams (`/fs/tar`), single files through `/fs/read` and `/fs/write`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::context::{friendly, Ctx};

/// `sprite cp SRC DEST`.
pub async fn cp(ctx: &Ctx, src: &str, dest: &str) -> Result<i32> {
    match (src.strip_prefix(':'), dest.strip_prefix(':')) {
        (None, Some(remote)) => upload(ctx, Path::new(src), remote).await?,
        (Some(remote), None) => download(ctx, remote, Path::new(dest)).await?,
        (Some(_), Some(_)) => bail!("both paths are in the sprite; one of SRC and DEST must be local"),
        (None, None) => bail!(
            "neither path is in the sprite; write the sprite's side with a leading ':' (e.g. :/home/sprite/file)"
        ),
    }
    Ok(0)
}

fn remote_or_home(remote: &str) -> &str {
    if remote.is_empty() {
        sprites::SPRITE_HOME
    } else {
        remote
    }
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The last component of a remote path (`/` has none).
fn remote_name(remote: &str) -> Option<&str> {
    remote
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
}

async fn upload(ctx: &Ctx, local: &Path, remote: &str) -> Result<()> {
    let meta =
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    let sprite = ctx.sprite()?;
    let remote = remote_or_home(remote);
    // Like cp: into an existing directory (or one written with a trailing /), under the
    // source's own name.
    let into_dir = remote.ends_with('/')
        || sprite
            .stat(remote)
            .await
            .map_err(friendly)?
            .is_some_and(|i| i.is_dir);
    let target = if into_dir {
        let abs = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
        let name = abs
            .file_name()
            .with_context(|| format!("{} has no name to copy it under", local.display()))?;
        join_remote(remote, &name.to_string_lossy())
    } else {
        remote.to_string()
    };
    if meta.is_dir() {
        sprite.upload_dir(local, &target).await.map_err(friendly)?;
    } else {
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot read {}", local.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let bar = crate::progress::bytes(Some(meta.len()), &format!("{} →", local.display()));
        let written = match &bar {
            Some(b) => {
                sprite
                    .write_stream(&target, b.wrap_async_read(file), Some(mode))
                    .await
            }
            None => sprite.write_stream(&target, file, Some(mode)).await,
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        written.map_err(friendly)?;
    }
    Ok(())
}

async fn download(ctx: &Ctx, remote: &str, local: &Path) -> Result<()> {
    let sprite = ctx.sprite()?;
    let remote = remote_or_home(remote);
    let info = sprite
        .stat(remote)
        .await
        .map_err(friendly)?
        .with_context(|| {
            format!(
                "{remote}: no such file or directory in sprite {}",
                sprite.name()
            )
        })?;
    let target: PathBuf = if local.is_dir() {
        let name = remote_name(remote).context("copy / into a directory by naming the target")?;
        local.join(name)
    } else {
        local.to_path_buf()
    };
    if info.is_dir {
        return sprite.download_dir(remote, &target).await.map_err(friendly);
    }
    let mut body = sprite.read_stream(remote).await.map_err(friendly)?;
    let mut file = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("cannot write {}", target.display()))?;
    let bar = crate::progress::bytes(Some(info.size), &format!("→ {}", target.display()));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(friendly)?;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", target.display()))?;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    file.flush().await?;
    if let Ok(mode) = u32::from_str_radix(&info.mode, 8) {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .await
            .with_context(|| format!("setting the mode of {}", target.display()))?;
    }
    Ok(())
}

/// `sprite exec --file LOCAL:REMOTE`: uploads each file before the command runs. Relative
/// remote paths are taken from `dir` (the command's directory), else the sprite user's home.
pub async fn upload_files(
    sprite: &sprites::SpriteHandle,
    specs: &[String],
    dir: Option<&str>,
) -> Result<()> {
    for spec in specs {
        let (local, remote) = spec
            .split_once(':')
            .filter(|(l, r)| !l.is_empty() && !r.is_empty())
            .with_context(|| format!("--file takes LOCAL:REMOTE, got {spec:?}"))?;
        let remote = if remote.starts_with('/') {
            remote.to_string()
        } else {
            join_remote(dir.unwrap_or(sprites::SPRITE_HOME), remote)
        };
        let meta = std::fs::metadata(local).with_context(|| format!("cannot read {local}"))?;
        if meta.is_dir() {
            bail!("--file {local}: is a directory (use `sprite cp` for directories)");
        }
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot read {local}"))?;
        sprite
            .write_stream(&remote, file, Some(meta.permissions().mode() & 0o7777))
            .await
            .map_err(friendly)
            .with_context(|| format!("uploading {local}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names() {
        assert_eq!(remote_name("/home/sprite/src/"), Some("src"));
        assert_eq!(remote_name("/etc/hostname"), Some("hostname"));
        assert_eq!(remote_name("/"), None);
        assert_eq!(join_remote("/tmp/", "a"), "/tmp/a");
    }
}
