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
    gateway: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Serves a sprite's gateway listener (sprite id, listener) until the task is aborted.
pub type GatewayHook =
    Arc<dyn Fn(String, tokio::net::TcpListener) -> tokio::task::JoinHandle<()> + Send + Sync>;

impl SpriteNet {
    fn stop_tasks(&self) {
        for t in [&self.dns, &self.gateway] {
            if let Some(t) = t.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
    }
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

    /// Records what the resolver handed out. Bounded: a sprite can make its resolver answer
    /// endless distinct names (a domain of its own under an allowed wildcard); past the cap an
    /// old address is forgotten, and the sprite resolves its name again when it needs it.
    fn resolved(&self, name: &str, addrs: &[Ipv4Addr]) {
        let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            if !r.contains_key(a) && r.len() >= MAX_RESOLVED {
                if let Some(old) = r.keys().next().copied() {
                    r.remove(&old);
                }
            }
            let names = r.entry(*a).or_default();
            if names.len() < MAX_NAMES_PER_ADDR {
                names.insert(name.to_string());
            }
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

/// Most addresses remembered per sprite as handed out by its resolver.
const MAX_RESOLVED: usize = 16_384;
/// Most names remembered per address (a CDN address answers for many names).
const MAX_NAMES_PER_ADDR: usize = 64;

/// Networks built ahead of time, so creating or waking a sprite does not wait for one.
const POOL_SIZE: usize = 2;
/// Slot owners of pooled networks: `pool:<instance>:<pid>-<n>`.
const POOL_PREFIX: &str = "pool:";

/// The pid of the server that built a pooled network, from its slot owner.
fn pool_owner_pid(owner: &str) -> Option<i32> {
    let rest = owner.strip_prefix(POOL_PREFIX)?;
    let (_, pid_n) = rest.rsplit_once(':')?;
    pid_n.split_once('-')?.0.parse().ok()
}

/// Frees the pooled networks of every server on this host that is gone (a crash or
/// `kill -9` skips [`Network::drain_pool`]); a live server's pool is left alone.
fn reclaim_dead_pools() {
    for p in Plan::registered_with_prefix(POOL_PREFIX) {
        let dead = pool_owner_pid(&p.id)
            .is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            netns::teardown(&p);
            p.release();
        }
    }
}

/// The networks of all sprites of this server.
pub struct Network {
    upstream: SocketAddr,
    /// Owner tag of this server's pooled (unassigned) networks in the slot registry.
    pool_tag: String,
    pool: Mutex<Vec<Plan>>,
    building: std::sync::atomic::AtomicUsize,
    /// Set by [`Network::drain_pool`]: the pool is not refilled any more.
    draining: std::sync::atomic::AtomicBool,
    sprites: Mutex<HashMap<String, Arc<SpriteNet>>>,
    policies: Mutex<HashMap<String, Policy>>,
    gateway: Mutex<Option<GatewayHook>>,
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
    /// `instance` tells this server's pooled networks apart from other servers' on the host.
    pub fn new(upstream: SocketAddr, instance: &str) -> Result<Arc<Self>, NetError> {
        netns::host_setup()?;
        reclaim_dead_pools();
        let net = Arc::new(Self {
            upstream,
            pool_tag: format!("{POOL_PREFIX}{instance}:"),
            pool: Mutex::new(Vec::new()),
            building: std::sync::atomic::AtomicUsize::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            sprites: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            gateway: Mutex::new(None),
        });
        net.refill();
        Ok(net)
    }

    /// Builds pooled networks in the background until the pool is full.
    fn refill(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.draining.load(SeqCst) {
            return;
        }
        let have =
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).len() + self.building.load(SeqCst);
        for _ in have..POOL_SIZE {
            self.building.fetch_add(1, SeqCst);
            let me = self.clone();
            std::thread::spawn(move || {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                // The pid tells a later server whether this pool's owner is gone.
                let tag = format!(
                    "{}{}-{}",
                    me.pool_tag,
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                );
                match Plan::allocate(&tag).and_then(|p| netns::setup(&p).map(|_| p)) {
                    Ok(p) => me.pool.lock().unwrap_or_else(|e| e.into_inner()).push(p),
                    Err(e) => tracing::warn!("pre-building a sprite network: {e}"),
                }
                me.building.fetch_sub(1, SeqCst);
            });
        }
    }

    /// Releases pooled networks, at shutdown: no more are built, the ones being built are
    /// waited for (a few seconds at most), and every slot this process registered for its
    /// pool goes, also one whose network was half built.
    pub fn drain_pool(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.draining.store(true, SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.building.load(SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mine = format!("{}{}-", self.pool_tag, std::process::id());
        for p in Plan::registered_with_prefix(&mine) {
            netns::teardown(&p);
            p.release();
        }
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

    /// Serves each sprite's gateway listener with `hook` from the next network brought up.
    pub fn set_gateway(&self, hook: GatewayHook) {
        *self.gateway.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Builds (or, after a server restart, re-adopts) the network of sprite `id` and starts
    /// its resolver. Returns the plan, whose sprite namespace the sprite must join.
    pub fn up(self: &Arc<Self>, id: &str) -> Result<Plan, NetError> {
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
        // `fresh`: built by us just now (rules open), so an open policy needs no nft run.
        let (plan, fresh) = match Plan::registered_with_prefix(id)
            .into_iter()
            .find(|p| p.id == id && netns::exists(p))
        {
            // Still there from before (a server restart): keep it, rules unknown.
            Some(p) => (p, false),
            None => {
                let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match pooled {
                    Some(p) => (p.claim(id)?, true),
                    None => {
                        let p = Plan::allocate(id)?;
                        netns::setup(&p)?;
                        (p, true)
                    }
                }
            }
        };
        self.refill();
        let net = Arc::new(SpriteNet {
            plan: plan.clone(),
            policy: Mutex::new(self.compiled(id)),
            resolved: Mutex::new(HashMap::new()),
            dns: Mutex::new(None),
            gateway: Mutex::new(None),
        });
        if !(fresh && net.is_open()) {
            net.enforce()?;
        }
        let sock = dns::bind_in_router(&plan)?;
        let task = tokio::spawn(dns::serve(net.clone(), sock, self.upstream));
        *net.dns.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        let hook = self
            .gateway
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            // The old listener of an adopted network is gone with the server that bound it.
            match dns::bind_tcp_in_router(&plan, netns::GATEWAY_PORT) {
                Ok(l) => {
                    *net.gateway.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(hook(id.to_string(), l));
                }
                Err(e) => tracing::warn!(id, "the sprite's gateway listener: {e}"),
            }
        }
        if let Some(old) = self
            .sprites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), net)
        {
            old.stop_tasks();
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
                n.stop_tasks();
                n.plan.clone()
            }
            None => match Plan::registered_with_prefix(id)
                .into_iter()
                .find(|p| p.id == id)
            {
                Some(p) => p,
                None => return,
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
