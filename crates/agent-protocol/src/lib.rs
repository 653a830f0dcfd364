//! The contract between the host (`spritesd`) and the agent inside each sprite.
//!
//! Transport: HTTP/1.1 over one byte stream per request (a Unix socket for the namespace
//! backend, vsock or virtio-serial for a microVM). HTTP keeps the agent a plain server of the
//! public per-sprite paths (`/exec`, `/fs/...`, `/services/...`) so the host can forward a
//! client's request, WebSocket upgrades included, with the `/v1/sprites/{name}` prefix
//! stripped and nothing re-encoded. Host-only operations live under [`PRIVATE_PREFIX`].
//!
//! Versioning: the agent reports [`PROTOCOL_VERSION`] in [`AgentInfo`]; the host refuses to
//! forward to an agent whose version it does not know. Agents inside long-lived sprites are
//! old by definition, so new routes are additive and old ones are never changed in place.

use serde::{Deserialize, Serialize};

/// Current host<->agent protocol generation.
pub const PROTOCOL_VERSION: u32 = 1;

/// Prefix of routes that only the host may call. The public API never forwards to it.
pub const PRIVATE_PREFIX: &str = "/agent/v1";

/// `GET` health and identity probe.
pub const INFO_PATH: &str = "/agent/v1/info";

/// `POST`: stop every process, flush the disk, exit.
pub const SHUTDOWN_PATH: &str = "/agent/v1/shutdown";

/// `GET`: whether anything is going on inside ([`Activity`]), for the idle detector.
pub const ACTIVITY_PATH: &str = "/agent/v1/activity";

/// Answer of [`ACTIVITY_PATH`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Activity {
    /// Anything keeps the sprite awake.
    pub active: bool,
    /// Exec clients attached now.
    pub attached: u32,
    /// Sessions whose processes produced output recently.
    pub busy_sessions: u32,
    /// Live tasks (Tasks API).
    pub tasks: u32,
}

/// `PUT {POLICY_PATH}/{kind}`: keep a read-only copy of a policy at `/.sprite/policy/<kind>.json`.
pub const POLICY_PATH: &str = "/agent/v1/policy";

/// `GET ?port=N` with `Upgrade: tcp`: a raw stream to `127.0.0.1:N` in the sprite (`N=0`: the
/// sprite URL's port). Used for sprite URLs.
pub const DIAL_PATH: &str = "/agent/v1/dial";

/// File descriptor on which the agent finds its already-bound listening socket.
pub const LISTEN_FD: i32 = 3;

/// Request header by which our own SDK asks for length-prefixed exec frames
/// (`[stream u8][len u32 BE][data]`) instead of the paced one-frame-per-chunk stream the
/// official JS client needs. Unknown to official clients, so they always get the paced form.
pub const FRAMING_HEADER: &str = "sprite-exec-framing";

/// Value of [`FRAMING_HEADER`] selecting length-prefixed frames.
pub const FRAMING_LENGTH_PREFIXED: &str = "length-prefixed";

/// `POST` with `?freeze=1|0`: freezes (or thaws) the filesystem of the sprite's disk from
/// inside, for backends whose host cannot (a VM's disk is mounted by the guest kernel).
pub const FSFREEZE_PATH: &str = "/agent/v1/fsfreeze";

/// Where a VM guest keeps the mount of its own disk (the overlay's upper layer lives on it).
pub const GUEST_DISK_MOUNT: &str = "/.sprite/disk";

/// Environment variable telling the agent to listen on this vsock port (VM guests) instead of
/// the inherited [`LISTEN_FD`].
pub const VSOCK_PORT_ENV_VAR: &str = "SPRITE_AGENT_VSOCK_PORT";

/// Vsock port of the agent in VM guests.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Vsock port on the host (CID 2) where a VM guest reaches the server's per-sprite inside
/// API (what `/.sprite/host/api.sock` is elsewhere).
pub const HOST_API_VSOCK_PORT: u32 = 1025;

/// Line the agent writes to stderr (a VM's console) once it accepts host connections.
pub const READY_MARK: &str = "sprite-agent: listening";

/// Set in VM guests: PID 1 powers the machine off when the agent ends.
pub const VM_ENV_VAR: &str = "SPRITE_VM";

/// Answer of [`INFO_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    /// Protocol generation the agent speaks.
    pub protocol: u32,
    /// Agent build version.
    pub version: String,
    /// The sprite's host name.
    pub hostname: String,
    /// Kernel release seen from inside.
    pub kernel: String,
}

/// Environment variable through which the launcher hands the agent the sprite's own
/// environment (a JSON object), laid under every command's environment.
pub const SPRITE_ENV_VAR: &str = "SPRITE_DEFAULT_ENV";

/// Environment variable naming the sprite's DNS server when it has a network (the agent
/// writes it to `/etc/resolv.conf`).
pub const DNS_ENV_VAR: &str = "SPRITE_DNS";

/// Uid of the unprivileged `sprite` user inside every sprite.
pub const SPRITE_UID: u32 = 1000;

/// Gid of the `sprite` user.
pub const SPRITE_GID: u32 = 1000;

/// Home of the `sprite` user and default working directory.
pub const SPRITE_HOME: &str = "/home/sprite";

/// Where the agent binaries appear inside a sprite.
pub const AGENT_BIN_DIR: &str = "/.sprite/bin";

/// A proxy target as `host:port`, IPv6 hosts in brackets: how the agent's raw `/proxy` dial
/// names it in its "cannot reach TARGET: why" errors, which the host turns back into "why".
pub fn proxy_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
