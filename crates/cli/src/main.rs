//! `sprite`: the command line for Sprites, compatible with the official CLI's habits.
//!
//! Architecture invariant: it talks to the server only through the `sprites` SDK (`sprite api`
//! hands a request to curl, as the official CLI does).

mod commands;
mod config;
mod context;
mod progress;
mod secrets;
mod terminal;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sprite",
    version,
    about = "Persistent, isolated Linux sandboxes",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Organization to use.
    #[arg(short = 'o', long = "org", global = true)]
    pub org: Option<String>,
    /// Sprite to use.
    #[arg(short = 's', long = "sprite", global = true)]
    pub sprite: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Move the sprite to the server's newest base image; what it changed on its disk stays
    /// (a running sprite reboots for it).
    ///
    /// Examples:
    ///   sprite image upgrade
    #[command(verbatim_doc_comment)]
    Upgrade,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Log in to an API endpoint with a token (prompts for it).
    ///
    /// Examples:
    ///   sprite login
    ///   sprite login http://sprites.internal:7780
    #[command(verbatim_doc_comment)]
    Login {
        /// API URL (default: $SPRITES_API_URL, else the current one, else http://127.0.0.1:7780).
        api_url: Option<String>,
    },
    /// Remove all Sprites configuration.
    ///
    /// Examples:
    ///   sprite logout
    #[command(verbatim_doc_comment)]
    Logout,
    /// Non-interactive authentication.
    ///
    /// Examples:
    ///   sprite auth setup --token "$SPRITE_TOKEN"
    #[command(verbatim_doc_comment)]
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
    /// Manage organizations and tokens.
    ///
    /// Examples:
    ///   sprite org list
    ///   sprite org auth -o prod:acme https://sprites.example.com
    ///   sprite org tokens create --description ci
    #[command(verbatim_doc_comment)]
    #[command(visible_aliases = ["orgs", "organizations", "o"])]
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    /// Create a sprite.
    ///
    /// Examples:
    ///   sprite create my-sprite
    ///   sprite create            # asks for a name (on a terminal)
    ///   sprite create b --from a:v3
    ///   sprite create x --template python-ml --skip-console
    #[command(verbatim_doc_comment)]
    Create {
        /// Name (or -s).
        name: Option<String>,
        /// Do not open a console afterwards.
        #[arg(long)]
        skip_console: bool,
        /// Start from another sprite's disk: SPRITE (as it is now) or SPRITE:CHECKPOINT.
        #[arg(long, value_name = "SPRITE[:CHECKPOINT]", conflicts_with = "template")]
        from: Option<String>,
        /// Start from an org template.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
    },
    /// Org templates: named checkpoints new sprites start from (`sprite create --template`).
    ///
    /// Examples:
    ///   sprite templates create python-ml --from golden:v3
    ///   sprite templates list
    ///   sprite templates delete python-ml
    #[command(verbatim_doc_comment, visible_alias = "template")]
    Templates {
        #[command(subcommand)]
        cmd: TemplatesCmd,
    },
    /// Put the sprite to sleep now: frozen with its memory kept, or stopped with --cold.
    ///
    /// Examples:
    ///   sprite sleep
    ///   sprite sleep --cold
    ///   sprite sleep -s busy --force
    #[command(verbatim_doc_comment)]
    Sleep {
        /// Stop it (nothing kept in memory) instead of freezing it.
        #[arg(long)]
        cold: bool,
        /// Even while requests, tasks or sessions keep it busy.
        #[arg(long)]
        force: bool,
    },
    /// Set the sprite for this directory (writes .sprite); with no name, pick one.
    ///
    /// Examples:
    ///   sprite use my-sprite
    ///   sprite use            # pick from a numbered list (on a terminal)
    ///   sprite use --unset    # forget this directory's sprite
    #[command(verbatim_doc_comment)]
    Use {
        /// Sprite name (none: pick from a list).
        #[arg(conflicts_with = "unset")]
        name: Option<String>,
        /// Remove this directory's .sprite.
        #[arg(long)]
        unset: bool,
    },
    /// List sprites.
    ///
    /// Examples:
    ///   sprite list
    ///   sprite list --prefix "dev-"
    ///   sprite list -w             # live updates
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List {
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Keep watching: print a line whenever a sprite changes state (Ctrl-C ends).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Change the sprite's own idle times (when it goes warm, then cold).
    ///
    /// Examples:
    ///   sprite update --warm-after 30s --cold-after 1h
    ///   sprite update --default-idle      # the server's times again
    #[command(verbatim_doc_comment)]
    Update {
        /// Idle time before it is frozen, e.g. 30s.
        #[arg(long)]
        warm_after: Option<String>,
        /// Time frozen before it is stopped, e.g. 1h.
        #[arg(long)]
        cold_after: Option<String>,
        /// Go back to the server's idle times.
        #[arg(long, conflicts_with_all = ["warm_after", "cold_after"])]
        default_idle: bool,
    },
    /// Destroy a sprite and everything it holds.
    ///
    /// Examples:
    ///   sprite destroy -s my-sprite
    ///   sprite destroy my-sprite --force
    #[command(verbatim_doc_comment)]
    #[command(visible_aliases = ["delete", "rm"])]
    Destroy {
        /// Name (or -s / .sprite).
        name: Option<String>,
        /// Do not ask.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run a command in the sprite.
    ///
    /// When using --tty, terminal environment variables (TERM, COLORTERM, LANG, LC_ALL) are
    /// passed through from your local environment. Use `sprite sessions` to list, attach to,
    /// or kill running sessions.
    ///
    /// Examples:
    ///   sprite exec ls -la
    ///   sprite exec --dir /app echo hello world
    ///   sprite exec --env KEY=value,FOO=bar env
    ///   sprite exec --tty /bin/bash
    ///   sprite exec -o myorg -s mysprite npm start
    ///   sprite exec --detachable "python -m http.server 8080"
    #[command(verbatim_doc_comment, visible_alias = "x")]
    Exec(commands::exec::ExecArgs),
    /// Open an interactive shell in the sprite (Ctrl+\ detaches).
    ///
    /// Examples:
    ///   sprite console
    ///   sprite console -o myorg -s mysprite
    #[command(verbatim_doc_comment, visible_alias = "c")]
    Console,
    /// List, attach to and kill exec sessions.
    ///
    /// Examples:
    ///   sprite sessions list
    ///   sprite s ls
    ///   sprite sessions attach 3
    ///   sprite sessions kill 3
    #[command(verbatim_doc_comment, visible_alias = "s")]
    Sessions {
        #[command(subcommand)]
        cmd: SessionsCmd,
    },
    /// Attach to a running session (the most recent TTY session if no id is given).
    ///
    /// Examples:
    ///   sprite attach
    ///   sprite attach 3 -s my-sprite
    #[command(verbatim_doc_comment)]
    Attach {
        /// Session id.
        id: Option<String>,
    },
    /// Show or change the sprite's URL settings.
    ///
    /// Examples:
    ///   sprite url                          # the URL and its auth mode
    ///   sprite url update --auth public
    ///   sprite url update --auth sprite
    ///   sprite url -o myorg -s mysprite
    #[command(verbatim_doc_comment)]
    Url {
        #[command(subcommand)]
        cmd: Option<UrlCmd>,
    },
    /// Forward local ports to the sprite (3000, 3001:3000, ...), or stdio with -W.
    ///
    /// Examples:
    ///   sprite proxy 8080
    ///   sprite proxy 3000 8080
    ///   sprite proxy 4005:4000
    ///   sprite proxy 3001:3000 8081:8080
    ///   sprite proxy -W :22
    ///   sprite proxy -o myorg -s mysprite 8080
    #[command(verbatim_doc_comment)]
    Proxy {
        /// PORT or LOCAL:REMOTE, one or more.
        ports: Vec<String>,
        /// Forward stdin/stdout to [host]:port in the sprite (for ssh -o ProxyCommand).
        #[arg(short = 'W', long = "stdio")]
        stdio: Option<String>,
    },
    /// Show the sprite's base image, or move it to the server's newest one.
    ///
    /// Examples:
    ///   sprite image            # the base image the sprite is on
    ///   sprite image upgrade    # move it to the newest base, keeping its disk
    #[command(verbatim_doc_comment)]
    Image {
        #[command(subcommand)]
        cmd: Option<ImageCmd>,
    },
    /// Save, list and manage checkpoints of the sprite's disk.
    ///
    /// Examples:
    ///   sprite checkpoint create --comment "before upgrade"
    ///   sprite checkpoint list
    ///   sprite checkpoint info v2
    ///   sprite restore v1
    #[command(verbatim_doc_comment, visible_alias = "checkpoints")]
    Checkpoint {
        #[command(subcommand)]
        cmd: CheckpointCmd,
    },
    /// Restore the sprite from a checkpoint (its processes stop; it boots on that disk).
    ///
    /// Examples:
    ///   sprite restore v1
    ///   sprite restore -o myorg -s mysprite v2
    ///
    ///   # Safe restore workflow
    ///   sprite checkpoint create --comment "before rollback"
    ///   sprite restore v1
    #[command(verbatim_doc_comment)]
    Restore {
        /// Checkpoint id, such as v1.
        id: String,
    },
    /// Copy files or directories to or from the sprite; the sprite's side starts with ':'.
    ///
    /// Examples:
    ///   sprite cp ./src :/home/sprite/src
    ///   sprite cp :/etc/hostname ./h
    ///   sprite cp -s my-sprite ./data.csv :
    #[command(verbatim_doc_comment)]
    Cp {
        /// Source: a local path, or :PATH in the sprite.
        src: String,
        /// Destination: a local path, or :PATH in the sprite.
        dest: String,
    },
    /// Upgrade this CLI to the build the server offers (its own version), checked against
    /// the SHA-256 the server states and replaced atomically.
    ///
    /// Examples:
    ///   sprite upgrade            # upgrade to the server's version
    ///   sprite upgrade --check    # only say whether there is a new one
    ///   sprite upgrade --force    # reinstall even if up to date
    ///   sprite upgrade --version 0.1.0
    #[command(verbatim_doc_comment)]
    Upgrade {
        /// Check for a new version without installing it.
        #[arg(long)]
        check: bool,
        /// Install even when already up to date.
        #[arg(long)]
        force: bool,
        /// The version to install (a self-hosted server offers its own).
        #[arg(long)]
        version: Option<String>,
        /// Release channel: release, rc or dev (a self-hosted server offers release).
        #[arg(long, value_parser = ["release", "rc", "dev"])]
        channel: Option<String>,
    },
    /// Print a shell completion script (generated from this command tree).
    ///
    /// Examples:
    ///   sprite completion bash > /etc/bash_completion.d/sprite
    ///   sprite completion zsh > "${fpath[1]}/_sprite"
    ///   sprite completion fish > ~/.config/fish/completions/sprite.fish
    ///   sprite completion powershell >> $PROFILE
    #[command(verbatim_doc_comment)]
    Completion {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Manage the org's connectors: API credentials sprites use through the gateway
    /// ($SPRITES_GATEWAY_URL) without ever holding them.
    ///
    /// Examples:
    ///   sprite connectors create --provider anthropic --api-key-file key.txt --label ai
    ///   sprite connectors create --provider custom_api --name weather \
    ///       --base-url https://api.example.com/v2 --auth-in query --auth-name key \
    ///       --api-key-file - --prefix ci- < key.txt
    ///   sprite connectors update conn_abc --block '/admin*'
    ///   sprite connectors sprites conn_abc
    ///   sprite connectors authorize github
    #[command(verbatim_doc_comment, visible_alias = "connector")]
    Connectors {
        #[command(subcommand)]
        cmd: ConnectorsCmd,
    },
    /// Show, add or remove the sprite's labels (connectors' policies match on them).
    ///
    /// Examples:
    ///   sprite labels
    ///   sprite labels add ai ci
    ///   sprite labels remove ci
    #[command(verbatim_doc_comment)]
    Labels {
        #[command(subcommand)]
        cmd: Option<LabelsCmd>,
    },
    /// The server's MCP endpoint: how to add it to MCP clients, tokens for clients without
    /// OAuth, and the org's grants.
    ///
    /// Examples:
    ///   sprite mcp                                  # the URL and how to add it
    ///   sprite mcp token --prefix agent- --max 3    # a restricted token, shown once
    ///   sprite mcp token --full
    ///   sprite mcp grants
    ///   sprite mcp grants revoke mcpg_abc
    #[command(verbatim_doc_comment)]
    Mcp {
        #[command(subcommand)]
        cmd: Option<McpCmd>,
    },
    /// Make an authenticated API call with curl; arguments after PATH go to curl.
    ///
    /// Examples:
    ///   sprite api -o myorg /sprites
    ///   sprite api -o myorg -s my-sprite /upgrade -X POST
    ///   sprite api -o myorg -s my-sprite /exec -X GET
    ///   sprite api -o myorg -s my-sprite /checkpoints
    #[command(verbatim_doc_comment)]
    Api {
        /// Path, relative to /v1/ (or to /v1/sprites/<name>/ with -s).
        path: String,
        /// Arguments for curl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        curl_args: Vec<String>,
    },
}

/// Who may use a connector (deny by default).
#[derive(Args, Debug, Default)]
pub struct PolicyArgs {
    /// Every sprite of the org.
    #[arg(long)]
    pub allow_all: bool,
    /// Sprites whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Sprites carrying this label (repeatable: all of them).
    #[arg(long)]
    pub label: Vec<String>,
    /// Only these provider paths: exact, or ending in * (repeatable).
    #[arg(long)]
    pub allow: Vec<String>,
    /// Never these provider paths (repeatable; checked first).
    #[arg(long)]
    pub block: Vec<String>,
}

#[derive(Subcommand)]
pub enum ConnectorsCmd {
    /// List the org's connectors.
    ///
    /// Examples:
    ///   sprite connectors list
    ///   sprite connectors list --provider anthropic --json
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List {
        /// Only this provider's.
        #[arg(long)]
        provider: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one connector, its policy and usage.
    ///
    /// Examples:
    ///   sprite connectors get conn_abc
    ///   sprite connectors get conn_abc --json
    #[command(verbatim_doc_comment)]
    Get {
        /// Connector id (conn_...).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store an API key (or a custom API) as a connector.
    ///
    /// Examples:
    ///   sprite connectors create --provider anthropic --api-key-file key.txt --label ai
    ///   sprite connectors create --provider custom_api --name weather --base-url https://api.example.com/v2 --auth-in query --auth-name key --api-key-file key.txt --test-path /me
    #[command(verbatim_doc_comment)]
    Create {
        /// openrouter, anthropic, openai or custom_api.
        #[arg(long)]
        provider: String,
        /// File holding the key (`-` for stdin; stdin is read when omitted).
        #[arg(long)]
        api_key_file: Option<String>,
        /// Name (custom_api).
        #[arg(long)]
        name: Option<String>,
        /// Base URL (custom_api).
        #[arg(long)]
        base_url: Option<String>,
        /// Where the key goes (custom_api): header, query or path.
        #[arg(long, value_parser = ["header", "query", "path"])]
        auth_in: Option<String>,
        /// Header or query parameter name (custom_api).
        #[arg(long)]
        auth_name: Option<String>,
        /// Value format with {token} (custom_api), e.g. "Token {token}".
        #[arg(long)]
        auth_format: Option<String>,
        /// A GET sent with the key before saving (custom_api), e.g. /me.
        #[arg(long)]
        test_path: Option<String>,
        /// Status the test request must answer (200).
        #[arg(long)]
        expect_status: Option<u16>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a connector's policy (the flags given) or rotate its key.
    ///
    /// Examples:
    ///   sprite connectors update conn_abc --block '/admin*'
    ///   sprite connectors update conn_abc --api-key-file new-key.txt
    ///   sprite connectors update conn_abc --replace --allow-all
    #[command(verbatim_doc_comment)]
    Update {
        /// Connector id.
        id: String,
        /// A new key, from this file (`-` for stdin).
        #[arg(long)]
        api_key_file: Option<String>,
        /// Replace the whole policy with the flags given (default: change only those).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Delete a connector; its credential is destroyed at once.
    ///
    /// Examples:
    ///   sprite connectors delete conn_abc
    #[command(verbatim_doc_comment, visible_alias = "rm")]
    Delete {
        /// Connector id.
        id: String,
    },
    /// The sprites a connector's policy grants now.
    ///
    /// Examples:
    ///   sprite connectors sprites conn_abc
    #[command(verbatim_doc_comment)]
    Sprites {
        /// Connector id.
        id: String,
    },
    /// Connect an OAuth provider (github, slack, slack_bot): prints the URL to open.
    ///
    /// Examples:
    ///   sprite connectors authorize github
    ///   sprite connectors authorize slack --scopes channels:read,chat:write
    #[command(verbatim_doc_comment)]
    Authorize {
        /// Provider.
        provider: String,
        /// Scopes, comma-separated (default: the provider's).
        #[arg(long)]
        scopes: Option<String>,
        /// Wait until the connection arrives.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum TemplatesCmd {
    /// List the org's templates.
    ///
    /// Examples:
    ///   sprite templates list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Make (or replace) a template from a sprite's checkpoint, or from it as it is now.
    ///
    /// Examples:
    ///   sprite templates create python-ml --from golden:v3
    ///   sprite templates create base --from golden
    #[command(verbatim_doc_comment)]
    Create {
        /// Template name.
        name: String,
        /// SPRITE or SPRITE:CHECKPOINT.
        #[arg(long, value_name = "SPRITE[:CHECKPOINT]")]
        from: String,
    },
    /// Delete a template (sprites made from it keep their disks).
    ///
    /// Examples:
    ///   sprite templates delete python-ml
    #[command(verbatim_doc_comment, visible_alias = "rm")]
    Delete {
        /// Template name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum McpCmd {
    /// Make a grant and its bearer token for an MCP client that cannot sign in with OAuth.
    ///
    /// Examples:
    ///   sprite mcp token --prefix agent- --max 3
    ///   sprite mcp token --full
    #[command(verbatim_doc_comment)]
    Token {
        /// Full access to every sprite of the org.
        #[arg(long, conflicts_with = "restricted")]
        full: bool,
        /// Restricted to the prefix and cap (the default).
        #[arg(long)]
        restricted: bool,
        /// Restricted: sprite names must start with this.
        #[arg(long, default_value = "mcp-")]
        prefix: String,
        /// Restricted: most sprites.
        #[arg(long, default_value_t = 5)]
        max: u32,
    },
    /// List the org's MCP grants, or revoke one.
    ///
    /// Examples:
    ///   sprite mcp grants
    ///   sprite mcp grants revoke mcpg_abc
    #[command(verbatim_doc_comment)]
    Grants {
        #[command(subcommand)]
        cmd: Option<GrantsCmd>,
    },
}

#[derive(Subcommand)]
pub enum GrantsCmd {
    /// Revoke a grant: its tokens stop working at once.
    ///
    /// Examples:
    ///   sprite mcp grants revoke mcpg_abc
    #[command(verbatim_doc_comment)]
    Revoke {
        /// Grant id (mcpg_...).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum LabelsCmd {
    /// Add labels.
    ///
    /// Examples:
    ///   sprite labels add ai ci
    #[command(verbatim_doc_comment)]
    Add {
        /// Labels.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Remove labels.
    ///
    /// Examples:
    ///   sprite labels remove ci
    #[command(verbatim_doc_comment, visible_alias = "rm")]
    Remove {
        /// Labels.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Store a pre-generated token (org-slug/org-id/token-id/secret).
    ///
    /// Examples:
    ///   sprite auth setup --token personal/ab12cd/tok123/secret
    #[command(verbatim_doc_comment)]
    Setup {
        /// The token.
        #[arg(long)]
        token: String,
    },
}

#[derive(Subcommand)]
pub enum OrgCmd {
    /// Show configured tokens.
    ///
    /// Examples:
    ///   sprite org list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Remove tokens (of -o ORG, else of the current API URL).
    ///
    /// Examples:
    ///   sprite org logout
    ///   sprite org logout -o my-team --force
    #[command(verbatim_doc_comment)]
    Logout {
        /// Skip the confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Add a token for an API URL (prompts for it); `-o ALIAS:ORG` also saves ALIAS as a
    /// short name of the URL, for `-o ALIAS:ORG` in later commands.
    ///
    /// Examples:
    ///   sprite org auth http://sprites.internal:7780
    ///   sprite org auth -o prod:acme https://sprites.example.com
    ///   sprite org auth prod            # the URL saved as "prod"
    ///   sprite list -o prod:acme
    #[command(verbatim_doc_comment)]
    Auth {
        /// API URL, or an alias saved earlier.
        api_url: Option<String>,
    },
    /// Keep tokens in the system keyring (a Secret Service such as gnome-keyring), or in
    /// ~/.sprites/sprites.json again.
    ///
    /// Examples:
    ///   sprite org keyring enable     # move every stored token into the keyring
    ///   sprite org keyring disable    # and back into the config file
    #[command(verbatim_doc_comment)]
    Keyring {
        #[command(subcommand)]
        cmd: KeyringCmd,
    },
    /// Mint, list and revoke the org's tokens (with an admin token).
    ///
    /// Examples:
    ///   sprite org tokens list
    ///   sprite org tokens create --description ci     # printed once, alone on stdout
    ///   sprite org tokens revoke tokabc123
    #[command(verbatim_doc_comment)]
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
}

#[derive(Subcommand)]
pub enum KeyringCmd {
    /// Move every stored token into the system keyring; later logins go there too.
    ///
    /// Examples:
    ///   sprite org keyring enable
    #[command(verbatim_doc_comment)]
    Enable,
    /// Move every token back from the system keyring into the config file.
    ///
    /// Examples:
    ///   sprite org keyring disable
    #[command(verbatim_doc_comment)]
    Disable,
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// List the org's tokens.
    ///
    /// Examples:
    ///   sprite org tokens list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Mint a token.
    ///
    /// Examples:
    ///   sprite org tokens create --description ci
    ///   sprite org tokens create --admin
    #[command(verbatim_doc_comment)]
    Create {
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// It may mint and revoke tokens too.
        #[arg(long)]
        admin: bool,
    },
    /// Revoke a token.
    ///
    /// Examples:
    ///   sprite org tokens revoke tokabc123
    #[command(verbatim_doc_comment, visible_alias = "rm")]
    Revoke {
        /// Token id (tok...).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// List sessions.
    ///
    /// Examples:
    ///   sprite sessions list
    ///   sprite s ls -s my-sprite
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Attach to a session.
    ///
    /// Examples:
    ///   sprite sessions attach 3
    #[command(verbatim_doc_comment)]
    Attach {
        /// Session id.
        id: Option<String>,
    },
    /// Kill a session.
    ///
    /// Examples:
    ///   sprite sessions kill 3
    ///   sprite sessions kill 3 --signal INT
    #[command(verbatim_doc_comment)]
    Kill {
        /// Session id.
        id: String,
        /// Signal to send first.
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
        /// Wait before SIGKILL.
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
}

#[derive(Subcommand)]
pub enum CheckpointCmd {
    /// Create a new checkpoint.
    ///
    /// Examples:
    ///   sprite checkpoint create
    ///   sprite checkpoint create --comment "before upgrade"
    #[command(verbatim_doc_comment)]
    Create {
        /// Optional comment describing this checkpoint.
        #[arg(long)]
        comment: Option<String>,
    },
    /// List all checkpoints.
    ///
    /// Examples:
    ///   sprite checkpoint list
    ///   sprite checkpoint list --include-auto
    ///   sprite checkpoint list --history v2
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List {
        /// Include auto-generated checkpoints.
        #[arg(long)]
        include_auto: bool,
        /// Only checkpoints that descend from this version.
        #[arg(long)]
        history: Option<String>,
    },
    /// Show information about a specific checkpoint.
    ///
    /// Examples:
    ///   sprite checkpoint info v2     # Show details for checkpoint v2
    #[command(verbatim_doc_comment)]
    Info {
        /// Checkpoint id, such as v2.
        id: String,
    },
    /// Delete a checkpoint.
    ///
    /// Examples:
    ///   sprite checkpoint delete v3   # Delete checkpoint v3
    #[command(verbatim_doc_comment, visible_alias = "rm")]
    Delete {
        /// Checkpoint id, such as v3.
        id: String,
    },
    /// Restore from a checkpoint version.
    ///
    /// Examples:
    ///   sprite checkpoint restore v1
    #[command(verbatim_doc_comment)]
    Restore {
        /// Checkpoint id, such as v1.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum UrlCmd {
    /// Change who may use the URL.
    ///
    /// Examples:
    ///   sprite url update --auth public     # Make URL publicly accessible
    ///   sprite url update --auth sprite     # Require org membership (default)
    ///   sprite url update --auth public -s demo
    #[command(verbatim_doc_comment)]
    Update {
        /// public, sprite, or default (= sprite).
        #[arg(long, short = 'a')]
        auth: String,
    },
}

/// The docs write some flags Go-style, with one dash (`sprite exec -tty vim`,
/// `sprite exec -detachable "npm run dev"`); they mean the long flags. Rewritten only among
/// the CLI's own options: after `--`, or once the command to run in the sprite starts, the
/// arguments stay as typed.
fn go_style_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG: &[&str] = &[
        "-tty",
        "-detachable",
        "-http-post",
        "-skip-console",
        "-include-auto",
        "-force",
        "-check",
        "-watch",
    ];
    const TAKES_VALUE: &[&str] = &[
        "-s",
        "--sprite",
        "-o",
        "--org",
        "--dir",
        "-dir",
        "--env",
        "-env",
        "--file",
        "-file",
        "--history",
        "--comment",
        "--prefix",
        "--from",
        "--template",
        "--version",
        "--channel",
        "-a",
        "--auth",
    ];
    let mut out = Vec::with_capacity(args.len());
    let (mut words, mut exec, mut value_next, mut done) = (0, false, false, false);
    for (i, a) in args.into_iter().enumerate() {
        let s = a.to_string_lossy().into_owned();
        if i == 0 || done {
            out.push(a);
            continue;
        }
        if value_next {
            value_next = false;
            out.push(a);
            continue;
        }
        if s == "--" {
            done = true;
        } else if LONG.contains(&s.as_str()) || ["-dir", "-env", "-file"].contains(&s.as_str()) {
            value_next = TAKES_VALUE.contains(&s.as_str());
            out.push(format!("-{s}").into());
            continue;
        } else if TAKES_VALUE.contains(&s.as_str()) {
            value_next = true;
        } else if !s.starts_with('-') {
            words += 1;
            if words == 1 {
                exec = matches!(s.as_str(), "exec" | "x");
            } else if exec {
                // The sprite's command starts here.
                done = true;
            }
        }
        out.push(a);
    }
    out
}

fn main() {
    let cli = Cli::parse_from(go_style_flags(std::env::args_os().collect()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    let code = match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            1
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code)
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::go_style_flags;
    use clap::{CommandFactory, Parser};

    /// Every command's help shows examples, and every example is a command line this CLI
    /// accepts.
    #[test]
    fn every_command_has_examples_that_parse() {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                let help = sub.clone().render_long_help().to_string();
                out.push((name.clone(), help));
                walk(sub, &name, out);
            }
        }
        let mut all = Vec::new();
        walk(&super::Cli::command(), "sprite", &mut all);
        let missing: Vec<&str> = all
            .iter()
            .filter(|(_, h)| !h.contains("Examples:"))
            .map(|(n, _)| n.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "no examples in the help of: {missing:?}"
        );
        let mut examples = 0;
        for (name, help) in &all {
            let Some((_, after)) = help.split_once("Examples:") else {
                continue;
            };
            // Lines ending in `\` go on.
            let mut lines: Vec<String> = Vec::new();
            let mut open = false;
            for l in after.lines().map(str::trim) {
                match (open, lines.last_mut()) {
                    (true, Some(last)) => *last = format!("{} {l}", last.trim_end_matches('\\')),
                    _ => lines.push(l.to_string()),
                }
                open = l.ends_with('\\');
            }
            for line in lines.iter().map(String::as_str) {
                let Some(cmdline) = line.strip_prefix("sprite ") else {
                    continue;
                };
                let cmdline = cmdline.split(" #").next().unwrap_or_default();
                let cmdline = cmdline.split(" >").next().unwrap_or_default();
                let cmdline = cmdline.split(" <").next().unwrap_or_default();
                let argv: Vec<String> = std::iter::once("sprite".to_string())
                    .chain(shell_words(cmdline))
                    .collect();
                if let Err(e) = super::Cli::try_parse_from(go_style_flags(
                    argv.iter().map(Into::into).collect(),
                )) {
                    panic!("example `{line}` of `{name}` does not parse: {e}");
                }
                examples += 1;
            }
        }
        assert!(examples > 80, "{examples} examples");
    }

    /// Splits like a shell would for the simple quoting the examples use.
    fn shell_words(s: &str) -> Vec<String> {
        let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
        for c in s.chars() {
            match (quote, c) {
                (None, '"' | '\'') => {
                    quote = Some(c);
                    any = true;
                }
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if any {
                        out.push(std::mem::take(&mut cur));
                        any = false;
                    }
                }
                (_, c) => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            out.push(cur);
        }
        out
    }

    fn rewrite(args: &[&str]) -> Vec<String> {
        go_style_flags(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn go_style_flags_become_long_flags_before_the_sprites_command_only() {
        assert_eq!(
            rewrite(&["sprite", "exec", "-tty", "vim", "-tty"]),
            ["sprite", "exec", "--tty", "vim", "-tty"]
        );
        assert_eq!(
            rewrite(&["sprite", "-s", "box", "exec", "-detachable", "npm run dev"]),
            ["sprite", "-s", "box", "exec", "--detachable", "npm run dev"]
        );
        assert_eq!(
            rewrite(&["sprite", "exec", "-dir", "/app", "ls", "-force"]),
            ["sprite", "exec", "--dir", "/app", "ls", "-force"]
        );
        assert_eq!(
            rewrite(&["sprite", "exec", "--", "-tty"]),
            ["sprite", "exec", "--", "-tty"]
        );
        assert_eq!(
            rewrite(&["sprite", "checkpoint", "list", "-include-auto"]),
            ["sprite", "checkpoint", "list", "--include-auto"]
        );
    }
}
