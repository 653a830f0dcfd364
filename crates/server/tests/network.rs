//! Sprite networking: the inside view, NAT to a fake internet, DNS-based egress policy, and
//! isolation from the host and other sprites. All traffic stays on this machine: the
//! "internet" is a network namespace this test makes, with its own DNS and TCP servers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use common::{Api, TestServer};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// These tests change host-wide state (namespaces, interfaces) and count it: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct FakeInternet {
    ns: String,
    host_if: String,
    /// The address DNS hands out for every name.
    web: Ipv4Addr,
    /// An address DNS never hands out.
    hidden: Ipv4Addr,
    dns: SocketAddr,
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// Runs `f` on a thread inside netns `ns`; what it binds stays there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(path).unwrap();
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

impl FakeInternet {
    fn start() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let n = (pid * 7 + k) % 200 + 20;
        let ns = format!("fi{pid}-{k}");
        let host_if = format!("fih{}-{k}", pid % 10000);
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        for a in [format!("198.18.{n}.2/24"), format!("198.18.{n}.3/24")] {
            sh(&["ip", "-n", &ns, "addr", "add", &a, "dev", "eth0"]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{n}.1"),
        ]);
        let web = Ipv4Addr::new(198, 18, n as u8, 2);
        let hidden = Ipv4Addr::new(198, 18, n as u8, 3);
        let dns = SocketAddr::from((web, 53));
        let udp = in_ns(&ns, move || UdpSocket::bind(dns).unwrap());
        std::thread::spawn(move || dns_server(udp, web));
        for addr in [web, hidden] {
            let l = in_ns(&ns, move || TcpListener::bind((addr, 80)).unwrap());
            std::thread::spawn(move || echo_server(l, addr));
        }
        FakeInternet {
            ns,
            host_if,
            web,
            hidden,
            dns,
        }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

/// Answers every A question with `addr`.
fn dns_server(sock: UdpSocket, addr: Ipv4Addr) {
    let mut buf = [0u8; 2048];
    while let Ok((n, peer)) = sock.recv_from(&mut buf) {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
        for query in &q.queries {
            r.add_query(query.clone());
            r.add_answer(Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(A(addr)),
            ));
        }
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}

/// Greets with its address, then echoes lines.
fn echo_server(l: TcpListener, addr: Ipv4Addr) {
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut w = conn.try_clone().unwrap();
            // One write per line: a formatted write may go out in pieces.
            let _ = w.write_all(format!("hello from {addr}\n").as_bytes());
            for line in BufReader::new(conn).lines().map_while(Result::ok) {
                if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

/// A Python one-liner in the sprite that connects to host:80 and prints the greeting.
fn fetch(host: &str) -> String {
    format!("import socket\ntry:\n s=socket.create_connection(('{host}',80),timeout=3); print(s.recv(100).decode().strip())\nexcept Exception as e: print('error', type(e).__name__, e)")
}

#[tokio::test]
async fn egress_policy_through_dns_and_nftables() {
    let _serial = SERIAL.lock().await;
    let inet = FakeInternet::start();
    let upstream = inet.dns.to_string();
    let s = TestServer::start_with(&["--dns-upstream", &upstream]).unwrap();
    let api = Api::new(&s);
    api.create("net").await;

    // The inside view.
    let o = api
        .sh(
            "net",
            "ip -4 -br addr show eth0; ip route | head -1; cat /etc/resolv.conf",
        )
        .await;
    assert!(
        o.stdout.contains("10.0.0.1/24")
            && o.stdout.contains("default via 10.0.0.2")
            && o.stdout.contains("nameserver 10.0.0.2"),
        "{o:?}"
    );
    // Open by default: names resolve and connect (through NAT).
    let o = api
        .exec("net", &["python3", "-c", &fetch("allowed.test")])
        .await;
    assert_eq!(o.stdout.trim(), format!("hello from {}", inet.web), "{o:?}");
    let o = api
        .exec("net", &["python3", "-c", &fetch(&inet.hidden.to_string())])
        .await;
    assert_eq!(
        o.stdout.trim(),
        format!("hello from {}", inet.hidden),
        "open policy: raw IPs work"
    );
    // Private ranges never.
    let o = api
        .exec("net", &["python3", "-c", &fetch("10.0.0.2")])
        .await;
    assert!(o.stdout.starts_with("error"), "{o:?}");

    let (st, v) = api
        .json(Method::GET, "/v1/sprites/net/policy/network", None)
        .await;
    assert_eq!((st, v), (StatusCode::OK, json!({"rules": []})));
    let policy = json!({"rules": [{"domain": "allowed.test", "action": "allow"}, {"domain": "*", "action": "deny"}]});
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites/net/policy/network",
            Some(policy.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = api
        .json(Method::GET, "/v1/sprites/net/policy/network", None)
        .await;
    assert_eq!(v, policy);
    let o = api
        .exec("net", &["cat", "/.sprite/policy/network.json"])
        .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap(),
        policy,
        "read-only copy inside"
    );

    // Allowed name resolves and connects; denied name is REFUSED; raw IPs are dropped.
    let o = api
        .exec("net", &["python3", "-c", &fetch("allowed.test")])
        .await;
    assert_eq!(o.stdout.trim(), format!("hello from {}", inet.web), "{o:?}");
    let o = api.exec("net", &["python3", "-c", "import socket\ntry: socket.getaddrinfo('denied.test', 80); print('resolved')\nexcept socket.gaierror as e: print('gaierror', e.errno)"]).await;
    assert!(
        o.stdout.starts_with("gaierror"),
        "denied name must not resolve: {o:?}"
    );
    let o = api.sh("net", "python3 - <<'EOF'\nimport socket\nq=bytes.fromhex('abcd01000001000000000000')+b'\\x06denied\\x04test\\x00\\x00\\x01\\x00\\x01'\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3); s.sendto(q,('10.0.0.2',53)); r=s.recv(512); print('rcode', r[3] & 15)\nEOF").await;
    assert_eq!(o.stdout.trim(), "rcode 5", "REFUSED: {o:?}");
    let o = api
        .exec("net", &["python3", "-c", &fetch(&inet.hidden.to_string())])
        .await;
    assert!(
        o.stdout.starts_with("error"),
        "a raw IP nobody resolved is unreachable: {o:?}"
    );

    // A live rule change cuts an open connection to a newly blocked name.
    let probe = "import socket,os,time\ns=socket.create_connection(('allowed.test',80),timeout=3)\nprint(s.recv(100).decode().strip(), flush=True)\nwhile not os.path.exists('/tmp/go'): time.sleep(0.05)\ns.settimeout(2)\ntry:\n s.sendall(b'ping\\n'); print('alive', s.recv(100).decode().strip())\nexcept Exception as e: print('cut', type(e).__name__)";
    api.sh("net", &format!("cat > /tmp/probe.py <<'EOF'\n{probe}\nEOF"))
        .await;
    let api2 = Api::new(&s);
    let runner = tokio::spawn(async move { api2.exec("net", &["python3", "/tmp/probe.py"]).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deny = json!({"rules": [{"domain": "*", "action": "deny"}]});
    let (st, _) = api
        .json(Method::POST, "/v1/sprites/net/policy/network", Some(deny))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    api.exec("net", &["touch", "/tmp/go"]).await;
    let o = runner.await.unwrap();
    assert!(
        o.stdout.contains("hello from") && o.stdout.contains("cut"),
        "{o:?}"
    );

    // Bad policies are refused with 400 and change nothing.
    let (st, e) = api
        .json(
            Method::POST,
            "/v1/sprites/net/policy/network",
            Some(json!({"rules": [{"domain": "x*y", "action": "allow"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    // {"rules":[]} opens again.
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites/net/policy/network",
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let o = api
        .exec("net", &["python3", "-c", &fetch(&inet.hidden.to_string())])
        .await;
    assert_eq!(o.stdout.trim(), format!("hello from {}", inet.hidden));
}

#[tokio::test]
async fn sprites_cannot_reach_the_host_or_each_other() {
    let _serial = SERIAL.lock().await;
    let inet = FakeInternet::start();
    let s = TestServer::start_with(&["--dns-upstream", &inet.dns.to_string()]).unwrap();
    let api = Api::new(&s);
    api.create("a").await;
    api.create("b").await;
    // b listens on all addresses.
    api.exec(
        "b",
        &[
            "bash",
            "-c",
            "setsid python3 -m http.server 8000 >/dev/null 2>&1 < /dev/null &",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let o = api.exec("b", &["python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/',timeout=3).status)"]).await;
    assert_eq!(o.stdout.trim(), "200", "the server runs: {o:?}");
    // Every address the host has (API port included) and every uplink address.
    let host_port: u16 = s.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut targets = vec![(inet.web.to_string(), 53u16)];
    for line in String::from_utf8(
        Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    {
        if let Some(a) = line
            .split_whitespace()
            .nth(3)
            .and_then(|c| c.split('/').next())
        {
            if a != inet.web.to_string() && !a.starts_with("198.18.") {
                targets.push((a.to_string(), host_port));
            }
        }
    }
    // Probe them all at once from a (non-root) process in sprite a.
    let list: Vec<String> = targets
        .iter()
        .filter(|(a, _)| {
            !a.starts_with("198.18") && !a.starts_with("100.6") && !a.starts_with("100.7")
        })
        .map(|(a, p)| format!("('{a}',{p})"))
        .collect();
    assert!(!list.is_empty());
    let probe = format!(
        "import socket, concurrent.futures as f\ndef t(x):\n try:\n  socket.create_connection(x,timeout=1.5); return 'reached %s:%d' % x\n except Exception: return 'blocked'\nprint('\\n'.join(f.ThreadPoolExecutor(32).map(t, [{}])))",
        list.join(",")
    );
    let o = api.exec("a", &["python3", "-c", &probe]).await;
    assert!(
        !o.stdout.contains("reached") && o.stdout.contains("blocked"),
        "host reachable from a sprite: {o:?}"
    );
    // The other sprite's port 8000 at 10.0.0.1 is a's own address, not b's: nothing there.
    let o = api.exec("a", &["python3", "-c", "import socket\ntry:\n socket.create_connection(('10.0.0.1',8000),timeout=2); print('reached')\nexcept Exception as e: print('blocked', type(e).__name__)"]).await;
    assert!(o.stdout.starts_with("blocked"), "{o:?}");
    let _ = Ipv4Addr::from_str("0.0.0.0");
}

#[tokio::test]
async fn create_destroy_cycles_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let inet = FakeInternet::start();
    let s = TestServer::start_with(&["--dns-upstream", &inet.dns.to_string()]).unwrap();
    let api = Api::new(&s);
    let cycles: usize = std::env::var("SPRITES_NET_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut ids = Vec::new();
    for i in 0..cycles {
        let name = format!("c{i}");
        ids.push(api.create(&name).await["id"].as_str().unwrap().to_string());
        let r = api
            .req(Method::DELETE, &format!("/v1/sprites/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    // Let the pre-built pool finish refilling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No slot is still held by a deleted sprite...
    let registry: Vec<(String, String)> = std::fs::read_dir("/run/sprites-net")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (slot, owner) in &registry {
        assert!(
            !ids.contains(owner),
            "slot {slot} still held by deleted {owner}"
        );
    }
    // ...and every sprite namespace and uplink interface on the host belongs to a live slot.
    let slots: std::collections::HashSet<&str> = registry.iter().map(|(s, _)| s.as_str()).collect();
    let netns = host_netns();
    for name in netns.iter().map(String::as_str) {
        if let Some(n) = name
            .strip_prefix("sp-")
            .or_else(|| name.strip_prefix("sr-"))
        {
            assert!(slots.contains(n), "namespace {name} has no slot: leaked");
        }
    }
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for l in links.lines() {
        if let Some(n) = l
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.strip_prefix("spr"))
            .map(|n| n.split('@').next().unwrap_or("").trim_end_matches(':'))
        {
            assert!(slots.contains(n), "interface spr{n} has no slot: leaked");
        }
    }
}

/// Names of the host's network namespaces.
fn host_netns() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| Some(l.split_whitespace().next()?.to_string()))
        .collect()
}

/// Slots of the networks server `s` built ahead of time (`pool:<instance>:<pid>-<n>`).
fn pool_slots(s: &TestServer) -> Vec<String> {
    let tag = format!("pool:{}:", sprites_testing::instance_name(&s.data_dir));
    std::fs::read_dir("/run/sprites-net")
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|o| o.starts_with(&tag)))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_pool(s: &TestServer) -> Vec<String> {
    for _ in 0..100 {
        let slots = pool_slots(s);
        if slots.len() == 2 {
            return slots;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the pool never filled: {:?}", pool_slots(s));
}

/// A stopped server gives back the networks it built ahead; a killed one's are reclaimed by
/// the next server that starts on the host (before, about 150 stale slots piled up).
#[tokio::test]
async fn pooled_networks_are_released_at_stop_and_reclaimed_after_a_crash() {
    let _serial = SERIAL.lock().await;
    let args = ["--dns-upstream", "127.0.0.1:9"];
    let mut stopped = TestServer::start_with(&args).unwrap();
    wait_pool(&stopped).await;
    assert!(stopped.terminate().unwrap(), "{}", stopped.log());
    assert_eq!(
        pool_slots(&stopped),
        Vec::<String>::new(),
        "{}",
        stopped.log()
    );

    let mut killed = TestServer::start_with(&args).unwrap();
    let slots = wait_pool(&killed).await;
    killed.kill9();
    assert_eq!(pool_slots(&killed).len(), 2, "kill -9 cannot release");
    let next = TestServer::start_with(&args).unwrap();
    assert_eq!(pool_slots(&killed), Vec::<String>::new(), "not reclaimed");
    let netns = host_netns();
    // The new server may take the freed slots for its own pool; anything else is gone.
    let reused = pool_slots(&next);
    for slot in slots.iter().filter(|s| !reused.contains(s)) {
        assert!(!std::path::Path::new(&format!("/run/sprites-net/{slot}")).exists());
        for ns in [format!("sp-{slot}"), format!("sr-{slot}")] {
            assert!(!netns.contains(&ns), "{ns} of a dead server is still there");
        }
    }
    wait_pool(&next).await;
}
