//! Plumbing of one sprite's network, with Debian's `ip` and `nft`:
//!
//! ```text
//! sprite netns  sp-<id>   eth0 10.0.0.1/24, default via 10.0.0.2, lo
//!      │ veth
//! router netns  sr-<id>   s0 10.0.0.2/24 (DNS :53 served by spritesd), up0 100.64.x.2/30,
//!      │ veth             nftables: private ranges dropped, egress policy, masquerade
//! root netns              spr<slot> 100.64.x.1/30; sprites_host table: nothing from spr*
//!                         reaches the host itself or another sprite; masquerade outwards
//! ```
//!
//! Every sprite sees the same inside view; the router namespace (which the sprite cannot
//! touch) enforces everything. Named namespaces are removed with the sprite, and their veth
//! pairs go with them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::NetError;

/// Address of the sprite inside its namespace.
pub const SPRITE_ADDR: &str = "10.0.0.1";
/// The sprite's gateway and DNS server.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Port of the Connectors gateway on [`GATEWAY`] (served by the host, like DNS).
pub const GATEWAY_PORT: u16 = 80;
/// Uplink space: one /30 per sprite slot.
const UPLINK_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// Destinations a sprite never reaches, whatever the policy says.
pub const PRIVATE_RANGES: &str = "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 224.0.0.0/3";

/// Names and addresses of one sprite's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host-wide uplink slot.
    pub slot: u32,
    /// Sprite id.
    pub id: String,
    /// Sprite namespace name.
    pub sprite_ns: String,
    /// Router namespace name.
    pub router_ns: String,
    /// Root-side interface.
    pub host_if: String,
    /// Root-side uplink address.
    pub host_addr: Ipv4Addr,
    /// Router-side uplink address.
    pub router_addr: Ipv4Addr,
}

/// Host-wide registry of uplink slots: one file per slot naming its sprite, shared by every
/// server on the host (their sprites must not share interfaces or addresses).
const SLOTS_DIR: &str = "/run/sprites-net";
/// Most sprites with a network on one host.
const MAX_SLOTS: u32 = 200_000;

impl Plan {
    /// Finds (or reuses) a host-wide slot for sprite `id` and plans its network.
    pub fn allocate(id: &str) -> Result<Self, NetError> {
        std::fs::create_dir_all(SLOTS_DIR)
            .map_err(|e| NetError::Tool(format!("{SLOTS_DIR}: {e}")))?;
        // Reuse this sprite's slot if it has one.
        if let Ok(dir) = std::fs::read_dir(SLOTS_DIR) {
            for e in dir.flatten() {
                if std::fs::read_to_string(e.path()).ok().as_deref() == Some(id) {
                    if let Some(slot) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                        return Ok(Self::new(id, slot));
                    }
                }
            }
        }
        for slot in 0..MAX_SLOTS {
            let path = format!("{SLOTS_DIR}/{slot}");
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(id.as_bytes())
                        .map_err(|e| NetError::Tool(e.to_string()))?;
                    return Ok(Self::new(id, slot));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A slot whose sprite has no namespaces left was abandoned (a crash).
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let old_enough = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .is_some_and(|t| t.elapsed().map(|d| d.as_secs() > 60).unwrap_or(false));
                    let abandoned =
                        !owner.is_empty() && !exists(&Self::new(&owner, slot)) && old_enough;
                    if abandoned && std::fs::write(&path, id).is_ok() {
                        return Ok(Self::new(id, slot));
                    }
                }
                Err(e) => return Err(NetError::Tool(format!("{path}: {e}"))),
            }
        }
        Err(NetError::Tool("no free network slot on this host".into()))
    }

    /// Hands this (already built) slot to sprite `id`.
    pub fn claim(mut self, id: &str) -> Result<Self, NetError> {
        std::fs::write(format!("{SLOTS_DIR}/{}", self.slot), id)
            .map_err(|e| NetError::Tool(e.to_string()))?;
        self.id = id.to_string();
        Ok(self)
    }

    /// Slots registered to owners that start with `prefix` (for pools left by an earlier run).
    pub fn registered_with_prefix(prefix: &str) -> Vec<Plan> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(SLOTS_DIR) {
            for e in dir.flatten() {
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let (true, Some(slot)) = (
                    owner.starts_with(prefix),
                    e.file_name().to_str().and_then(|n| n.parse().ok()),
                ) {
                    out.push(Self::new(&owner, slot));
                }
            }
        }
        out
    }

    /// Gives the slot back.
    pub fn release(&self) {
        let path = format!("{SLOTS_DIR}/{}", self.slot);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(self.id.as_str()) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The plan of sprite `id` in uplink slot `slot`.
    pub fn new(id: &str, slot: u32) -> Self {
        let net = UPLINK_BASE + slot * 4;
        // Named by slot, not by sprite: a pre-built network can be handed to any sprite.
        Plan {
            slot,
            id: id.to_string(),
            sprite_ns: format!("sp-{slot}"),
            router_ns: format!("sr-{slot}"),
            host_if: format!("spr{slot}"),
            host_addr: Ipv4Addr::from(net + 1),
            router_addr: Ipv4Addr::from(net + 2),
        }
    }

    /// Path of the sprite namespace, to `setns` into.
    pub fn sprite_ns_path(&self) -> String {
        format!("/run/netns/{}", self.sprite_ns)
    }

    /// Path of the router namespace.
    pub fn router_ns_path(&self) -> String {
        format!("/run/netns/{}", self.router_ns)
    }
}

pub(crate) fn run(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Tool(format!("{}: {e}", args[0])))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Tool(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `cmd` with `script` on its stdin; fails with its stderr.
fn feed(mut cmd: Command, what: &str, script: &str) -> Result<(), NetError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NetError::Tool(format!(
                "{what}: {e} (Debian's iproute2 and nftables are needed)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Tool(format!("{what}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Tool(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Tool(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs an nft script in namespace `ns` (or the root namespace).
pub(crate) fn nft(ns: Option<&str>, script: &str) -> Result<(), NetError> {
    let cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    feed(cmd, "nft", script)
}

/// One-time host setup: forwarding, and the root-namespace rules every sprite relies on.
pub fn host_setup() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetError::Tool(format!("enabling IPv4 forwarding: {e}")))?;
    nft(
        None,
        r#"table inet sprites_host
delete table inet sprites_host
table inet sprites_host {
    chain input {
        type filter hook input priority -5; policy accept;
        iifname "spr*" drop
    }
    chain forward {
        type filter hook forward priority -5; policy accept;
        iifname "spr*" oifname "spr*" drop
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        ip saddr 100.64.0.0/10 oifname != "spr*" masquerade
    }
}
"#,
    )
}

/// Runs `ip -batch` with `lines`, in namespace `ns` (or the root namespace).
fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), NetError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    feed(cmd, "ip -batch", &(lines.join("\n") + "\n"))
}

/// Runs `f` on a short-lived thread inside network namespace `ns`: `/proc/sys/net` writes,
/// sockets it makes and child processes it starts belong to that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).map_err(|e| NetError::Tool(format!("{path}: {e}")))?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .map_err(|e| NetError::Tool(format!("setns {path}: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| NetError::Tool("network setup thread panicked".into()))?
}

fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| NetError::Tool(format!("{path}: {e}")))
}

/// Builds the sprite's network. Leftovers of an earlier life are removed first. A handful of
/// processes in all (`ip -batch` per namespace, one `nft`): creating a sprite stays fast.
pub fn setup(p: &Plan) -> Result<(), NetError> {
    teardown(p);
    run(&["ip", "netns", "add", &p.sprite_ns])?;
    run(&["ip", "netns", "add", &p.router_ns])?;
    let (hi, rns, sns) = (&p.host_if, &p.router_ns, &p.sprite_ns);
    // IPv6 is off in both namespaces until it is designed (filtering, NAT, DNS AAAA): before
    // any link exists, so no interface ever gets a link-local address the sprite could use
    // to reach the router. The sprite's root cannot turn it back on (the namespace belongs
    // to the host's user namespace), and the router drops IPv6 anyway.
    // The sprite keeps `::1` on its loopback: programs bind and dial `localhost` there.
    in_netns(sns, || ipv6_off(true))?;
    in_netns(rns, || ipv6_off(false))?;
    ip_batch(
        None,
        &[
            format!("link add {hi} type veth peer name up0 netns {rns}"),
            format!("addr add {}/30 dev {hi}", p.host_addr),
            format!("link set {hi} up"),
        ],
    )?;
    ip_batch(
        Some(rns),
        &[
            format!("link add s0 type veth peer name eth0 netns {sns}"),
            format!("addr add {}/30 dev up0", p.router_addr),
            "addr add 10.0.0.2/24 dev s0".into(),
            "link set lo up".into(),
            "link set up0 up".into(),
            "link set s0 up".into(),
            format!("route add default via {}", p.host_addr),
        ],
    )?;
    ip_batch(
        Some(sns),
        &[
            "addr add 10.0.0.1/24 dev eth0".into(),
            "link set lo up".into(),
            "link set eth0 up".into(),
            "route add default via 10.0.0.2".into(),
        ],
    )?;
    // Unprivileged ICMP sockets, so `ping` works without CAP_NET_RAW.
    in_netns(sns, || sysctl("net.ipv4.ping_group_range", "0 2147483647"))?;
    let rules = router_rules();
    in_netns(rns, move || {
        sysctl("net.ipv4.ip_forward", "1")?;
        nft(None, &rules)
    })
}

fn ipv6_off(keep_loopback: bool) -> Result<(), NetError> {
    let mut keys = vec![
        ("net.ipv6.conf.default.disable_ipv6", "1"),
        ("net.ipv6.conf.all.disable_ipv6", "1"),
    ];
    if keep_loopback {
        keys.push(("net.ipv6.conf.lo.disable_ipv6", "0"));
    }
    for (key, value) in keys {
        match sysctl(key, value) {
            // A kernel without IPv6 has no such keys, and nothing to turn off.
            Err(_) if !std::path::Path::new("/proc/sys/net/ipv6").exists() => {}
            r => r?,
        }
    }
    Ok(())
}

fn router_rules() -> String {
    format!(
        r#"table ip6 sprite6 {{
    chain input {{
        type filter hook input priority 0; policy drop;
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
    }}
}}
table ip sprite {{
    set allowed {{ type ipv4_addr; flags timeout; }}
    chain egress {{
        accept
    }}
    chain replies {{
        accept
    }}
    chain input {{
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "s0" ip daddr 10.0.0.2 udp dport 53 accept
        iifname "s0" ip daddr 10.0.0.2 tcp dport 53 accept
        iifname "s0" ip daddr 10.0.0.2 tcp dport {GATEWAY_PORT} accept
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        iifname "s0" oifname "up0" ip daddr {{ {PRIVATE_RANGES} }} drop
        iifname "s0" oifname "up0" jump egress
        iifname "up0" oifname "s0" ct state established,related jump replies
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "up0" masquerade
    }}
}}
"#
    )
}

/// Switches the router between open egress and "only addresses in @allowed", and replaces
/// the allowed set (so connections to addresses no longer allowed are cut at once).
pub fn apply(p: &Plan, open: bool, allowed: &[Ipv4Addr]) -> Result<(), NetError> {
    let (egress, replies) = if open {
        ("accept".to_string(), "accept".to_string())
    } else {
        (
            "ip daddr @allowed accept".to_string(),
            "ip saddr @allowed accept".to_string(),
        )
    };
    let mut script = format!("flush chain ip sprite egress\nadd rule ip sprite egress {egress}\nflush chain ip sprite replies\nadd rule ip sprite replies {replies}\nflush set ip sprite allowed\n");
    if !allowed.is_empty() {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        script.push_str(&format!(
            "add element ip sprite allowed {{ {} }}\n",
            list.join(", ")
        ));
    }
    nft(Some(&p.router_ns), &script)
}

/// Lets the sprite reach `addrs` (answers of allowed names).
pub fn allow(p: &Plan, addrs: &[Ipv4Addr]) -> Result<(), NetError> {
    if addrs.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    nft(
        Some(&p.router_ns),
        &format!("add element ip sprite allowed {{ {} }}\n", list.join(", ")),
    )
}

/// Removes the sprite's namespaces (and with them its interfaces and rules). Never fails:
/// what is already gone is fine.
pub fn teardown(p: &Plan) {
    let _ = run(&["ip", "netns", "del", &p.sprite_ns]);
    let _ = run(&["ip", "netns", "del", &p.router_ns]);
    let _ = run(&["ip", "link", "del", &p.host_if]);
}

/// Whether the sprite's namespaces exist.
pub fn exists(p: &Plan) -> bool {
    std::path::Path::new(&p.sprite_ns_path()).exists()
        && std::path::Path::new(&p.router_ns_path()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_do_not_collide() {
        let a = Plan::new("sprite-0123abcd-aaaa", 0);
        let b = Plan::new("sprite-0123abcd-aaaa", 1);
        assert_eq!(a.host_addr, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(b.router_addr, Ipv4Addr::new(100, 64, 0, 6));
        assert_ne!(a.host_if, b.host_if);
        assert!(a.host_if.len() <= 15 && Plan::new("x", 49_999).host_if.len() <= 15);
        assert_ne!(a.sprite_ns, b.sprite_ns);
    }
}
