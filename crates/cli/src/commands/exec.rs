//! `exec`, `console`, `sessions list|attach|kill`, `attach`.

use anyhow::{bail, Context, Result};
use clap::Args;
use sprites::{Child, SpriteHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::context::{friendly, Ctx};
use crate::terminal::{self, RawMode};

/// Ctrl+\ detaches from a TTY session.
const DETACH_KEY: u8 = 0x1c;

/// Arguments of `sprite exec`.
#[derive(Args)]
pub struct ExecArgs {
    /// Working directory.
    #[arg(long)]
    dir: Option<String>,
    /// Environment, KEY=value,KEY2=value2 (repeatable).
    #[arg(long)]
    env: Vec<String>,
    /// Allocate a pseudo-terminal.
    #[arg(long, short = 't')]
    tty: bool,
    /// Use one HTTP POST instead of a WebSocket (non-TTY only).
    #[arg(long)]
    http_post: bool,
    /// Upload file before exec, LOCAL:REMOTE (repeatable).
    #[arg(long, value_name = "LOCAL:REMOTE")]
    file: Vec<String>,
    /// Start the command as a detachable session and return at once, leaving it running
    /// (`sprite sessions attach ID` shows its output). A single argument with spaces runs
    /// through bash: `sprite exec --detachable "python -m http.server 8080"`.
    #[arg(long, conflicts_with = "http_post")]
    detachable: bool,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Parses `--env K=V,K2=V2` values.
pub fn parse_env(items: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in items {
        for kv in item.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env entries are KEY=value, got {kv:?}"))?;
            if k.is_empty() {
                bail!("--env entry {kv:?} has an empty name");
            }
            out.push((k.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

/// `sprite exec`.
pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<i32> {
    let sprite = ctx.sprite()?;
    crate::commands::cp::upload_files(&sprite, &a.file, a.dir.as_deref()).await?;
    let argv: Vec<String> = if a.detachable && a.command.len() == 1 && a.command[0].contains(' ') {
        vec!["bash".into(), "-lc".into(), a.command[0].clone()]
    } else {
        a.command.clone()
    };
    let mut cmd = sprite.command(&argv[0], argv[1..].iter().cloned());
    for (k, v) in parse_env(&a.env)? {
        cmd = cmd.env(k, v);
    }
    if let Some(d) = a.dir {
        cmd = cmd.current_dir(d);
    }
    if a.detachable {
        // A TTY session: it outlives its client and keeps its output for whoever attaches.
        let (cols, rows) = terminal::size();
        let child = cmd.tty(cols, rows).spawn().await.map_err(friendly)?;
        let id = child.session_id.clone();
        child.detach().await.map_err(friendly)?;
        println!(
            "Started session {id} in sprite {}: {}",
            sprite.name(),
            argv.join(" ")
        );
        eprintln!(
            "`sprite sessions attach {id}` shows its output; `sprite sessions kill {id}` ends it."
        );
        return Ok(0);
    }
    if a.tty {
        if a.http_post {
            bail!("--http-post is non-TTY only");
        }
        for var in ["TERM", "COLORTERM", "LANG", "LC_ALL"] {
            if let Ok(v) = std::env::var(var) {
                cmd = cmd.env(var, v);
            }
        }
        let (cols, rows) = terminal::size();
        let child = cmd.tty(cols, rows).spawn().await.map_err(friendly)?;
        return interactive(child, &sprite).await;
    }
    if a.http_post {
        if !terminal::stdin_is_tty() {
            let mut input = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut input)
                .await
                .context("reading stdin")?;
            cmd = cmd.stdin_bytes(input);
        }
        let code = cmd
            .run_streaming(
                |d| {
                    use std::io::Write;
                    let mut o = std::io::stdout();
                    let _ = o.write_all(d);
                    let _ = o.flush();
                },
                |d| {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(d);
                },
            )
            .await
            .map_err(friendly)?;
        return Ok(code);
    }
    let mut child = cmd.spawn().await.map_err(friendly)?;
    let mut stdin = child.stdin.take().context("stdin")?;
    if terminal::stdin_is_tty() {
        stdin.shutdown().await.ok();
    } else {
        tokio::spawn(async move {
            let mut local = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match local.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdin.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let o = tokio::spawn(async move { pump(&mut out, 1).await });
    let e = tokio::spawn(async move { pump(&mut err, 2).await });
    let code = child.wait().await.map_err(friendly)?;
    let _ = o.await;
    let _ = e.await;
    Ok(code)
}

/// Drives a TTY session from the local terminal until it exits or the user detaches.
async fn interactive(mut child: Child, sprite: &SpriteHandle) -> Result<i32> {
    let raw = RawMode::enter();
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut out = child.stdout.take().context("stdout")?;
    let (detach_tx, mut detach_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut local = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            match local.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = &buf[..n];
                    if let Some(pos) = data.iter().position(|b| *b == DETACH_KEY) {
                        let _ = stdin.write_all(&data[..pos]).await;
                        let _ = detach_tx.send(()).await;
                        return;
                    }
                    if stdin.write_all(data).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let printer = tokio::spawn(async move {
        let mut w = tokio::io::stdout();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = w.flush().await;
                }
            }
        }
    });
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let mut last = terminal::size();
    let id = child.session_id.clone();
    let result = loop {
        tokio::select! {
            code = child.wait() => break Some(code),
            _ = detach_rx.recv() => break None,
            _ = async { match winch.as_mut() { Some(w) => { w.recv().await; } None => std::future::pending::<()>().await } } => {
                let now = terminal::size();
                if now != last {
                    last = now;
                    let _ = child.resize(now.0, now.1).await;
                }
            }
        }
    };
    match result {
        Some(code) => {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), printer).await;
            drop(raw);
            Ok(code.map_err(friendly)?)
        }
        None => {
            let _ = child.detach().await;
            drop(raw);
            eprintln!(
                "\r\nDetached from session {id}. Reattach with: sprite attach -s {} {id}",
                sprite.name()
            );
            Ok(0)
        }
    }
}

/// The shell to start: the local `$SHELL` if the sprite is likely to have it, else bash.
fn shell() -> String {
    let local = std::env::var("SHELL").unwrap_or_default();
    let name = local.rsplit('/').next().unwrap_or("");
    match name {
        "bash" | "zsh" | "fish" | "tcsh" | "ksh" => name.to_string(),
        _ => "bash".to_string(),
    }
}

/// `sprite console`.
pub async fn console(ctx: &Ctx) -> Result<i32> {
    console_for(&ctx.sprite()?).await
}

/// A login shell in a TTY session of `sprite`.
pub async fn console_for(sprite: &SpriteHandle) -> Result<i32> {
    let sh = shell();
    // Fall back to bash when the sprite lacks the user's shell.
    let script = format!("command -v {sh} >/dev/null 2>&1 && exec {sh} -l || exec bash -l");
    let mut cmd = sprite.command("sh", ["-c".to_string(), script]);
    for var in ["TERM", "COLORTERM", "LANG", "LC_ALL"] {
        if let Ok(v) = std::env::var(var) {
            cmd = cmd.env(var, v);
        }
    }
    let (cols, rows) = terminal::size();
    let child = cmd.tty(cols, rows).spawn().await.map_err(friendly)?;
    interactive(child, sprite).await
}

/// `sprite sessions list`.
pub async fn sessions_list(ctx: &Ctx) -> Result<i32> {
    let sessions = ctx.sprite()?.sessions().await.map_err(friendly)?;
    let live: Vec<_> = sessions.into_iter().filter(|s| !s.exited).collect();
    if live.is_empty() {
        eprintln!("No running sessions.");
        return Ok(0);
    }
    println!(
        "{:<6} {:<4} {:<7} {:<25} COMMAND",
        "ID", "TTY", "ACTIVE", "CREATED"
    );
    for s in live {
        println!(
            "{:<6} {:<4} {:<7} {:<25} {}",
            s.id,
            if s.tty { "yes" } else { "no" },
            if s.is_active { "yes" } else { "no" },
            s.created,
            s.command
        );
    }
    Ok(0)
}

/// `sprite attach [ID]` / `sprite sessions attach [ID]`.
pub async fn attach(ctx: &Ctx, id: Option<String>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let id = match id {
        Some(id) => id,
        None => {
            let sessions = sprite.sessions().await.map_err(friendly)?;
            sessions
                .into_iter()
                .rfind(|s| s.tty && !s.exited)
                .map(|s| s.id)
                .context("no running TTY session to attach to")?
        }
    };
    let child = sprite.attach(&id).await.map_err(friendly)?;
    interactive(child, &sprite).await
}

/// `sprite sessions kill ID`.
pub async fn kill(ctx: &Ctx, id: &str, signal: &str, timeout: &str) -> Result<i32> {
    let events = ctx
        .sprite()?
        .kill_session(id, signal, timeout)
        .await
        .map_err(friendly)?;
    for e in &events {
        match (&e.message, e.exit_code) {
            (Some(m), _) => println!("{m}"),
            (None, Some(c)) if e.kind == "complete" => {
                println!("Session {id} ended with exit code {c}")
            }
            _ => {}
        }
    }
    Ok(0)
}

/// Copies a command's output stream to this process's stdout or stderr (`fd` 1 or 2). Reads
/// gather whatever is ready, up to 1 MiB, without waiting; one thread of its own writes
/// straight to the descriptor (no line buffering, no blocking-pool task per write), so a
/// stream costs about one write(2) per gathered chunk.
async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, fd: std::os::fd::RawFd) {
    use futures::FutureExt;
    const GATHER: usize = 1 << 20;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        // SAFETY: fd 1 or 2 stays open for the life of the process; ManuallyDrop never
        // closes it.
        let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        while let Some(buf) = rx.blocking_recv() {
            if out.write_all(&buf).is_err() {
                break; // a closed pipe: the rest has nowhere to go
            }
        }
    });
    loop {
        let mut buf = vec![0u8; GATHER];
        let mut filled = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while filled < GATHER {
            match r.read(&mut buf[filled..]).now_or_never() {
                Some(Ok(n)) if n > 0 => filled += n,
                _ => break,
            }
        }
        buf.truncate(filled);
        if tx.send(buf).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
}

#[cfg(test)]
mod tests {
    use super::parse_env;

    #[test]
    fn env_lists() {
        let e = parse_env(&["A=1,B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(
            e,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
        assert!(parse_env(&["NOEQ".into()]).is_err());
        assert!(parse_env(&["=v".into()]).is_err());
    }
}
