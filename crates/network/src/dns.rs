//! The per-sprite DNS resolver at 10.0.0.2: refuses names the policy blocks, forwards the rest
//! upstream, and opens exactly the addresses it hands out to the sprite.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
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

/// Serves DNS for one sprite until the task is aborted.
pub async fn serve(net: Arc<SpriteNet>, sock: UdpSocket, upstream: SocketAddr) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(id = %net.plan.id, "DNS socket: {e}");
                return;
            }
        };
        let query = buf[..n].to_vec();
        let (net, sock) = (net.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&net, &query, upstream).await {
                let _ = sock.send_to(&answer, peer).await;
            }
        });
    }
}

fn refused(q: &Message) -> Option<Vec<u8>> {
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::Refused);
    for query in &q.queries {
        r.add_query(query.clone());
    }
    r.to_vec().ok()
}

async fn answer(net: &SpriteNet, query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let name = q.queries.first().map(|x| x.name().to_utf8())?;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !net.allows(&name) {
        tracing::debug!(id = %net.plan.id, %name, "DNS refused by policy");
        return refused(&q);
    }
    let sock = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    sock.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    let resp = buf[..n].to_vec();
    if let Ok(m) = Message::from_vec(&resp) {
        let addrs: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        if !addrs.is_empty() {
            net.resolved(&name, &addrs);
            if !net.is_open() {
                let plan = net.plan.clone();
                let a = addrs.clone();
                // The addresses must be open before the sprite gets the answer.
                let _ = tokio::task::spawn_blocking(move || netns::allow(&plan, &a)).await;
            }
        }
    }
    Some(resp)
}
