//! Each sprite's network: its namespaces and veth pairs, NAT, nftables rules, and the DNS
//! resolver that enforces the egress policy (see [`netns`] for the layout).
//!
//! Architecture invariant: this crate knows sprites only by id; it never decides when a
//! sprite runs. Everything it enforces lives outside the sprite, where the sprite cannot
//! change it.

pub mod dns;
pub mod netns;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

pub use netns::Plan;
pub use policy::{Compiled, Policy, Rule};

/// Errors of network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool or syscall failed.
    #[error("network: {0}")]
    Tool(String),
    /// A policy was refused.
    #[error("invalid policy: {0}")]
    Policy(String),
}

/// One sprite's live network state.
pub struct SpriteNet {
    /// Names and addresses.
    pub plan: Plan,
    policy: Mutex<(Policy, Compiled)>,
    /// Addresses handed out by DNS, with the names they answered.
    resolved: Mutex<HashMap<Ipv4Addr, HashSet<String>>>,
    dns: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SpriteNet {
    /// Whether the policy lets `name` resolve.
    pub fn allows(&self, name: &str) -> bool {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .allows(name)
    }

    /// Whether egress is unrestricted.
    pub fn is_open(&self) -> bool {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .is_open()
    }

    fn resolved(&self, name: &str, addrs: &[Ipv4Addr]) {
        let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            r.entry(*a).or_default().insert(name.to_string());
        }
    }

    /// Addresses the current policy still allows (some name that resolved to them is allowed).
    fn allowed_addrs(&self) -> Vec<Ipv4Addr> {
        let compiled = self
            .policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        let r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .filter(|(_, names)| names.iter().any(|n| compiled.allows(n)))
            .map(|(a, _)| *a)
            .collect()
    }

    fn enforce(&self) -> Result<(), NetError> {
        netns::apply(&self.plan, self.is_open(), &self.allowed_addrs())
    }
}

/// The networks of all sprites of this server.
pub struct Network {
    upstream: SocketAddr,
    sprites: Mutex<HashMap<String, Arc<SpriteNet>>>,
    policies: Mutex<HashMap<String, Policy>>,
}

/// The first nameserver of the host's resolv.conf.
pub fn host_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim();
        let ip: std::net::IpAddr = ip.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

impl Network {
    /// Prepares the host (forwarding, root rules) and answers names through `upstream`.
    pub fn new(upstream: SocketAddr) -> Result<Arc<Self>, NetError> {
        netns::host_setup()?;
        Ok(Arc::new(Self {
            upstream,
            sprites: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
        }))
    }

    fn compiled(&self, id: &str) -> (Policy, Compiled) {
        let p = self
            .policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default();
        let c = p.compile().unwrap_or_default();
        (p, c)
    }

    /// Builds (or, after a server restart, re-adopts) the network of sprite `id` and starts
    /// its resolver. Returns the plan, whose sprite namespace the sprite must join.
    pub fn up(&self, id: &str) -> Result<Plan, NetError> {
        if let Some(s) = self
            .sprites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            if netns::exists(&s.plan) {
                return Ok(s.plan.clone());
            }
        }
        let plan = Plan::allocate(id)?;
        if !netns::exists(&plan) {
            netns::setup(&plan)?;
        }
        let net = Arc::new(SpriteNet {
            plan: plan.clone(),
            policy: Mutex::new(self.compiled(id)),
            resolved: Mutex::new(HashMap::new()),
            dns: Mutex::new(None),
        });
        net.enforce()?;
        let sock = dns::bind_in_router(&plan)?;
        let task = tokio::spawn(dns::serve(net.clone(), sock, self.upstream));
        *net.dns.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        if let Some(old) = self
            .sprites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), net)
        {
            if let Some(t) = old.dns.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
        Ok(plan)
    }

    /// Removes sprite `id`'s network entirely.
    pub fn down(&self, id: &str) {
        let net = self
            .sprites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let plan = match net {
            Some(n) => {
                if let Some(t) = n.dns.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    t.abort();
                }
                n.plan.clone()
            }
            None => match Plan::allocate(id) {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        netns::teardown(&plan);
        plan.release();
    }

    /// Sets sprite `id`'s egress policy; applied at once if its network is up.
    pub fn set_policy(&self, id: &str, policy: Policy) -> Result<(), NetError> {
        let compiled = policy.compile().map_err(NetError::Policy)?;
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), policy.clone());
        let net = self
            .sprites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(net) = net {
            *net.policy.lock().unwrap_or_else(|e| e.into_inner()) = (policy, compiled);
            net.enforce()?;
        }
        Ok(())
    }

    /// Sprite `id`'s egress policy.
    pub fn policy(&self, id: &str) -> Policy {
        self.compiled(id).0
    }
}
