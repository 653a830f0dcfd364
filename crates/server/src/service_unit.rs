//! `spritesd install-service`: `spritesd serve` as a systemd unit.
//!
//! `KillMode=process`: stopping the unit ends spritesd only. Sprites (their launchers, QEMU
//! and vsock processes) keep running, as they do when spritesd stops by hand, and the next
//! start adopts them; systemd's default would kill every sprite with the server.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Directory of the unit file.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Name of the unit (`<name>.service`).
    #[arg(long, default_value = "spritesd")]
    name: String,
    /// The spritesd binary the unit runs (default: this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Write the unit only: no `systemctl daemon-reload`, `enable` or `start`.
    #[arg(long)]
    no_start: bool,
    /// Arguments of `spritesd serve` (after `--`), checked before anything is written.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// Quotes one argument for a unit's `ExecStart` (systemd's own quoting, not a shell's).
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    {
        return arg.to_string();
    }
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The unit file's text.
pub fn unit(bin: &Path, serve_args: &[String]) -> String {
    let mut exec = vec![quote(&bin.to_string_lossy()), "serve".to_string()];
    exec.extend(serve_args.iter().map(|a| quote(a)));
    format!(
        "# Written by `spritesd install-service`; run it again to change the arguments.
[Unit]
Description=Sprites API server (spritesd)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={}
# Sprites outlive the server: a stop ends spritesd only, the next start adopts them.
KillMode=process
Restart=on-failure
RestartSec=2s
TimeoutStopSec=30s
# Every sprite holds sockets, pipes and processes of its own.
LimitNOFILE=1048576
TasksMax=infinity
# Logs (stderr) go to the journal: journalctl -u <unit>.
StandardOutput=journal
StandardError=journal
Environment=SPRITES_LOG=info

[Install]
WantedBy=multi-user.target
",
        exec.join(" ")
    )
}

/// Writes the unit (whole or not at all), then enables and starts it unless asked not to.
/// `check` validates the serve arguments.
pub fn install(
    a: &InstallArgs,
    check: impl FnOnce(&[String]) -> Result<(), String>,
) -> anyhow::Result<()> {
    if a.name.is_empty()
        || !a
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        bail!(
            "--name must be letters, digits and -_.@ only, got {:?}",
            a.name
        );
    }
    check(&a.serve_args).map_err(|e| anyhow::anyhow!("the serve arguments: {}", e.trim()))?;
    let bin = match &a.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    let bin = bin
        .canonicalize()
        .with_context(|| format!("{} does not exist", bin.display()))?;
    std::fs::create_dir_all(&a.unit_dir)
        .with_context(|| format!("creating {}", a.unit_dir.display()))?;
    let path = a.unit_dir.join(format!("{}.service", a.name));
    let tmp = a.unit_dir.join(format!(".{}.service.tmp", a.name));
    std::fs::write(&tmp, unit(&bin, &a.serve_args))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if a.no_start {
        println!(
            "start it with: systemctl daemon-reload && systemctl enable --now {}",
            a.name
        );
        return Ok(());
    }
    for args in [
        vec!["daemon-reload"],
        vec!["enable", "--now", a.name.as_str()],
    ] {
        let st = Command::new("systemctl")
            .args(&args)
            .status()
            .context("running systemctl (is this a systemd host?)")?;
        if !st.success() {
            bail!(
                "systemctl {} failed ({st}); the unit is written, see `systemctl status {}`",
                args.join(" "),
                a.name
            );
        }
    }
    println!("{} is running; logs: journalctl -u {} -f", a.name, a.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_systemd() {
        assert_eq!(quote("--listen"), "--listen");
        assert_eq!(quote("0.0.0.0:7780"), "0.0.0.0:7780");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("50%$x\"y"), "\"50%%$$x\\\"y\"");
        assert_eq!(quote(""), "\"\"");
        let u = unit(
            Path::new("/usr/local/bin/spritesd"),
            &["--data-dir".into(), "/srv/my sprites".into()],
        );
        assert!(
            u.contains("ExecStart=/usr/local/bin/spritesd serve --data-dir \"/srv/my sprites\"\n")
        );
        assert!(u.contains("KillMode=process\n"));
    }
}
