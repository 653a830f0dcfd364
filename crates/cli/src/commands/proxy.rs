//! `sprite proxy 3000 3001:3000 ...` and `sprite proxy -W [host]:port` (stdio, for ssh's
//! ProxyCommand).

use anyhow::{bail, Context, Result};
use sprites::PortMapping;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::context::{friendly, Ctx};

/// Parses `3000`, `3001:3000`.
pub fn parse_mapping(s: &str) -> Result<PortMapping> {
    let port = |p: &str| -> Result<u16> {
        let n: u16 = p
            .parse()
            .with_context(|| format!("{p:?} is not a port number"))?;
        if n == 0 {
            bail!("port 0 is not allowed");
        }
        Ok(n)
    };
    Ok(match s.split_once(':') {
        Some((l, r)) => PortMapping {
            local_port: port(l)?,
            remote_port: port(r)?,
            remote_host: None,
        },
        None => {
            let p = port(s)?;
            PortMapping {
                local_port: p,
                remote_port: p,
                remote_host: None,
            }
        }
    })
}

/// Parses `-W [host]:port`.
pub fn parse_stdio(s: &str) -> Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .with_context(|| format!("-W takes [host]:port, got {s:?}"))?;
    let host = h.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = p
        .parse()
        .with_context(|| format!("{p:?} is not a port number"))?;
    Ok((
        if host.is_empty() {
            "localhost".into()
        } else {
            host.to_string()
        },
        port,
    ))
}

/// Runs the proxy until Ctrl+C (or, with `-W`, until either side closes).
pub async fn proxy(ctx: &Ctx, ports: &[String], stdio: Option<String>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    if let Some(target) = stdio {
        let (host, port) = parse_stdio(&target)?;
        let conn = sprite.proxy_socket(&host, port).await.map_err(friendly)?;
        let (mut rd, mut wr) = tokio::io::split(conn);
        let up = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The proxy has no half-close: keep the connection until the far side ends it.
        };
        let down = async {
            let mut out = tokio::io::stdout();
            let _ = tokio::io::copy(&mut rd, &mut out).await;
            let _ = out.flush().await;
        };
        tokio::select! {
            _ = down => {}
            _ = async { up.await; std::future::pending::<()>().await } => {}
        }
        return Ok(0);
    }
    if ports.is_empty() {
        bail!("give at least one port (3000 or LOCAL:REMOTE), or -W host:port");
    }
    let mappings: Vec<PortMapping> = ports
        .iter()
        .map(|p| parse_mapping(p))
        .collect::<Result<_>>()?;
    let sessions = sprite.proxy_ports(&mappings).await.map_err(friendly)?;
    for s in &sessions {
        eprintln!(
            "Forwarding localhost:{} -> {}:{} in sprite {}",
            s.local_addr.port(),
            s.remote_host,
            s.remote_port,
            sprite.name()
        );
    }
    eprintln!("Press Ctrl+C to stop.");
    tokio::signal::ctrl_c().await.ok();
    for s in &sessions {
        s.close();
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        assert_eq!(
            parse_mapping("3000").unwrap(),
            PortMapping {
                local_port: 3000,
                remote_port: 3000,
                remote_host: None
            }
        );
        assert_eq!(parse_mapping("3001:3000").unwrap().local_port, 3001);
        assert!(
            parse_mapping("abc").is_err()
                && parse_mapping("0").is_err()
                && parse_mapping("1:99999").is_err()
        );
        assert_eq!(parse_stdio(":22").unwrap(), ("localhost".into(), 22));
        assert_eq!(
            parse_stdio("10.0.0.1:5432").unwrap(),
            ("10.0.0.1".into(), 5432)
        );
        assert_eq!(parse_stdio("[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(parse_stdio("22").is_err());
    }
}
