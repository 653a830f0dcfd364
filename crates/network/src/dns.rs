//! The per-sprite DNS resolver at 10.0.0.2: refuses names the policy blocks, forwards the rest
//! upstream, and opens exactly the addresses it hands out to the sprite: A records of the asked
//! name or of names its CNAME chain reaches, every one of them allowed. Queries come from a
//! hostile sprite: one question per query, and only an upstream answer to that question counts.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData};
use tokio::net::UdpSocket;

use crate::netns::{self, Plan, GATEWAY};
use crate::{NetError, SpriteNet};

/// Binds UDP 10.0.0.2:53 inside the router namespace, from a short-lived thread (namespaces
/// are per thread; the socket stays in the namespace it was made in).
pub fn bind_in_router(plan: &Plan) -> Result<UdpSocket, NetError> {
    let path = plan.router_ns_path();
    let sock = std::thread::spawn(move || -> Result<std::net::UdpSocket, NetError> {
        let ns = std::fs::File::open(&path).map_err(|e| NetError::Tool(format!("{path}: {e}")))?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::Tool(format!("setns {path}: {e}")))?;
        let s = std::net::UdpSocket::bind(SocketAddr::from((GATEWAY, 53)))
            .map_err(|e| NetError::Tool(format!("binding DNS: {e}")))?;
        s.set_nonblocking(true)
            .map_err(|e| NetError::Tool(e.to_string()))?;
        Ok(s)
    })
    .join()
    .map_err(|_| NetError::Tool("DNS bind thread panicked".into()))??;
    UdpSocket::from_std(sock).map_err(|e| NetError::Tool(e.to_string()))
}

/// Binds a TCP listener on 10.0.0.2:`port` inside the router namespace: only the sprite's
/// own interface reaches it, so a connection accepted there comes from that sprite.
pub fn bind_tcp_in_router(plan: &Plan, port: u16) -> Result<tokio::net::TcpListener, NetError> {
    let path = plan.router_ns_path();
    let l = std::thread::spawn(move || -> Result<std::net::TcpListener, NetError> {
        let ns = std::fs::File::open(&path).map_err(|e| NetError::Tool(format!("{path}: {e}")))?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::Tool(format!("setns {path}: {e}")))?;
        let l = std::net::TcpListener::bind(SocketAddr::from((GATEWAY, port)))
            .map_err(|e| NetError::Tool(format!("binding the gateway listener: {e}")))?;
        l.set_nonblocking(true)
            .map_err(|e| NetError::Tool(e.to_string()))?;
        Ok(l)
    })
    .join()
    .map_err(|_| NetError::Tool("listener bind thread panicked".into()))??;
    tokio::net::TcpListener::from_std(l).map_err(|e| NetError::Tool(e.to_string()))
}

/// Queries of one sprite being answered at once. Each holds a task and an upstream socket
/// for up to [`UPSTREAM_TIMEOUT`]; past this, queries are dropped (resolvers retry), so a
/// flood costs the server a bounded number of file descriptors.
pub const MAX_IN_FLIGHT: usize = 32;

/// Serves DNS for one sprite until the task is aborted.
pub async fn serve(net: Arc<SpriteNet>, sock: UdpSocket, upstream: SocketAddr) {
    let sock = Arc::new(sock);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(id = %net.plan.id, "DNS socket: {e}");
                return;
            }
        };
        let Ok(slot) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (net, sock) = (net.clone(), sock.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(answer) = answer(&net, &query, upstream).await {
                let _ = sock.send_to(&answer, peer).await;
            }
        });
    }
}

/// Names a sprite's resolver answers itself: the gateway at the router's address.
pub const LOCAL_NAMES: &[(&str, Ipv4Addr)] = &[("gateway.sprites.internal", GATEWAY)];

fn local_name(name: &str) -> Option<Ipv4Addr> {
    LOCAL_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
}

/// An authoritative answer for a local name: its A record, nothing for other types.
fn local_answer(q: &Message, question: &Query, addr: Ipv4Addr) -> Option<Vec<u8>> {
    use hickory_proto::rr::{Record, RecordType};
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_query(question.clone());
    if question.query_type() == RecordType::A {
        r.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(addr.into()),
        ));
    }
    r.to_vec().ok()
}

/// How long the upstream has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest CNAME chain followed from the asked name.
const MAX_CHAIN: usize = 8;

fn reply(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    for query in &q.queries {
        r.add_query(query.clone());
    }
    r.to_vec().ok()
}

/// `name` as the policy matches it, or None when a label holds anything but letters, digits,
/// `-` and `_` (a label with a dot or NUL in it would print as another name).
fn policy_name(name: &Name) -> Option<String> {
    let mut labels = Vec::new();
    for l in name.iter() {
        if l.is_empty()
            || !l
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(c))
        {
            return None;
        }
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
    }
    (!labels.is_empty()).then(|| labels.join("."))
}

fn allowed(net: &SpriteNet, name: &Name) -> Option<String> {
    policy_name(name).filter(|n| net.allows(n))
}

async fn answer(net: &SpriteNet, query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    if q.metadata.op_code != OpCode::Query {
        return reply(&q, ResponseCode::NotImp);
    }
    // More than one question would let a denied name ride on an allowed one.
    let [question] = q.queries.as_slice() else {
        return reply(&q, ResponseCode::FormErr);
    };
    // The host's own names (the Connectors gateway) are answered here, whatever the policy.
    if let Some(n) = policy_name(question.name()) {
        if let Some(addr) = local_name(&n) {
            return local_answer(&q, question, addr);
        }
    }
    if allowed(net, question.name()).is_none() {
        tracing::debug!(id = %net.plan.id, name = %question.name(), "DNS refused by policy");
        return reply(&q, ResponseCode::Refused);
    }
    let Some(mut resp) = ask_upstream(&q, upstream).await else {
        return reply(&q, ResponseCode::ServFail);
    };
    let Some(opened) = vet(net, question, &mut resp) else {
        tracing::debug!(id = %net.plan.id, name = %question.name(), "DNS answer leads to a denied name");
        return reply(&q, ResponseCode::Refused);
    };
    resp.metadata.id = q.metadata.id;
    let addrs: Vec<Ipv4Addr> = opened.iter().flat_map(|(_, a)| a.iter().copied()).collect();
    if !addrs.is_empty() {
        for (name, a) in &opened {
            net.resolved(name, a);
        }
        if !net.is_open() {
            let plan = net.plan.clone();
            // The addresses must be open before the sprite gets the answer.
            let _ = tokio::task::spawn_blocking(move || netns::allow(&plan, &addrs)).await;
        }
    }
    resp.to_vec().ok()
}

/// Sends `q` upstream under an id of our own (the sprite knows its id, an accomplice outside
/// would only have to guess the port) and waits for the answer to exactly that question, from
/// exactly that address.
async fn ask_upstream(q: &Message, upstream: SocketAddr) -> Option<Message> {
    let mut out = q.clone();
    out.metadata.id = random_id();
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.ok()?;
    // Connected: the kernel drops datagrams from any other address.
    sock.connect(upstream).await.ok()?;
    sock.send(&out.to_vec().ok()?).await.ok()?;
    let sent = &out.queries[0];
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let matches = from == upstream
            && m.metadata.id == out.metadata.id
            && m.metadata.message_type == MessageType::Response
            && m.metadata.op_code == OpCode::Query
            && matches!(m.queries.as_slice(), [a] if a.name() == sent.name()
                && a.query_type() == sent.query_type()
                && a.query_class() == sent.query_class());
        if matches {
            return Some(m);
        }
    }
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: writes at most b.len() bytes into b. Reads of up to 256 bytes do not fail.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u16::from_ne_bytes(b)
}

/// Keeps only the answer records for the asked name and the names its CNAME chain reaches,
/// each of which must be allowed, drops the additional section (glue for other names), and
/// returns the IPv4 addresses to open by owner name. AAAA records go too: IPv6 is off in
/// sprite networks (see `netns::ipv6_off`). None when the chain reaches a denied name.
fn vet(
    net: &SpriteNet,
    question: &Query,
    resp: &mut Message,
) -> Option<Vec<(String, Vec<Ipv4Addr>)>> {
    let mut chain = vec![question.name().clone()];
    let mut links = Vec::new();
    while chain.len() <= MAX_CHAIN {
        let cur = chain.last()?;
        let next = resp
            .answers
            .iter()
            .enumerate()
            .find_map(|(i, r)| match &r.data {
                RData::CNAME(c) if r.name == *cur => Some((i, c.0.clone())),
                _ => None,
            });
        let Some((i, target)) = next else { break };
        if chain.contains(&target) {
            break;
        }
        allowed(net, &target)?;
        links.push(i);
        chain.push(target);
    }
    let mut opened: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
    let answers = std::mem::take(&mut resp.answers);
    for (i, r) in answers.into_iter().enumerate() {
        let keep = match &r.data {
            RData::CNAME(_) => links.contains(&i),
            RData::AAAA(_) => false,
            _ => chain.contains(&r.name),
        };
        if !keep {
            continue;
        }
        if let (RData::A(a), Some(owner)) = (&r.data, policy_name(&r.name)) {
            match opened.iter_mut().find(|(n, _)| *n == owner) {
                Some((_, v)) => v.push(a.0),
                None => opened.push((owner, vec![a.0])),
            }
        }
        resp.answers.push(r);
    }
    resp.additionals.clear();
    Some(opened)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::Record;
    use proptest::prelude::*;

    use super::*;
    use crate::{Plan, Policy, SpriteNet};

    /// A sprite network record with `allow` allowed and everything else denied (no namespaces:
    /// only the resolver's decisions are under test).
    fn net(allow: &[&str]) -> SpriteNet {
        let policy = Policy::allow_only(allow);
        let compiled = policy.compile().unwrap();
        SpriteNet {
            plan: Plan::new("sprite-props", 0),
            policy: Mutex::new((policy, compiled)),
            resolved: Mutex::new(HashMap::new()),
            dns: Mutex::new(None),
            gateway: Mutex::new(None),
        }
    }

    #[test]
    fn the_gateway_name_is_answered_locally_whatever_the_policy() {
        let n = net(&[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let upstream: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let ask = |t| {
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_utf8("Gateway.Sprites.Internal.").unwrap(),
                t,
            ));
            m.to_vec().unwrap()
        };
        let started = std::time::Instant::now();
        let a = Message::from_vec(
            &rt.block_on(answer(&n, &ask(hickory_proto::rr::RecordType::A), upstream))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(
            matches!(&a.answers[..], [r] if matches!(&r.data, RData::A(x) if x.0 == GATEWAY)),
            "{a:?}"
        );
        let aaaa = Message::from_vec(
            &rt.block_on(answer(
                &n,
                &ask(hickory_proto::rr::RecordType::AAAA),
                upstream,
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(aaaa.answers.is_empty());
        assert!(started.elapsed() < UPSTREAM_TIMEOUT, "asked upstream");
    }

    /// Names by their labels; the last two would print as an allowed name if labels were
    /// joined without care (a dot or a NUL inside a label).
    const NAMES: &[&[&[u8]]] = &[
        &[b"ok", b"test"],
        &[b"ok2", b"test"],
        &[b"bad", b"test"],
        &[b"bad2", b"test"],
        &[b"ok.test"],
        &[b"ok\0", b"test"],
    ];
    const ALLOWED: &[&str] = &["ok.test", "ok2.test"];

    fn record() -> impl Strategy<Value = Record> {
        let name = || {
            proptest::sample::select(NAMES)
                .prop_map(|labels| Name::from_labels(labels.iter().map(|l| l.to_vec())).unwrap())
        };
        prop_oneof![
            (name(), any::<u32>()).prop_map(|(n, a)| Record::from_rdata(
                n,
                60,
                RData::A(A(Ipv4Addr::from(a)))
            )),
            (name(), name()).prop_map(|(n, t)| Record::from_rdata(n, 60, RData::CNAME(CNAME(t)))),
        ]
    }

    proptest! {
        /// Whatever the upstream answers, the resolver opens only A records whose owner is
        /// allowed and is the asked name or on its CNAME chain, and keeps no record of a name
        /// that is not.
        #[test]
        fn only_allowed_names_open(
            answers in proptest::collection::vec(record(), 0..12),
            extra in proptest::collection::vec(record(), 0..4),
        ) {
            let n = net(ALLOWED);
            let q = Query::query(Name::from_utf8("ok.test").unwrap(), hickory_proto::rr::RecordType::A);
            let mut resp = Message::new(1, MessageType::Response, OpCode::Query);
            resp.add_query(q.clone());
            let original = answers.clone();
            for a in answers {
                resp.add_answer(a);
            }
            for a in extra {
                resp.add_additional(a);
            }
            if let Some(opened) = vet(&n, &q, &mut resp) {
                prop_assert!(resp.additionals.is_empty());
                let kept: HashSet<String> = resp.answers.iter().map(|r| r.name.to_ascii()).collect();
                for owner in &kept {
                    prop_assert!(ALLOWED.contains(&owner.trim_end_matches('.')), "kept {owner}");
                }
                for (owner, addrs) in opened {
                    prop_assert!(ALLOWED.contains(&owner.as_str()), "opened {owner}");
                    for a in addrs {
                        prop_assert!(original.iter().any(|r| matches!(&r.data, RData::A(x) if x.0 == a)
                            && r.name.to_ascii().trim_end_matches('.') == owner));
                    }
                }
            }
        }

        /// Bytes from a hostile sprite never panic the resolver; with every name denied it
        /// never asks upstream (the unroutable upstream would make this test slow).
        #[test]
        fn hostile_queries_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let n = net(&[]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let upstream: SocketAddr = "192.0.2.1:53".parse().unwrap();
            let started = std::time::Instant::now();
            let _ = rt.block_on(answer(&n, &bytes, upstream));
            prop_assert!(started.elapsed() < UPSTREAM_TIMEOUT);
        }
    }
}
