//! `login`, `auth setup`, `org list|logout`, `logout`.

use anyhow::{bail, Context, Result};

use crate::config::{self, Config};

fn api_url(arg: Option<String>, cfg: &Config) -> String {
    arg.or_else(|| {
        std::env::var("SPRITES_API_URL")
            .ok()
            .filter(|u| !u.is_empty())
    })
    .or_else(|| Some(cfg.current_selection.url.clone()).filter(|u| !u.is_empty()))
    .unwrap_or_else(|| config::DEFAULT_URL.to_string())
    .trim_end_matches('/')
    .to_string()
}

/// Checks the token against the server and stores it.
async fn store(url: &str, token: &str) -> Result<i32> {
    let home = config::home()?;
    let mut cfg = Config::load(&home)?;
    let client = sprites::Client::new(token).base_url(url);
    client
        .list_sprites(&sprites::ListOptions {
            max_results: Some(1),
            ..Default::default()
        })
        .await
        .map_err(crate::context::friendly)
        .with_context(|| format!("checking the token against {url}"))?;
    let keyring = cfg.keyring_enabled();
    let org = cfg.add_token(url, token)?;
    if keyring {
        // Tokens live in the keyring once it is enabled: this one too, never in the file.
        let key = crate::secrets::key(url, &org);
        crate::secrets::store(&key, token)?;
        if let Some(e) = cfg.urls.get_mut(url).and_then(|u| u.orgs.get_mut(&org)) {
            e.api_token = None;
            e.keyring_key = Some(key);
            e.use_keyring = true;
        }
    }
    cfg.save(&home)?;
    println!("Authenticated to {url} as org {org}.");
    Ok(0)
}

/// Asks for a token for `url` on stdin.
fn read_token(url: &str) -> Result<String> {
    eprint!("Paste a token for {url}: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the token")?;
    let token = line.trim();
    if token.is_empty() {
        bail!("no token given (create one with `spritesd token create --org ORG`)");
    }
    Ok(token.to_string())
}

/// `sprite login [api-url]`: a self-hosted server has no browser flow, so ask for a token.
pub async fn login(url_arg: Option<String>) -> Result<i32> {
    let cfg = Config::load(&config::home()?)?;
    let url = api_url(url_arg, &cfg);
    let token = read_token(&url)?;
    let token = token.as_str();
    store(&url, token).await
}

/// `sprite org auth [-o [ALIAS:]ORG] [API_URL|ALIAS]`: `login` under its documented name;
/// `-o ALIAS:ORG` also saves ALIAS as a short name of the URL.
pub async fn org_auth(url_arg: Option<String>, org_spec: Option<String>) -> Result<i32> {
    let home = config::home()?;
    let mut cfg = Config::load(&home)?;
    let (alias, org) = match org_spec.as_deref().map(config::split_org) {
        Some((a, o)) => (
            a.map(str::to_string),
            Some(o.to_string()).filter(|o| !o.is_empty()),
        ),
        None => (None, None),
    };
    let url = match (&url_arg, &alias) {
        (Some(u), _) => cfg.resolve_url(u)?,
        (None, Some(a)) if cfg.url_aliases.contains_key(a) => cfg.resolve_url(a)?,
        (None, _) => api_url(None, &cfg),
    };
    let token = read_token(&url)?;
    let token = token.as_str();
    if let Some(o) = &org {
        let of_token = token.split('/').next().unwrap_or_default();
        if of_token != o {
            bail!("this token is for org {of_token:?}, not {o:?}");
        }
    }
    let code = store(&url, token).await?;
    if let Some(a) = alias {
        cfg = Config::load(&home)?;
        cfg.url_aliases.insert(a.clone(), url.clone());
        cfg.save(&home)?;
        let org = cfg.current_selection.org.clone();
        println!("Saved alias {a} for {url}: use `-o {a}:{org}`.");
    }
    Ok(code)
}

/// `sprite auth setup --token T`.
pub async fn setup(token: &str) -> Result<i32> {
    let cfg = Config::load(&config::home()?)?;
    let url = api_url(None, &cfg);
    store(&url, token.trim()).await
}

/// `sprite org list`.
pub fn org_list() -> Result<i32> {
    let cfg = Config::load(&config::home()?)?;
    if cfg.urls.is_empty() {
        println!("No organizations configured; run `sprite auth setup --token TOKEN`.");
        return Ok(0);
    }
    for (url, entry) in &cfg.urls {
        println!("{url}:");
        for org in entry.orgs.keys() {
            let current = cfg.current_selection.url == *url && cfg.current_selection.org == *org;
            println!("  {org}{}", if current { " (current)" } else { "" });
        }
    }
    Ok(0)
}

/// `sprite org logout [-o ORG] [--force]`.
pub fn org_logout(org: Option<String>, force: bool) -> Result<i32> {
    let home = config::home()?;
    let mut cfg = Config::load(&home)?;
    let url = api_url(None, &cfg);
    let what = match &org {
        Some(o) => format!("the token of org {o} at {url}"),
        None => format!("every token for {url}"),
    };
    if !force {
        if !crate::terminal::stdin_is_tty() {
            bail!("refusing to remove {what} without --force when stdin is not a terminal");
        }
        if !super::confirm(&format!("Remove {what}?"))? {
            return Ok(1);
        }
    }
    let removed: Vec<config::OrgEntry> = match org {
        Some(o) => cfg
            .urls
            .get_mut(&url)
            .and_then(|e| e.orgs.remove(&o))
            .into_iter()
            .collect(),
        None => cfg
            .urls
            .remove(&url)
            .map(|u| u.orgs.into_values().collect())
            .unwrap_or_default(),
    };
    forget_keyring_tokens(&removed);
    if cfg
        .urls
        .get(&cfg.current_selection.url)
        .is_none_or(|e| !e.orgs.contains_key(&cfg.current_selection.org))
    {
        cfg.current_selection = Default::default();
    }
    cfg.save(&home)?;
    println!("Removed {what}.");
    Ok(0)
}

/// `sprite org keyring enable|disable`. Each token is written to its new place and read
/// back before the config file stops pointing at the old one, and the old copy goes only
/// after the file is saved: a failure at any step leaves every token reachable.
pub fn keyring(cmd: crate::KeyringCmd) -> Result<i32> {
    let home = config::home()?;
    let mut cfg = Config::load(&home)?;
    let mut moved = Vec::new();
    match cmd {
        crate::KeyringCmd::Enable => {
            for (url, u) in cfg.urls.iter_mut() {
                for (org, e) in u.orgs.iter_mut() {
                    let Some(token) = e.api_token.clone() else {
                        continue;
                    };
                    let key = crate::secrets::key(url, org);
                    crate::secrets::store(&key, &token)
                        .with_context(|| "tokens stay in ~/.sprites/sprites.json".to_string())?;
                    e.api_token = None;
                    e.keyring_key = Some(key);
                    e.use_keyring = true;
                    moved.push(format!("{org} at {url}"));
                }
            }
            cfg.save(&home)?;
            println!(
                "{} token(s) moved into the system keyring; later logins go there too.",
                moved.len()
            );
        }
        crate::KeyringCmd::Disable => {
            let mut old_keys = Vec::new();
            for (url, u) in cfg.urls.iter_mut() {
                for (org, e) in u.orgs.iter_mut() {
                    if !e.use_keyring {
                        continue;
                    }
                    let key = e
                        .keyring_key
                        .clone()
                        .unwrap_or_else(|| crate::secrets::key(url, org));
                    e.api_token = Some(crate::secrets::load(&key)?);
                    e.use_keyring = false;
                    e.keyring_key = None;
                    old_keys.push(key);
                    moved.push(format!("{org} at {url}"));
                }
            }
            cfg.save(&home)?;
            for k in &old_keys {
                if let Err(e) = crate::secrets::delete(k) {
                    eprintln!("warning: {e:#}");
                }
            }
            println!(
                "{} token(s) moved back into {}.",
                moved.len(),
                config::path(&home).display()
            );
        }
    }
    Ok(0)
}

/// Removes the keyring copies of tokens no longer in the config (best effort: a keyring that
/// cannot be reached holds nothing we could remove).
fn forget_keyring_tokens(orgs: &[config::OrgEntry]) {
    for k in orgs
        .iter()
        .filter(|o| o.use_keyring)
        .filter_map(|o| o.keyring_key.as_deref())
    {
        if let Err(e) = crate::secrets::delete(k) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// `sprite logout`: remove all configuration.
pub fn logout() -> Result<i32> {
    let home = config::home()?;
    if let Ok(cfg) = Config::load(&home) {
        let all: Vec<config::OrgEntry> = cfg
            .urls
            .into_values()
            .flat_map(|u| u.orgs.into_values())
            .collect();
        forget_keyring_tokens(&all);
    }
    let dir = home.join(".sprites");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => println!("Removed {}.", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("Nothing to remove."),
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    Ok(0)
}

/// `sprite org tokens list|create|revoke`.
pub async fn tokens(ctx: &crate::context::Ctx, cmd: crate::TokensCmd) -> Result<i32> {
    let client = ctx.client()?;
    // The org is the token's own (its first part).
    let org = ctx
        .token()
        .and_then(|t| t.split('/').next())
        .map(str::to_string)
        .or_else(|| ctx.org.clone())
        .ok_or_else(|| anyhow::anyhow!("not logged in; run `sprite auth setup --token TOKEN`"))?;
    let friendly = crate::context::friendly;
    match cmd {
        crate::TokensCmd::List => {
            println!("{:<16} {:<6} {:<26} DESCRIPTION", "ID", "ADMIN", "CREATED");
            for t in client.org_tokens(&org).await.map_err(friendly)? {
                println!(
                    "{:<16} {:<6} {:<26} {}",
                    t.id,
                    if t.admin { "yes" } else { "no" },
                    t.created_at,
                    t.description
                );
            }
        }
        crate::TokensCmd::Create { description, admin } => {
            let req = sprites_api::MintTokenRequest {
                description: Some(description),
                admin: Some(admin),
            };
            let t = client.mint_token(&org, &req).await.map_err(friendly)?;
            eprintln!("Token {} for org {org} (shown this once):", t.id);
            println!("{}", t.token);
        }
        crate::TokensCmd::Revoke { id } => {
            client.revoke_token(&org, &id).await.map_err(friendly)?;
            println!("Revoked {id}");
        }
    }
    Ok(0)
}
