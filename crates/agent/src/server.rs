//! The agent's HTTP server on the inherited listening socket.

use std::os::fd::FromRawFd;
use std::time::Duration;

use std::future::IntoFuture;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sprites_agent_protocol::{
    Activity, AgentInfo, ACTIVITY_PATH, INFO_PATH, LISTEN_FD, PROTOCOL_VERSION, SHUTDOWN_PATH,
};
use sprites_api::{ErrorBody, ErrorCode};

use crate::services::Services;
use crate::session::Registry;

/// Runs the agent server until shutdown. Never returns normally.
pub fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPRITE_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the agent runtime");
    if let Err(e) = rt.block_on(serve()) {
        tracing::error!("agent failed: {e:#}");
        std::process::exit(1)
    }
}

/// Where the host reaches the agent: the Unix socket a launcher hands over, or (in a VM
/// guest) a vsock port.
enum HostListener {
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

/// A connection from the host on either kind of listener.
type HostIo = Box<dyn HostStream>;
trait HostStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> HostStream for T {}

impl axum::serve::Listener for HostListener {
    type Io = HostIo;
    type Addr = ();

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let r: std::io::Result<HostIo> = match self {
                HostListener::Unix(l) => tokio::net::UnixListener::accept(l)
                    .await
                    .map(|(s, _)| Box::new(s) as HostIo),
                HostListener::Vsock(l) => l.accept().await.map(|(s, _)| Box::new(s) as HostIo),
            };
            match r {
                Ok(io) => return (io, ()),
                Err(e) => {
                    tracing::warn!("accepting a host connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(())
    }
}

fn host_listener() -> anyhow::Result<HostListener> {
    if let Ok(port) = std::env::var(sprites_agent_protocol::VSOCK_PORT_ENV_VAR) {
        let port: u32 = port.parse()?;
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        return Ok(HostListener::Vsock(tokio_vsock::VsockListener::bind(addr)?));
    }
    // SAFETY: the launcher leaves a bound, listening Unix socket on LISTEN_FD and nothing
    // else in this process owns that descriptor.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FD) };
    // The launcher hands it over inheritable; no program the agent starts may hold it.
    nix::fcntl::fcntl(
        LISTEN_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    std_listener.set_nonblocking(true)?;
    Ok(HostListener::Unix(tokio::net::UnixListener::from_std(
        std_listener,
    )?))
}

async fn serve() -> anyhow::Result<()> {
    let listener = host_listener()?;
    ensure_hosts_entry();
    // `sprite-env` on the default PATH of login shells too.
    let _ = std::os::unix::fs::symlink("/.sprite/bin/sprite-env", "/usr/local/bin/sprite-env");
    match std::env::var(sprites_agent_protocol::DNS_ENV_VAR) {
        // The host set up the network (loopback included); point the resolver at it.
        Ok(dns) => {
            if let Err(e) = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n")) {
                tracing::warn!("writing /etc/resolv.conf: {e}");
            }
        }
        Err(_) => {
            if let Err(e) = loopback_up() {
                tracing::warn!("bringing up loopback: {e}");
            }
        }
    }
    let _ = std::fs::write(
        "/.sprite/version.txt",
        format!("{}\n", env!("CARGO_PKG_VERSION")),
    );
    let inside = match bind_api_socket() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("cannot serve /.sprite/api.sock: {e}");
            None
        }
    };
    tracing::info!("agent {} ready", env!("CARGO_PKG_VERSION"));
    // The host listener is bound: a VM backend waits for this line before connecting.
    eprintln!("{}", sprites_agent_protocol::READY_MARK);
    let sessions = Arc::new(Registry::default());
    let ports = crate::ports::Ports::spawn(sessions.clone());
    let state = AgentState {
        sessions,
        services: Arc::new(Services::default()),
        ports,
    };
    state.services.boot();
    let host = axum::serve(listener, router(state.clone()));
    match inside {
        Some(l) => {
            let api = axum::serve(l, inside_router(state));
            tokio::try_join!(host.into_future(), api.into_future())?;
        }
        None => host.await?,
    }
    Ok(())
}

/// Makes the sprite's host name resolve locally (sudo and many tools look it up).
fn ensure_hosts_entry() {
    let Ok(host) = nix::unistd::gethostname() else {
        return;
    };
    let host = host.to_string_lossy().into_owned();
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let known = hosts.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == host)
    });
    if !known {
        let mut text = hosts;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("127.0.1.1 {host}\n"));
        if let Err(e) = std::fs::write("/etc/hosts", text) {
            tracing::warn!("updating /etc/hosts: {e}");
        }
    }
}

/// Brings up `lo` in the sprite's network namespace (`ip link set lo up`).
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket fd and a properly initialised ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Path of the in-sprite API socket.
pub const API_SOCKET: &str = "/.sprite/api.sock";

/// Binds `/.sprite/api.sock`, usable by every user of the sprite.
fn bind_api_socket() -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all("/.sprite")?;
    let _ = std::fs::remove_file(API_SOCKET);
    let l = tokio::net::UnixListener::bind(API_SOCKET)?;
    std::fs::set_permissions(API_SOCKET, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Routes of the in-sprite API (`/.sprite/api.sock`, virtual host `sprite`).
pub fn inside_router(state: AgentState) -> Router {
    use crate::tasks;
    Router::new()
        .route(
            "/v1/tasks",
            get(tasks::list)
                .post(tasks::create)
                .put(|b| tasks::upsert(None, b)),
        )
        .route(
            "/v1/tasks/{name}",
            get(tasks::get)
                .put(|p, b| tasks::upsert(Some(p), b))
                .delete(tasks::delete),
        )
        .route("/v1/checkpoints", get(crate::hostcall::forward))
        .route("/v1/checkpoint", post(crate::hostcall::forward))
        .route("/v1/checkpoints/{id}", get(crate::hostcall::forward))
        .route(
            "/v1/checkpoints/{id}/restore",
            post(crate::hostcall::forward),
        )
        .nest("/v1", services_router().with_state(state.services))
        .fallback(|| async { error(ErrorCode::NotFound, "no such route") })
}

/// The routes the agent serves. Public paths match the per-sprite API with the
/// `/v1/sprites/{name}` prefix removed.
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route(INFO_PATH, get(info))
        .route(SHUTDOWN_PATH, post(shutdown))
        .route(sprites_agent_protocol::FSFREEZE_PATH, post(fsfreeze))
        .route(ACTIVITY_PATH, get(activity))
        .route(
            &format!("{}/{{kind}}", sprites_agent_protocol::POLICY_PATH),
            axum::routing::put(put_policy),
        )
        .route("/exec", post(http_exec).get(crate::ws::get_exec))
        .route("/exec/{id}", get(crate::ws::attach))
        .route("/exec/{id}/kill", post(crate::ws::kill))
        .route("/proxy", get(crate::proxy::proxy))
        .with_state(state.sessions.clone())
        .merge(services_router().with_state(state.services.clone()))
        .merge(
            Router::new()
                .route(sprites_agent_protocol::DIAL_PATH, get(crate::proxy::dial))
                .with_state(state.services),
        )
        .merge(
            Router::new()
                .route("/ports/watch", get(crate::ports::watch))
                .with_state(state.ports),
        )
        .merge(crate::fsapi::router())
        .fallback(|| async { error(ErrorCode::NotFound, "no such route in the sprite") })
}

/// The services API (§8.2), mounted on the host socket and, under `/v1`, on api.sock.
fn services_router() -> Router<Arc<Services>> {
    use crate::services as s;
    Router::new()
        .route("/services", get(s::list))
        .route("/services/signal", post(s::signal))
        .route(
            "/services/{name}",
            get(s::get).put(s::put).delete(s::delete),
        )
        .route("/services/{name}/logs", get(s::logs))
        .route("/services/{name}/{action}", post(s::action))
}

/// Shared state of the agent's servers.
#[derive(Clone)]
pub struct AgentState {
    /// Exec sessions.
    pub sessions: Arc<Registry>,
    /// Services.
    pub services: Arc<Services>,
    /// Port watcher.
    pub ports: Arc<crate::ports::Ports>,
}

/// A JSON error response in the public shape.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorBody::new(code, message))).into_response()
}

#[derive(serde::Deserialize)]
struct FreezeQuery {
    freeze: u8,
}

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// Freezes or thaws the filesystem of the sprite's disk as the guest mounted it (VMs only:
/// elsewhere the host freezes the disk itself).
async fn fsfreeze(axum::extract::Query(q): axum::extract::Query<FreezeQuery>) -> Response {
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(sprites_agent_protocol::GUEST_DISK_MOUNT)?;
        let mut arg: libc::c_int = 0;
        // SAFETY: both ioctls take (and ignore) a pointer to an int that outlives the call.
        let r = unsafe {
            if q.freeze == 1 {
                fifreeze(dir.as_raw_fd(), &mut arg)
            } else {
                fithaw(dir.as_raw_fd(), &mut arg)
            }
        };
        match r {
            Ok(_) => Ok(()),
            // Thawing a filesystem that is not frozen is not an error.
            Err(nix::errno::Errno::EINVAL) if q.freeze == 0 => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .await;
    match r {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error(ErrorCode::Internal, format!("fsfreeze: {e}")),
        Err(e) => error(ErrorCode::Internal, e.to_string()),
    }
}

async fn info() -> Json<AgentInfo> {
    let uname = nix::sys::utsname::uname().ok();
    Json(AgentInfo {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel: uname
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// What keeps the sprite awake, as far as the agent can see.
async fn activity(State(reg): State<Arc<Registry>>) -> Json<Activity> {
    let (mut attached, mut busy) = (0u32, 0u32);
    for s in reg.all() {
        let (a, recent) = s.activity(std::time::Duration::from_secs(5));
        attached += a as u32;
        busy += recent as u32;
    }
    let tasks = crate::tasks::live_count();
    Json(Activity {
        active: attached > 0 || busy > 0 || tasks > 0,
        attached,
        busy_sessions: busy,
        tasks,
    })
}

/// Keeps the host's copy of a policy at `/.sprite/policy/<kind>.json` (read-only).
async fn put_policy(
    axum::extract::Path(kind): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    use std::os::unix::fs::PermissionsExt;
    if !kind.chars().all(|c| c.is_ascii_lowercase())
        || serde_json::from_slice::<serde_json::Value>(&body).is_err()
    {
        return error(ErrorCode::BadRequest, "bad policy");
    }
    let dir = std::path::Path::new("/.sprite/policy");
    let path = dir.join(format!("{kind}.json"));
    let tmp = dir.join(format!(".{kind}.json.tmp"));
    let res = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &body))
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444)))
        .and_then(|_| std::fs::rename(&tmp, &path));
    match res {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(
            ErrorCode::Internal,
            format!("writing {}: {e}", path.display()),
        ),
    }
}

async fn shutdown() -> StatusCode {
    tokio::spawn(async {
        // Let the response go out first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        // kill(-1) reaches every process of the sprite but PID 1 and ourselves.
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline && others_alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        nix::unistd::sync();
        std::process::exit(0)
    });
    StatusCode::OK
}

/// Whether any process besides PID 1 and this one is alive.
fn others_alive() -> bool {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .any(|p| p != 1 && p != me)
        })
        .unwrap_or(false)
}

async fn http_exec(
    State(reg): State<Arc<Registry>>,
    Query(q): Query<Vec<(String, String)>>,
    req: Request,
) -> Response {
    crate::exec::http_exec(&reg, q, req).await
}
