//! Real sprite networks (namespaces, veth, nftables, the resolver), probed from inside the
//! sprite's namespace with real packets; the DNS upstream is a server on this host's loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sprites_network::{Network, Plan, Policy};

/// Runs `f` on a thread inside netns `ns`; what it binds stays there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    sprites_network::netns::in_netns(ns, move || Ok(f())).unwrap()
}

fn output(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// One sprite's network, of a `Network` of its own; removed on drop, also when a test fails.
struct Sprite {
    net: Arc<Network>,
    id: String,
    plan: Plan,
}

impl Sprite {
    fn up(upstream: SocketAddr, tag: &str) -> Self {
        let instance = format!("t{}{tag}", std::process::id());
        let net = Network::new(upstream, &instance).unwrap();
        let id = format!("sprite-{instance}");
        let plan = net.up(&id).unwrap();
        Sprite { net, id, plan }
    }

    /// Addresses open in the router's allow set.
    fn opened(&self) -> Vec<Ipv4Addr> {
        let ns = &self.plan.router_ns;
        output(&[
            "ip", "netns", "exec", ns, "nft", "list", "set", "ip", "sprite", "allowed",
        ])
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| Ipv4Addr::from_str(w).ok())
        .collect()
    }

    /// Sends `m` to the resolver from inside the sprite's namespace.
    fn ask(&self, m: &Message) -> Option<Message> {
        let bytes = m.to_vec().unwrap();
        let reply = in_ns(&self.plan.sprite_ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
            s.send_to(&bytes, "10.0.0.2:53").unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.recv(&mut buf).ok()?;
            Some(buf[..n].to_vec())
        })?;
        Some(Message::from_vec(&reply).unwrap())
    }
}

impl Drop for Sprite {
    fn drop(&mut self) {
        self.net.down(&self.id);
        self.net.drain_pool();
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query(questions: &[(&str, RecordType)]) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    for (n, t) in questions {
        m.add_query(Query::query(name(n), *t));
    }
    m
}

fn net(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

fn a(owner: &str, last: u8) -> Record {
    Record::from_rdata(name(owner), 60, RData::A(A(net(last))))
}

fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
}

/// An upstream that answers every question by name, and misbehaves for some names.
fn fake_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            let mut from = &sock;
            for query in &q.queries {
                let qn = query.name().to_ascii();
                let qn = qn.trim_end_matches('.');
                r.add_query(query.clone());
                if query.query_type() == RecordType::AAAA {
                    let v6 = RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::1").unwrap()));
                    r.add_answer(Record::from_rdata(query.name().clone(), 60, v6));
                    continue;
                }
                match qn {
                    "allowed.test" => r.add_answer(a(qn, 1)),
                    "denied.test" => r.add_answer(a(qn, 2)),
                    "also.test" => r.add_answer(a(qn, 3)),
                    "extra.test" => r.add_answer(a(qn, 4)).add_answer(a("stray.test", 5)),
                    "cname-ok.test" => r
                        .add_answer(cname(qn, "also.test"))
                        .add_answer(a("also.test", 3)),
                    "cname-bad.test" => r
                        .add_answer(cname(qn, "denied-target.test"))
                        .add_answer(a("denied-target.test", 9)),
                    "wrongid.test" => {
                        r.metadata.id ^= 1;
                        r.add_answer(a(qn, 6))
                    }
                    "wrongq.test" => {
                        r.queries = vec![Query::query(name("denied.test"), RecordType::A)];
                        r.add_answer(a("denied.test", 7))
                    }
                    "spoof.test" => {
                        from = &other;
                        r.add_answer(a(qn, 8))
                    }
                    _ => &mut r,
                };
            }
            let _ = from.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    addr
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_opens_only_answers_for_allowed_names() {
    let s = Sprite::up(fake_upstream(), "dns");
    let allow = [
        "allowed.test",
        "also.test",
        "extra.test",
        "cname-ok.test",
        "cname-bad.test",
        "wrongid.test",
        "wrongq.test",
        "spoof.test",
    ];
    let policy = Policy::allow_only(&allow);
    s.net.set_policy(&s.id, policy).unwrap();
    let a_of = |n: &str| s.ask(&query(&[(n, RecordType::A)]));

    // An allowed name then a denied one in one query.
    let r = s
        .ask(&query(&[
            ("allowed.test", RecordType::A),
            ("denied.test", RecordType::A),
        ]))
        .expect("an answer");
    assert!(
        matches!(
            r.metadata.response_code,
            ResponseCode::FormErr | ResponseCode::Refused
        ),
        "{r:?}"
    );
    assert!(
        !s.opened().contains(&net(2)),
        "two questions opened the denied name"
    );

    let r = a_of("allowed.test").unwrap();
    assert_eq!((r.metadata.id, addrs(&r)), (0x1234, vec![net(1)]), "{r:?}");
    assert!(s.opened().contains(&net(1)));

    // A CNAME chain: each name is checked, only the chain's addresses open.
    let r = a_of("cname-bad.test").unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{r:?}");
    assert!(
        !s.opened().contains(&net(9)),
        "CNAME to a denied name opened it"
    );
    let r = a_of("cname-ok.test").unwrap();
    assert_eq!(addrs(&r), vec![net(3)], "{r:?}");
    assert!(s.opened().contains(&net(3)));

    // A record for another name in the answer is neither opened nor passed on.
    let r = a_of("extra.test").unwrap();
    assert_eq!(addrs(&r), vec![net(4)], "{r:?}");
    assert!(s.opened().contains(&net(4)) && !s.opened().contains(&net(5)));

    // Answers that do not match the query (id, question, source) do not count.
    for (n, last) in [("wrongid.test", 6), ("wrongq.test", 7), ("spoof.test", 8)] {
        let r = a_of(n);
        assert!(
            r.as_ref().is_none_or(|r| addrs(r).is_empty()),
            "{n}: mismatched answer passed on: {r:?}"
        );
        assert!(
            !s.opened().contains(&net(last)),
            "{n}: mismatched answer opened"
        );
    }

    // AAAA: IPv6 is off in sprite networks, so an allowed name's AAAA records are not passed
    // on (nothing could open them), and a denied name is refused whatever the type.
    let r = s
        .ask(&query(&[("allowed.test", RecordType::AAAA)]))
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{r:?}");
    assert!(r.answers.is_empty(), "{r:?}");
    let r = s.ask(&query(&[("denied.test", RecordType::AAAA)])).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{r:?}");
    assert_eq!(s.opened().len(), 3, "{:?}", s.opened());
}

/// The link-local address the kernel gives an interface with MAC `mac` (EUI-64).
fn link_local(mac: &str) -> Ipv6Addr {
    let b: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        b[0] ^ 2,
        b[1],
        b[2],
        0xff,
        0xfe,
        b[3],
        b[4],
        b[5],
    ])
}

/// IPv6 is not designed yet, so it is off: a listener in the router namespace (where the
/// resolver lives) is not reachable from the sprite over the router's link-local address,
/// and neither is anything beyond it.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_reaches_nothing_from_the_sprite() {
    let s = Sprite::up(fake_upstream(), "v6");
    let (rns, sns) = (s.plan.router_ns.clone(), s.plan.sprite_ns.clone());
    let mac = output(&[
        "ip",
        "netns",
        "exec",
        &rns,
        "cat",
        "/sys/class/net/s0/address",
    ]);
    let router = link_local(&mac);
    // Something listening on every IPv6 address of the router, if it has any.
    let listening = in_ns(&rns, || {
        let l = std::net::TcpListener::bind("[::]:7001").ok()?;
        std::thread::spawn(move || while l.accept().is_ok() {});
        Some(())
    });
    // Addresses are usable once duplicate address detection is done.
    for _ in 0..50 {
        let tentative = [&sns, &rns].iter().any(|ns| {
            output(&["ip", "netns", "exec", ns, "ip", "-6", "addr"]).contains("tentative")
        });
        if !tentative {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reached = in_ns(&sns, move || {
        // SAFETY: a NUL-terminated literal; the call only reads it.
        let scope = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert_ne!(scope, 0, "the sprite has eth0");
        let to = std::net::SocketAddrV6::new(router, 7001, 0, scope);
        std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).is_ok()
    });
    assert!(
        !reached,
        "the sprite reached [{router}]:7001 in the router (listener bound: {listening:?})"
    );
    // The router has no IPv6 address; the sprite only its own loopback's `::1`.
    let addrs = output(&["ip", "netns", "exec", &rns, "ip", "-6", "addr"]);
    assert!(
        addrs.trim().is_empty(),
        "IPv6 addresses in the router: {addrs}"
    );
    let addrs = output(&["ip", "netns", "exec", &sns, "ip", "-6", "-o", "addr"]);
    let lines: Vec<&str> = addrs.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains(" lo ") && lines[0].contains("::1/128"),
        "IPv6 addresses in the sprite: {addrs}"
    );
}

/// An upstream that reads every query and answers none.
fn silent_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while sock.recv_from(&mut buf).is_ok() {}
    });
    addr
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A sprite flooding its resolver while the upstream is slow costs the server a bounded
/// number of sockets (before: one per query for three seconds each).
#[tokio::test(flavor = "multi_thread")]
async fn a_query_flood_costs_bounded_sockets() {
    let s = Sprite::up(silent_upstream(), "flood");
    let before = open_fds();
    let bytes = query(&[("anything.test", RecordType::A)]).to_vec().unwrap();
    in_ns(&s.plan.sprite_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3000 {
            let _ = sock.send_to(&bytes, "10.0.0.2:53");
        }
    });
    // The resolver takes them in as fast as it can; look while the upstream waits are on.
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(open_fds());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most < before + sprites_network::dns::MAX_IN_FLIGHT + 16,
        "{most} fds open during the flood, {before} before"
    );
}
