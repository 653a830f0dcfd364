//! `spritesd`: the Sprites API server.
//!
//! It authenticates requests, keeps orgs, tokens and sprite records in SQLite, wakes the sprite
//! a request names and forwards per-sprite calls to the agent inside it. It never touches
//! namespaces, KVM or guest frames itself: those belong to the runtime crates.

mod auth;
mod checkpoints;
mod config;
mod connectors;
mod console;
mod error;
mod forks;
mod hostapi;
mod http;
mod images;
mod limits;
mod mcp;
mod metrics;
mod service;
mod service_unit;
mod store;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sprites_runtime::Runtime;
use sprites_runtime_namespace::{NamespaceBackend, NamespaceConfig};
use sprites_storage::image::{Images, Profile};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "spritesd", version, about = "Self-hosted Sprites server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server.
    Serve(Box<ServeArgs>),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Manage the base image.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Manage the key that seals connectors' credentials.
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Install `spritesd serve` as a systemd service (logs in the journal; stopping it leaves
    /// sprites running, the next start adopts them), enable and start it.
    ///
    /// Example: `spritesd install-service -- --listen 0.0.0.0:7780 --url-domain sprites.example.com`
    InstallService(service_unit::InstallArgs),
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Seal every stored credential under a new key and retire the old one; a running
    /// server keeps working throughout (it reads the key file when it changes).
    RotateKey {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Where state, disks and runtime files live.
    #[arg(long, env = "SPRITES_DATA_DIR", default_value = "/var/lib/sprites")]
    data_dir: PathBuf,
    /// Where the base image is cached (default: <data-dir>/images). Several servers may share one.
    #[arg(long, env = "SPRITES_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
}

impl DataArgs {
    fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Profile of the base image built when there is none yet (`full` or `slim`).
    #[arg(long, env = "SPRITES_IMAGE_PROFILE", default_value = "full")]
    image_profile: Profile,
    /// Address to listen on.
    #[arg(long, env = "SPRITES_LISTEN", default_value = "127.0.0.1:7780")]
    listen: SocketAddr,
    /// Base domain of sprite URLs (`<name>-<org id>.<domain>:<port>`).
    #[arg(long, env = "SPRITES_URL_DOMAIN", default_value = "sprites.localhost")]
    url_domain: String,
    /// The agent binary (default: `sprite-agent` next to this executable).
    #[arg(long, env = "SPRITES_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Default memory limit of a sprite, in MiB (at most the host's memory).
    #[arg(long, env = "SPRITES_MEMORY_MB", default_value_t = 2048)]
    memory_mb: u64,
    /// Largest memory limit a sprite may ask for, in MiB (default: the host's memory).
    #[arg(long, env = "SPRITES_MAX_MEMORY_MB")]
    max_memory_mb: Option<u64>,
    /// Most processes per sprite (default: 4096, less where the host has few process ids).
    /// All sprites together never take more than the host's `pid_max` less a reserve.
    #[arg(long, env = "SPRITES_PIDS_LIMIT")]
    pids_limit: Option<u64>,
    /// Idle time after which a running sprite is frozen (warm), e.g. `10s`.
    #[arg(long, env = "SPRITES_WARM_AFTER", default_value = "10s", value_parser = duration)]
    warm_after: std::time::Duration,
    /// Time warm after which a sprite is stopped (cold), e.g. `15m`.
    #[arg(long, env = "SPRITES_COLD_AFTER", default_value = "15m", value_parser = duration)]
    cold_after: std::time::Duration,
    /// Give sprites a network (veth, NAT, DNS with egress policy); `false` = loopback only.
    #[arg(long, env = "SPRITES_NETWORK", default_value_t = true, action = clap::ArgAction::Set)]
    network: bool,
    /// DNS server sprites' queries are forwarded to (default: the host's first nameserver).
    #[arg(long, env = "SPRITES_DNS_UPSTREAM")]
    dns_upstream: Option<SocketAddr>,
    /// Where checkpoints are stored: a folder (default: <data-dir>/objects) or
    /// `s3://bucket/prefix` for any S3-compatible store, configured by the usual `AWS_*`
    /// variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`).
    #[arg(long, env = "SPRITES_OBJECT_STORE")]
    object_store: Option<String>,
    /// Which kind of sprite to run: `microvm` (own kernel; KVM where the host has real
    /// hardware virtualization, else software emulation), `namespace` (Linux namespaces), or
    /// `auto` (microvm only with real KVM). The server logs what it chose and why.
    #[arg(long, env = "SPRITES_BACKEND", default_value = "namespace", value_parser = ["auto", "microvm", "namespace"])]
    backend: String,
    /// The vhost-user vsock program microVMs use (default: `vhost-device-vsock` on the PATH).
    #[arg(long, env = "SPRITES_VSOCK_BIN")]
    vsock_bin: Option<PathBuf>,
    /// Most memory a microVM guest gets, in MiB (its sprite's memory limit caps it too).
    #[arg(long, env = "SPRITES_VM_MEMORY_MB", default_value_t = 1024)]
    vm_memory_mb: u64,
    /// A provider setting for connectors, `NAME.FIELD=VALUE` (repeatable): `base_url`, and
    /// for OAuth providers `authorize_url`, `token_url`, `scopes`, `client_id`,
    /// `client_secret_file`.
    #[arg(
        long = "provider",
        env = "SPRITES_PROVIDERS",
        value_delimiter = ',',
        value_name = "NAME.FIELD=VALUE"
    )]
    providers: Vec<String>,
    /// Offer this server's own credential for a provider to every org, `PROVIDER=FILE`
    /// (repeatable); orgs enable it with `POST /v1/oauth/connections/provision`.
    #[arg(
        long = "managed-connector",
        env = "SPRITES_MANAGED_CONNECTORS",
        value_delimiter = ',',
        value_name = "PROVIDER=FILE"
    )]
    managed_connectors: Vec<String>,
    /// Let the gateway send credentials to private, loopback and link-local addresses
    /// (refused by default, so a provider URL cannot aim them at the host's own services).
    #[arg(long, env = "SPRITES_GATEWAY_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    gateway_allow_private: bool,
    /// Let the MCP authorization server fetch clients' metadata documents (URL client ids)
    /// from private addresses and over plain HTTP; off by default (an SSRF guard).
    #[arg(long, env = "SPRITES_MCP_METADATA_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    mcp_metadata_allow_private: bool,
    /// Base URL people reach the API at, for OAuth redirects and setup links (default:
    /// `http://<listen address>`).
    #[arg(long, env = "SPRITES_PUBLIC_URL")]
    public_url: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`), for the API and sprite
    /// URLs alike; a wildcard certificate for `*.<url-domain>` covers every sprite URL.
    #[arg(long, env = "SPRITES_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "SPRITES_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CLI builds for other platforms, offered to `install.sh` and `sprite upgrade` beside
    /// this host's own (the `sprite` next to spritesd): `<dir>/<os>-<arch>/sprite`, e.g.
    /// `darwin-aarch64/sprite`, of this server's version.
    #[arg(long, env = "SPRITES_CLI_DIR")]
    cli_dir: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus' text format, every org's figures) on this address, e.g.
    /// `127.0.0.1:9780`; not served unless given. Port 0 picks one, written to
    /// `<data-dir>/spritesd.metrics-addr`.
    #[arg(long, env = "SPRITES_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Where the web console is served on the API address (`/`, or a path such as
    /// `/console`), or `none` for no console.
    #[arg(long, env = "SPRITES_CONSOLE_PATH", default_value = "/", value_parser = console_path)]
    console_path: String,
    /// Where the data dir's filesystem has no reflinks (ext4), keep sprite disks and
    /// checkpoint chunks in a file-backed XFS pool inside it (`auto`, the default: fast
    /// checkpoints and forks), or not (`none`). A pool once made is always used.
    #[arg(long, env = "SPRITES_STORAGE_POOL", default_value = "auto", value_parser = ["auto", "none"])]
    storage_pool: String,
    /// Size of a new pool in GiB (a sparse file: a ceiling, not a cost; default half the free
    /// space, 10 GiB to 1 TiB).
    #[arg(long, env = "SPRITES_STORAGE_POOL_GB")]
    storage_pool_gb: Option<u64>,
    /// How often the idle detector looks at sprites.
    #[arg(long, env = "SPRITES_IDLE_TICK", default_value = "1s", value_parser = duration)]
    idle_tick: std::time::Duration,
}

fn console_path(s: &str) -> Result<String, String> {
    let ok = s == "none"
        || (s.starts_with('/')
            && !s.contains("//")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_".contains(c))
            && ![
                "/v1",
                "/mcp",
                "/oauth",
                "/.well-known",
                "/healthz",
                "/install.sh",
            ]
            .iter()
            .any(|taken| s.trim_end_matches('/') == *taken || s.starts_with(&format!("{taken}/"))));
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "a path such as /console (letters, digits, - and _; not one the API uses), or none"
                .into(),
        )
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    sprites_api::exec::parse_duration(s)
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token (and the org if it does not exist); prints it as the last line.
    Create {
        /// Org slug.
        #[arg(long)]
        org: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build a base image from the host's Debian mirror (reusing cached layers) and make it
    /// the one new sprites get; existing sprites keep theirs until upgraded.
    Build {
        /// Which tools it holds: `full` (everything the docs promise) or `slim`.
        #[arg(long, env = "SPRITES_IMAGE_PROFILE", default_value = "full")]
        profile: Profile,
        /// Debian packages to add, as one more layer on top (repeatable).
        #[arg(long = "add", value_name = "PACKAGE")]
        add: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the base images, newest first.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

fn main() {
    // The launcher is this same binary; it must start before any thread exists.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "__launch") {
        let Some(path) = args.next() else {
            eprintln!("__launch needs a config path");
            std::process::exit(2)
        };
        sprites_runtime_namespace::launcher::main(Path::new(&path));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPRITES_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(*a),
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    org,
                    description,
                    data,
                },
        } => token_create(&data, &org, &description),
        Cmd::Image {
            cmd: ImageCmd::Build { profile, add, data },
        } => images::build(&data.image_dir(), profile, &add).map(|_| ()),
        Cmd::Image {
            cmd: ImageCmd::List { data },
        } => images::list(&data.image_dir()),
        Cmd::Secrets {
            cmd: SecretsCmd::RotateKey { data },
        } => rotate_key(&data),
        Cmd::InstallService(a) => service_unit::install(&a, |args| {
            let mut argv = vec!["spritesd".to_string(), "serve".to_string()];
            argv.extend(args.iter().cloned());
            Cli::try_parse_from(argv).map(|_| ()).map_err(|e| {
                // clap's first line says what is wrong; the rest is usage.
                let e = e.to_string();
                let line = e.lines().next().unwrap_or_default();
                line.trim_start_matches("error: ").to_string()
            })
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    }
}

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))?;
    Ok(())
}

fn open_store(data: &DataArgs) -> anyhow::Result<store::Store> {
    prepare_data_dir(&data.data_dir)?;
    Ok(store::Store::open(&data.data_dir.join(config::DB_FILE))?)
}

fn token_create(data: &DataArgs, org: &str, description: &str) -> anyhow::Result<()> {
    if let Err(m) = sprites_api::names::validate_sprite_name(org) {
        bail!("invalid org slug: {}", m.replace("sprite name", "org slug"));
    }
    let store = open_store(data)?;
    let token = store.blocking(|c| auth::create_token(c, org, description))?;
    println!("{token}");
    Ok(())
}

/// Where sprite disks and local checkpoint chunks live: the data dir where it has reflinks
/// (or with `--storage-pool none` and no pool yet), else its reflink pool, which existing
/// disks and chunks move into at a start when no sprite of the data dir runs.
fn storage_root(a: &ServeArgs) -> anyhow::Result<PathBuf> {
    use sprites_storage::pool;
    let data = &a.data.data_dir;
    let have = pool::exists(data);
    if !have && (a.storage_pool == "none" || sprites_storage::tracking::supported(data)) {
        return Ok(data.clone());
    }
    let size = a
        .storage_pool_gb
        .map(|g| g << 30)
        .unwrap_or_else(|| pool::default_size(data));
    let mnt = match pool::ensure(data, size) {
        Ok(m) => m,
        Err(e) if !have => {
            tracing::warn!("no storage pool ({e}); checkpoints will read every allocated chunk");
            return Ok(data.clone());
        }
        Err(e) => bail!(
            "the data dir's storage pool {} cannot be mounted: {e}",
            pool::file(data).display()
        ),
    };
    if !have {
        tracing::info!(pool = %pool::file(data).display(), gib = size >> 30, "made a reflink storage pool for this data dir: checkpoints and forks now cost what changed");
    }
    let pending = ["sprites", "objects"].iter().any(|d| data.join(d).exists());
    if pending {
        if any_sprite_running(data) {
            tracing::warn!("sprites of this data dir are running from its old layout: they move into the storage pool at a start when none runs");
            return Ok(data.clone());
        }
        for d in ["sprites", "objects"] {
            pool::move_in(data, &mnt, d)?;
        }
        tracing::info!("moved sprite disks and checkpoints into the storage pool");
    }
    Ok(mnt)
}

/// Whether a launcher of this data dir's sprites is alive (its pid file under `run/`).
fn any_sprite_running(data: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(data.join("run")) else {
        return false;
    };
    dirs.flatten().any(|d| {
        std::fs::read_dir(d.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| {
                f.file_name().to_string_lossy().ends_with(".pid")
                    && std::fs::read_to_string(f.path())
                        .ok()
                        .and_then(|p| p.trim().parse::<i32>().ok())
                        .is_some_and(|p| {
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
                        })
            })
    })
}

/// The sealing keys of a data dir: `SPRITES_SECRET_KEY` if set (then taken out of the
/// environment, which sprites' launchers would otherwise inherit), else the key file.
fn open_vault(data_dir: &Path) -> anyhow::Result<sprites_gateway::vault::Vault> {
    let env = std::env::var("SPRITES_SECRET_KEY")
        .ok()
        .map(secrecy::SecretString::from);
    if env.is_some() {
        std::env::remove_var("SPRITES_SECRET_KEY");
    }
    Ok(sprites_gateway::vault::Vault::open(data_dir, env)?)
}

fn rotate_key(data: &DataArgs) -> anyhow::Result<()> {
    let store = open_store(data)?;
    let vault = open_vault(&data.data_dir)?;
    let n = connectors::rotate_key(&store, &vault)?;
    println!(
        "sealed {n} credential(s) under key {}; the old key is gone",
        vault.current_key()
    );
    Ok(())
}

enum Chosen {
    Namespace,
    MicroVm(sprites_runtime_microvm::Accel),
}

/// Picks the backend (and accelerator) and says why.
fn choose_backend(flag: &str) -> Chosen {
    use sprites_runtime_microvm::{detect, Accel};
    let virt = detect::detect(Path::new("/"));
    let kvm = virt == detect::Virt::Kvm;
    let chosen = match (flag, kvm) {
        ("namespace", _) => Chosen::Namespace,
        ("microvm", true) | ("auto", true) => Chosen::MicroVm(Accel::Kvm),
        ("microvm", false) => Chosen::MicroVm(Accel::Tcg),
        _ => Chosen::Namespace,
    };
    let what = match &chosen {
        Chosen::Namespace => "namespace sprites",
        Chosen::MicroVm(Accel::Kvm) => "microVM sprites on KVM",
        Chosen::MicroVm(Accel::Tcg) => {
            "microVM sprites under software emulation (TCG; boots take seconds)"
        }
    };
    tracing::info!(backend = flag, host = %virt.explain(), "running {what}");
    chosen
}

/// `name` on the PATH or in ~/.cargo/bin.
fn find_program(name: &str) -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from(home).join(".cargo/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// First start: org `personal` and an admin token, written once to `<data-dir>/admin-token`.
fn bootstrap(store: &store::Store, cfg: &Config) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if store.blocking(|c| store::org_count(c))? > 0 {
        return Ok(());
    }
    let token = store.blocking(|c| auth::create_token(c, "personal", "admin"))?;
    let path = cfg.data_dir.join("admin-token");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    println!(
        "Created org \"personal\" and an admin token (saved in {}).",
        path.display()
    );
    println!("Log the CLI in with:");
    println!(
        "  SPRITES_API_URL=http://{} sprite auth setup --token {token}",
        cfg.listen
    );
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let agent_bin = match a.agent_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sprite-agent"),
    };
    if !agent_bin.exists() {
        bail!(
            "agent binary {} not found; pass --agent-bin",
            agent_bin.display()
        );
    }
    let mut limits = limits::Limits::from_host();
    if let Some(mb) = a.max_memory_mb {
        limits.max_memory_mb = mb.clamp(limits::MIN_MEMORY_MB, limits.max_memory_mb);
    }
    let memory_mb = a.memory_mb.min(limits.max_memory_mb);
    limits
        .check_memory_mb("--memory-mb", memory_mb)
        .map_err(anyhow::Error::msg)?;
    let pids_limit = a.pids_limit.unwrap_or_else(|| limits.default_pids());
    if pids_limit == 0 || pids_limit > limits.pids_total {
        bail!(
            "--pids-limit must be between 1 and {} on this host (pid_max less a reserve)",
            limits.pids_total
        );
    }
    // Read before anything starts, so a bad certificate is one clear error at startup.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::config(c, k)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    prepare_data_dir(&a.data.data_dir)?;
    let disks_root = storage_root(&a)?;
    let cfg = Config {
        scheme,
        cli_dir: a.cli_dir.clone(),
        console_path: (a.console_path != "none").then(|| a.console_path.clone()),
        disks_root: disks_root.clone(),
        data_dir: a.data.data_dir.clone(),
        image_dir: a.data.image_dir(),
        listen: a.listen,
        url_domain: a.url_domain.clone(),
        agent_bin,
        memory_limit: memory_mb << 20,
        pids_limit,
        limits,
        object_store: a
            .object_store
            .clone()
            .unwrap_or_else(|| disks_root.join("objects").display().to_string()),
        mcp_metadata_allow_private: a.mcp_metadata_allow_private,
        idle: (a.warm_after, a.cold_after),
    };
    let store = open_store(&a.data)?;
    bootstrap(&store, &cfg)?;
    let mut providers = sprites_gateway::providers::ProviderTable::default();
    for p in &a.providers {
        providers
            .set(p)
            .map_err(|e| anyhow::anyhow!("--provider {e}"))?;
    }
    for m in &a.managed_connectors {
        providers
            .set_managed(m)
            .map_err(|e| anyhow::anyhow!("--managed-connector {e}"))?;
    }
    let vault = Arc::new(open_vault(&cfg.data_dir)?);
    let connectors = connectors::Connectors::new(
        store.clone(),
        vault,
        providers,
        a.gateway_allow_private,
        a.public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", cfg.listen))
            .trim_end_matches('/')
            .to_string(),
    );
    let image = match Images::new(&cfg.image_dir).current() {
        Some(b) => b,
        None => {
            tracing::info!(
                "no base image yet; building the {} one now (minutes; cached layers are reused)",
                a.image_profile.as_str()
            );
            images::build(&cfg.image_dir, a.image_profile, &[])?
        }
    };
    tracing::info!(
        base = image.id(),
        profile = image.info.profile.as_str(),
        "base image for new sprites"
    );
    sprites_storage::disk::DiskFactory::new(&cfg.image_dir).ensure_template()?;
    let network = if a.network {
        let upstream = a
            .dns_upstream
            .or_else(sprites_network::host_resolver)
            .context("no DNS server in /etc/resolv.conf; pass --dns-upstream")?;
        Some(
            sprites_network::Network::new(upstream, &cfg.instance())
                .context("setting up sprite networking (or run with --network false)")?,
        )
    } else {
        None
    };
    let backend: Arc<dyn sprites_runtime::Backend> = match choose_backend(&a.backend) {
        Chosen::Namespace => Arc::new(NamespaceBackend::new(NamespaceConfig {
            network: network.clone(),
            run_root: cfg.run_root(),
            base_rootfs: image.rootfs(),
            agent_bin: cfg.agent_bin.clone(),
            launcher: vec![std::env::current_exe()?.into_os_string(), "__launch".into()],
            cgroup_instance: cfg.instance(),
            pids_total: Some(cfg.limits.pids_total),
            lxcfs: match sprites_runtime_namespace::lxcfs::ensure() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("sprites will see the host's memory and uptime in /proc: {e}");
                    None
                }
            },
        })),
        Chosen::MicroVm(accel) => {
            let guest = sprites_storage::guest::GuestArtifacts::new(&cfg.image_dir);
            if !guest.is_ready() {
                tracing::info!("no microVM guest kernel yet; building it now");
                guest.build()?;
            }
            find_program("qemu-system-x86_64")
                .context("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
            let vsock_bin = match &a.vsock_bin {
                Some(p) => p.clone(),
                None => find_program("vhost-device-vsock").context(
                    "vhost-device-vsock not found (cargo install vhost-device-vsock --locked, or pass --vsock-bin)",
                )?,
            };
            Arc::new(sprites_runtime_microvm::MicroVmBackend::new(
                sprites_runtime_microvm::MicroVmConfig {
                    run_root: cfg.run_root(),
                    image_dir: cfg.image_dir.clone(),
                    agent_bin: cfg.agent_bin.clone(),
                    accel,
                    vsock_bin,
                    network: network.clone(),
                    memory_cap_mib: a.vm_memory_mb,
                    vcpus: 2,
                },
            )?)
        }
    };
    let backend_name = backend.kind().as_str();
    let runtime = Arc::new(Runtime::new(backend));
    let pool_owner = network.clone();
    if let Some(net) = &network {
        // Each sprite's gateway listener, from its network's birth: identity is the listener.
        let gw = connectors.gateway.clone();
        net.set_gateway(Arc::new(move |id, listener| {
            tokio::spawn(gw.clone().serve(id, listener))
        }));
    }
    let svc = Arc::new(service::Sprites::new(
        cfg.clone(),
        store,
        runtime,
        network,
        connectors.clone(),
    )?);
    svc.collect_garbage()
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        svc.load_policies().await.map_err(|e| anyhow::anyhow!(e.message))?;
        // Before anything can boot a sprite or start a checkpoint: restores a crash cut short
        // are completed, and objects left by a crash mid-checkpoint go.
        svc.finish_interrupted_restores().await;
        svc.prune_checkpoints().await;
        if let Err(e) = svc.collect_bases().await {
            tracing::warn!("removing unused base images: {}", e.message);
        }
        svc.serve_host_apis().await;
        svc.adopt_and_track().await.map_err(|e| anyhow::anyhow!(e.message))?;
        let policy = sprites_runtime::IdlePolicy {
            warm_after: a.warm_after,
            cold_after: a.cold_after,
            tick: a.idle_tick,
        };
        tokio::spawn(svc.runtime.clone().run_idle_loop(policy));
        // With port 0 the kernel picks one; tools read the real address from this file.
        let addr = listener.local_addr()?;
        svc.port.store(addr.port(), std::sync::atomic::Ordering::Relaxed);
        let public = a
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        if let Some(u) = a.public_url.as_deref().and_then(|u| url::Url::parse(u).ok()) {
            if let Some(port) = u.port_or_known_default() {
                let _ = svc.url_origin.set((u.scheme().to_string(), port));
            }
        }
        svc.connectors.set_public_url(public.clone());
        svc.mcp.set_public_url(public);
        svc.connectors.spawn_usage_writer();
        // Before anyone can learn that we are up (and so signal us).
        let shutdown = shutdown_signal()?;
        // Logged before the address file appears, so whoever waits for the file finds the
        // whole startup in the log.
        tracing::info!(%addr, backend = backend_name, data_dir = %cfg.data_dir.display(), "spritesd ready");
        if sprites_storage::tracking::supported(&cfg.disks_root) {
            tracing::info!("checkpoints track changes by reflink: they cost what changed");
        } else {
            tracing::info!("the data dir's filesystem has no reflinks and there is no storage pool (--storage-pool none): checkpoints read every allocated chunk");
        }
        svc.metrics.follow(&svc.runtime);
        if let Some(addr) = a.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} for metrics"))?;
            let bound = l.local_addr()?;
            let tmp = cfg.data_dir.join("spritesd.metrics-addr.tmp");
            std::fs::write(&tmp, bound.to_string())?;
            std::fs::rename(&tmp, cfg.data_dir.join("spritesd.metrics-addr"))?;
            let app = axum::Router::new()
                .route("/metrics", axum::routing::get(metrics::serve))
                .with_state(svc.clone());
            tracing::info!("metrics at http://{bound}/metrics");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!("metrics listener: {e}");
                }
            });
        }
        // Written whole or not at all: tools poll for it.
        let tmp = cfg.data_dir.join("spritesd.addr.tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, cfg.data_dir.join("spritesd.addr"))?;
        if let Some(tls) = tls {
            tracing::info!("serving HTTPS");
            let listener = tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, http::router(svc)).with_graceful_shutdown(shutdown).await?;
        } else {
            // Exec frames are small writes; Nagle would hold each one back for a delayed ACK.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, http::router(svc)).with_graceful_shutdown(shutdown).await?;
        }
        // Networks built ahead for sprites to come; sprites' own networks stay with them.
        if let Some(net) = &pool_owner {
            net.drain_pool();
        }
        tracing::info!("spritesd stopped; sprites keep running and are adopted on the next start");
        anyhow::Ok(())
    })
}

/// SIGTERM or SIGINT. The handlers are installed here, when called, not when the future is
/// first polled: a signal that came between "ready" and the serve loop's first poll would
/// otherwise kill the server on the spot, skipping its clean stop (seen in CI).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
