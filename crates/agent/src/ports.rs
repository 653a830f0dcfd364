//! Port notifications (spec §3.1, §9.1): which TCP ports processes of the sprite listen on,
//! found by watching `/proc/net/tcp{,6}`, announced to the exec session whose process opened
//! the port and to every `/ports/watch` client.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::session::Registry;

const SCAN_EVERY: Duration = Duration::from_millis(200);

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listener {
    port: u16,
    address: String,
    inode: u64,
}

/// The port watcher.
pub struct Ports {
    events: broadcast::Sender<Value>,
    current: Mutex<BTreeMap<u64, (Listener, i32)>>,
}

impl Ports {
    /// Starts watching; events reach sessions in `reg`.
    pub fn spawn(reg: Arc<Registry>) -> Arc<Ports> {
        let ports = Arc::new(Ports {
            events: broadcast::channel(256).0,
            current: Mutex::new(BTreeMap::new()),
        });
        let me = ports.clone();
        tokio::spawn(async move {
            loop {
                // Reading /proc/net/tcp walks the kernel's whole socket hash, so only look
                // while someone can hear about it: an attached exec client or a watcher.
                let listening = me.events.receiver_count() > 0
                    || reg.all().iter().any(|s| s.activity(Duration::ZERO).0 > 0);
                if listening {
                    let found = tokio::task::spawn_blocking(scan).await.unwrap_or_default();
                    me.update(found, &reg);
                }
                tokio::time::sleep(SCAN_EVERY).await;
            }
        });
        ports
    }

    fn update(&self, found: Vec<Listener>, reg: &Registry) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeMap<u64, Listener> = found.into_iter().map(|l| (l.inode, l)).collect();
        let closed: Vec<u64> = cur
            .keys()
            .filter(|k| !now.contains_key(k))
            .copied()
            .collect();
        for inode in closed {
            if let Some((l, pid)) = cur.remove(&inode) {
                self.announce("port_closed", &l, pid, reg);
            }
        }
        for (inode, l) in now {
            if cur.contains_key(&inode) {
                continue;
            }
            let pid = owner_pid(inode).unwrap_or(0);
            self.announce("port_opened", &l, pid, reg);
            cur.insert(inode, (l, pid));
        }
    }

    /// Takes in the current listeners without announcing them (they go out as the list).
    fn update_quietly(&self, found: Vec<Listener>) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeMap<u64, Listener> = found.into_iter().map(|l| (l.inode, l)).collect();
        cur.retain(|k, _| now.contains_key(k));
        for (inode, l) in now {
            cur.entry(inode)
                .or_insert_with(|| (l, owner_pid(inode).unwrap_or(0)));
        }
    }

    fn announce(&self, kind: &str, l: &Listener, pid: i32, reg: &Registry) {
        let ev = json!({ "type": kind, "port": l.port, "address": l.address, "pid": pid });
        let _ = self.events.send(ev.clone());
        if pid > 0 {
            if let Some(sid) = session_id(pid) {
                if let Some(s) = reg.all().into_iter().find(|s| s.pgid == sid) {
                    s.notice(ev.to_string());
                }
            }
        }
    }

    fn list(&self) -> Value {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let ports: Vec<Value> = cur
            .values()
            .map(|(l, pid)| json!({ "port": l.port, "address": l.address, "pid": pid }))
            .collect();
        json!({ "type": "port_list", "ports": ports })
    }
}

/// Listening TCP sockets of the sprite's network namespace.
fn scan() -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr_hex, port_hex)) = f[1].split_once(':') else {
                continue;
            };
            let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), f[9].parse::<u64>())
            else {
                continue;
            };
            let Some(address) = parse_addr(addr_hex, v6) else {
                continue;
            };
            out.push(Listener {
                port,
                address,
                inode,
            });
        }
    }
    out
}

/// `/proc/net/tcp` addresses: 32-bit words in host (little-endian) order.
fn parse_addr(hex: &str, v6: bool) -> Option<String> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| {
            u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16)
                .ok()
                .map(u32::swap_bytes)
        })
        .collect::<Option<_>>()?;
    if v6 {
        let mut b = [0u8; 16];
        for (i, w) in words.iter().enumerate().take(4) {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Some(Ipv6Addr::from(b).to_string())
    } else {
        Some(Ipv4Addr::from(*words.first()?).to_string())
    }
}

/// The process holding socket `inode`.
fn owner_pid(inode: u64) -> Option<i32> {
    let needle = format!("socket:[{inode}]");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .ok()
                .is_some_and(|l| l.as_os_str() == needle.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Session id (field 6 of /proc/PID/stat).
fn session_id(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// `GET /ports/watch` (WebSocket): the current list, then every change.
pub async fn watch(State(ports): State<Arc<Ports>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| watch_client(socket, ports))
}

async fn watch_client(mut socket: WebSocket, ports: Arc<Ports>) {
    let mut rx = ports.events.subscribe();
    // The list must be current even if nobody was watching a moment ago.
    let found = tokio::task::spawn_blocking(scan).await.unwrap_or_default();
    ports.update_quietly(found);
    if socket
        .send(Message::Text(ports.list().to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(v) => if socket.send(Message::Text(v.to_string().into())).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_addr;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(parse_addr("0100007F", false).as_deref(), Some("127.0.0.1"));
        assert_eq!(parse_addr("00000000", false).as_deref(), Some("0.0.0.0"));
        assert_eq!(
            parse_addr("00000000000000000000000000000000", true).as_deref(),
            Some("::")
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000", true).as_deref(),
            Some("::1")
        );
    }
}
