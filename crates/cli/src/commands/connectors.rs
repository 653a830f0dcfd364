//! `sprite connectors …` (the org's credentials for the gateway) and `sprite labels …`.

use std::io::Read;

use anyhow::{bail, Context, Result};
use sprites_api::connector::{
    AccessPolicy, AuthIn, Connection, CreateApiKeyRequest, CustomAuth, PatchConnectionRequest,
    TestRequest,
};
use sprites_api::UpdateSpriteRequest;

use crate::context::{friendly, Ctx};
use crate::{ConnectorsCmd, LabelsCmd, PolicyArgs};

/// The key, from `--api-key-file FILE` (`-` is stdin) or piped on stdin; never from the
/// command line, where other users and the shell's history would see it.
fn read_key(file: Option<&str>) -> Result<secrecy::SecretString> {
    let mut key = String::new();
    match file {
        Some("-") | None => {
            if file.is_none() && crate::terminal::stdin_is_tty() {
                bail!("give the key with --api-key-file FILE, or pipe it on stdin (never on the command line)");
            }
            std::io::stdin()
                .read_to_string(&mut key)
                .context("reading the key from stdin")?;
        }
        Some(path) => {
            key = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        }
    }
    let key = key.trim().to_string();
    if key.is_empty() {
        bail!("the key is empty");
    }
    Ok(key.into())
}

impl PolicyArgs {
    fn given(&self) -> bool {
        self.allow_all
            || self.prefix.is_some()
            || !self.label.is_empty()
            || !self.allow.is_empty()
            || !self.block.is_empty()
    }

    fn policy(&self) -> AccessPolicy {
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        AccessPolicy {
            allow_all: self.allow_all.then_some(true),
            name_prefix: self.prefix.clone(),
            sprite_labels: some(&self.label),
            allowed_endpoints: some(&self.allow),
            blocked_endpoints: some(&self.block),
        }
    }
}

fn describe_policy(p: &AccessPolicy) -> String {
    if p.allow_all == Some(true) {
        return "every sprite".into();
    }
    let mut parts = Vec::new();
    if let Some(x) = &p.name_prefix {
        parts.push(format!("names starting {x:?}"));
    }
    if let Some(l) = p.sprite_labels.as_ref().filter(|l| !l.is_empty()) {
        parts.push(format!("labels {}", l.join(",")));
    }
    if parts.is_empty() {
        return "no sprite yet (deny by default)".into();
    }
    parts.join(" and ")
}

fn print_one(c: &Connection) {
    println!("{}  {} ({})", c.id, c.provider, c.connection_type);
    if let Some(n) = &c.provider_account_name {
        println!("  account:   {n}");
    }
    println!("  sprites:   {}", describe_policy(&c.access_policy));
    if let Some(a) = &c.access_policy.allowed_endpoints {
        println!("  allowed:   {}", a.join(" "));
    }
    if let Some(b) = &c.access_policy.blocked_endpoints {
        println!("  blocked:   {}", b.join(" "));
    }
    if let Some(s) = &c.scopes {
        println!("  scopes:    {s}");
    }
    println!("  gateway:   {}", c.gateway_base_url);
    println!("  try:       {}", c.usage_snippet);
    let u = &c.usage;
    println!(
        "  usage:     24h {} calls ({} errors, {} bytes); 7d {}; 30d {}",
        u.last_24h.requests,
        u.last_24h.errors,
        u.last_24h.bytes,
        u.last_7d.requests,
        u.last_30d.requests
    );
}

/// `sprite connectors …`.
pub async fn connectors(ctx: &Ctx, cmd: ConnectorsCmd) -> Result<i32> {
    let client = ctx.client()?;
    match cmd {
        ConnectorsCmd::List { provider, json } => {
            let list = client
                .list_connections(provider.as_deref())
                .await
                .map_err(friendly)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!(
                    "No connectors yet; add one with `sprite connectors create --provider NAME`."
                );
            } else {
                println!("{:<22} {:<12} {:<12} SPRITES", "ID", "PROVIDER", "TYPE");
                for c in &list {
                    println!(
                        "{:<22} {:<12} {:<12} {}",
                        c.id,
                        c.provider,
                        c.connection_type,
                        describe_policy(&c.access_policy)
                    );
                }
            }
        }
        ConnectorsCmd::Get { id, json } => {
            let c = client.get_connection(&id).await.map_err(friendly)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_one(&c);
            }
        }
        ConnectorsCmd::Create {
            provider,
            api_key_file,
            name,
            base_url,
            auth_in,
            auth_name,
            auth_format,
            test_path,
            expect_status,
            policy,
        } => {
            let api_key = read_key(api_key_file.as_deref())?;
            let custom = auth_in.is_some() || auth_name.is_some() || auth_format.is_some();
            let auth = custom.then_some(CustomAuth {
                placement: match auth_in.as_deref() {
                    Some("query") => AuthIn::Query,
                    Some("path") => AuthIn::Path,
                    _ => AuthIn::Header,
                },
                name: auth_name,
                format: auth_format,
            });
            let req = CreateApiKeyRequest {
                provider,
                api_key,
                name,
                base_url,
                auth,
                test_request: test_path.map(|path| TestRequest {
                    method: "GET".into(),
                    path,
                    expect_status: expect_status.unwrap_or(200),
                }),
                access_policy: Some(policy.policy()),
            };
            let c = client
                .create_api_key_connection(&req)
                .await
                .map_err(friendly)?;
            println!("Created connector {} for {}", c.id, c.provider);
            println!("  sprites: {}", describe_policy(&c.access_policy));
            println!("  inside an allowed sprite: {}", c.usage_snippet);
        }
        ConnectorsCmd::Update {
            id,
            api_key_file,
            replace,
            policy,
        } => {
            let api_key = api_key_file
                .as_deref()
                .map(|f| read_key(Some(f)))
                .transpose()?;
            let c = if replace || policy.given() {
                let mut p = policy.policy();
                if !replace {
                    // Only the fields given change.
                    let cur = client
                        .get_connection(&id)
                        .await
                        .map_err(friendly)?
                        .access_policy;
                    p = AccessPolicy {
                        allow_all: p.allow_all.or(cur.allow_all),
                        name_prefix: p.name_prefix.or(cur.name_prefix),
                        sprite_labels: p.sprite_labels.or(cur.sprite_labels),
                        allowed_endpoints: p.allowed_endpoints.or(cur.allowed_endpoints),
                        blocked_endpoints: p.blocked_endpoints.or(cur.blocked_endpoints),
                    };
                }
                let req = PatchConnectionRequest {
                    access_policy: Some(p),
                    api_key,
                    provider_account_name: None,
                };
                client.patch_connection(&id, &req).await.map_err(friendly)?
            } else if api_key.is_some() {
                let req = PatchConnectionRequest {
                    api_key,
                    ..Default::default()
                };
                client.patch_connection(&id, &req).await.map_err(friendly)?
            } else {
                bail!("nothing to change: give policy flags, --replace or --api-key-file");
            };
            println!(
                "Updated connector {}: {}",
                c.id,
                describe_policy(&c.access_policy)
            );
        }
        ConnectorsCmd::Delete { id } => {
            client.delete_connection(&id).await.map_err(friendly)?;
            println!("Deleted connector {id}; its credential is gone");
        }
        ConnectorsCmd::Sprites { id } => {
            let list = client.connection_sprites(&id).await.map_err(friendly)?;
            if list.is_empty() {
                println!("No sprite may use {id} now.");
            }
            for s in list {
                println!("{}\t{}", s.name, s.labels.join(","));
            }
        }
        ConnectorsCmd::Authorize {
            provider,
            scopes,
            wait,
        } => {
            let before: Vec<String> = client
                .list_connections(Some(&provider))
                .await
                .map_err(friendly)?
                .into_iter()
                .map(|c| c.id)
                .collect();
            let scopes: Vec<String> = scopes
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let a = client
                .authorize_connection(&provider, &scopes)
                .await
                .map_err(friendly)?;
            println!(
                "Open this URL in a browser to connect {provider}:\n  {}",
                a.authorize_url
            );
            if !wait {
                return Ok(0);
            }
            eprintln!("Waiting for the provider to send you back (Ctrl-C to stop)...");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let now = client
                    .list_connections(Some(&provider))
                    .await
                    .map_err(friendly)?;
                if let Some(c) = now.iter().find(|c| !before.contains(&c.id)) {
                    println!("Connected: {} ({}); give sprites access with `sprite connectors update {} --label ...`", c.id, c.provider, c.id);
                    return Ok(0);
                }
            }
            bail!("no connection arrived within 10 minutes");
        }
    }
    Ok(0)
}

/// `sprite labels [add|remove] LABEL…`.
pub async fn labels(ctx: &Ctx, cmd: Option<LabelsCmd>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let mut labels = sprite.get().await.map_err(friendly)?.labels;
    let change = match cmd {
        None => None,
        Some(LabelsCmd::Add { labels: add }) => {
            for l in add {
                if !labels.contains(&l) {
                    labels.push(l);
                }
            }
            Some(labels.clone())
        }
        Some(LabelsCmd::Remove { labels: rm }) => {
            labels.retain(|l| !rm.contains(l));
            Some(labels.clone())
        }
    };
    if let Some(l) = change {
        let req = UpdateSpriteRequest {
            labels: Some(l.clone()),
            clear_labels: l.is_empty().then_some(true),
            ..Default::default()
        };
        labels = sprite.update(&req).await.map_err(friendly)?.labels;
    }
    for l in labels {
        println!("{l}");
    }
    Ok(0)
}
