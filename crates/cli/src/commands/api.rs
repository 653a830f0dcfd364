//! `sprite api PATH [curl args...]`: curl with the token and the right base path.

use anyhow::{Context, Result};

use crate::context::Ctx;

/// Where `path` goes: `/v1/sprites/<name>/...` with a sprite, else `/v1/...`.
pub fn resolve(base: &str, sprite: Option<&str>, path: &str) -> String {
    let p = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if p.starts_with("/v1/") {
        return format!("{base}{p}");
    }
    match sprite {
        Some(name) => format!("{base}/v1/sprites/{name}{p}"),
        None => format!("{base}/v1{p}"),
    }
}

/// Runs curl; its exit code becomes ours.
pub fn api(ctx: &Ctx, path: &str, curl_args: &[String]) -> Result<i32> {
    let token = ctx.token().context(format!(
        "not logged in to {}: run `sprite auth setup --token TOKEN`",
        ctx.url
    ))?;
    // Only -s scopes the path to a sprite, as in the official CLI.
    let sprite = if ctx.sprite_from_flag {
        ctx.sprite_name(None).ok()
    } else {
        None
    };
    let url = resolve(&ctx.url, sprite.as_deref(), path);
    let status = std::process::Command::new("curl")
        .arg("-sS")
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(&url)
        .args(curl_args)
        .status()
        .context("running curl (is it installed?)")?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn paths() {
        let b = "http://h";
        assert_eq!(resolve(b, None, "/sprites"), "http://h/v1/sprites");
        assert_eq!(
            resolve(b, Some("dev"), "/exec"),
            "http://h/v1/sprites/dev/exec"
        );
        assert_eq!(
            resolve(b, Some("dev"), "/v1/sprites/other/exec"),
            "http://h/v1/sprites/other/exec"
        );
        assert_eq!(resolve(b, None, "sprites"), "http://h/v1/sprites");
    }
}
