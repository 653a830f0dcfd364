//! `create`, `use`, `list`, `destroy`, `url`.

use anyhow::{bail, Context, Result};
use sprites_api::{UpdateSpriteRequest, UrlSettings};

use crate::config::Local;
use crate::context::{friendly, Ctx};
use crate::UrlCmd;

/// `SPRITE` or `SPRITE:CHECKPOINT`.
fn source_of(from: &str) -> sprites_api::SpriteSource {
    let (sprite, checkpoint) = match from.split_once(':') {
        Some((s, c)) => (s, Some(c.to_string())),
        None => (from, None),
    };
    sprites_api::SpriteSource {
        sprite: Some(sprite.to_string()),
        checkpoint,
        template: None,
    }
}

/// `sprite create [NAME] [--skip-console] [--from SPRITE[:CKPT] | --template NAME]`.
pub async fn create(
    ctx: &Ctx,
    name: Option<String>,
    skip_console: bool,
    from: Option<String>,
    template: Option<String>,
) -> Result<i32> {
    let name = match ctx.sprite_name(name) {
        Ok(n) => n,
        Err(_) if crate::terminal::stdin_is_tty() => super::ask("Name of the new sprite: ")?,
        Err(_) => bail!("name the new sprite: `sprite create NAME`"),
    };
    if let Err(m) = sprites_api::names::validate_sprite_name(&name) {
        bail!("{m}");
    }
    let client = ctx.client()?;
    let source = match (from, template) {
        (Some(f), _) => Some(source_of(&f)),
        (None, Some(t)) => Some(sprites_api::SpriteSource {
            template: Some(t),
            ..Default::default()
        }),
        (None, None) => None,
    };
    let req = sprites_api::CreateSpriteRequest {
        name: name.clone(),
        source,
        ..Default::default()
    };
    // A spinner only where the create must wait (a fork of a big disk, a first boot), on a
    // terminal: most creates finish before it would draw.
    let created = client.create_sprite_with(&req);
    tokio::pin!(created);
    let s = match tokio::time::timeout(std::time::Duration::from_millis(300), &mut created).await {
        Ok(r) => r,
        Err(_) => {
            let bar = crate::progress::spinner(&format!("Creating sprite {name}"));
            let r = created.await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            r
        }
    }
    .map_err(friendly)?;
    println!("Created sprite {} ({})", s.name, s.status.as_str());
    if !skip_console && crate::terminal::stdin_is_tty() {
        return super::exec::console_for(&client.sprite(&name)).await;
    }
    Ok(0)
}

/// `sprite use [NAME] [--unset]`: with no name, a pick from the org's sprites (on a terminal).
pub async fn use_sprite(ctx: &Ctx, name: Option<String>, unset: bool) -> Result<i32> {
    if unset {
        match std::fs::remove_file(".sprite") {
            Ok(()) => println!("No sprite set for this directory any more (.sprite removed)."),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("No sprite was set for this directory.")
            }
            Err(e) => return Err(e).context("removing .sprite"),
        }
        return Ok(0);
    }
    let client = ctx.client()?;
    let name = match name {
        Some(n) => n,
        None => {
            if !crate::terminal::stdin_is_tty() {
                bail!("name the sprite (`sprite use NAME`), or run this in a terminal to pick one");
            }
            let all = client.list_all_sprites(None).await.map_err(friendly)?;
            if all.is_empty() {
                bail!("the org has no sprites yet: `sprite create NAME` makes one");
            }
            for (i, s) in all.iter().enumerate() {
                eprintln!("{:>3}) {}\t{}", i + 1, s.name, s.status.as_str());
            }
            let answer = super::ask(&format!("Use which sprite? [1-{}] ", all.len()))?;
            match answer.parse::<usize>() {
                Ok(i) if (1..=all.len()).contains(&i) => all[i - 1].name.clone(),
                _ if all.iter().any(|s| s.name == answer) => answer,
                _ => bail!("{answer:?} is not one of the {} sprites listed", all.len()),
            }
        }
    };
    client.get_sprite(&name).await.map_err(friendly)?;
    let local = Local {
        organization: ctx.org.clone(),
        sprite: name.to_string(),
    };
    std::fs::write(".sprite", serde_json::to_vec_pretty(&local)?).context("writing .sprite")?;
    println!("Using sprite {name} in this directory (.sprite).");
    Ok(0)
}

/// `sprite list [--prefix P]`.
pub async fn list(ctx: &Ctx, prefix: Option<String>, watch: bool) -> Result<i32> {
    if watch {
        // Each line as it comes: the sprites now, then their changes.
        let mut stream = ctx
            .client()?
            .watch_sprites(prefix.as_deref())
            .await
            .map_err(friendly)?;
        while let Some(ev) = stream.next().await.map_err(friendly)? {
            if let (Some(name), Some(status)) = (ev.name, ev.status) {
                println!("{name}\t{}", status.as_str());
            }
        }
        return Ok(0);
    }
    let all = ctx
        .client()?
        .list_all_sprites(prefix.as_deref())
        .await
        .map_err(friendly)?;
    if all.is_empty() {
        eprintln!("No sprites.");
    }
    for s in all {
        println!("{}\t{}", s.name, s.status.as_str());
    }
    Ok(0)
}

/// `sprite destroy [NAME] [--force]`.
pub async fn destroy(ctx: &Ctx, name: Option<String>, force: bool) -> Result<i32> {
    let name = ctx.sprite_name(name)?;
    if !force {
        if !crate::terminal::stdin_is_tty() {
            bail!("refusing to destroy without --force when stdin is not a terminal");
        }
        if !super::confirm(&format!("Destroy sprite {name}? This cannot be undone."))? {
            eprintln!("Not destroyed.");
            return Ok(1);
        }
    }
    ctx.client()?.delete_sprite(&name).await.map_err(friendly)?;
    println!("Destroyed sprite {name}");
    Ok(0)
}

/// `sprite url` and `sprite url update --auth public|sprite|default`.
/// `sprite image [upgrade]`.
pub async fn image(ctx: &Ctx, cmd: Option<crate::ImageCmd>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    match cmd {
        None => {
            let s = sprite.get().await.map_err(friendly)?;
            println!("{}", s.base_image.as_deref().unwrap_or("unknown"));
        }
        Some(crate::ImageCmd::Upgrade) => {
            let r = sprite.upgrade().await.map_err(friendly)?;
            if r.upgraded {
                println!(
                    "{}: moved from base {} to {}",
                    r.name,
                    r.from.as_deref().unwrap_or("unknown"),
                    r.to
                );
            } else {
                println!("{}: already on the newest base {}", r.name, r.to);
            }
        }
    }
    Ok(0)
}

pub async fn url(ctx: &Ctx, cmd: Option<UrlCmd>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let s = match cmd {
        None => sprite.get().await.map_err(friendly)?,
        Some(UrlCmd::Update { auth }) => {
            let auth = match auth.as_str() {
                "public" => "public",
                "sprite" | "default" => "sprite",
                other => bail!("--auth must be public, sprite or default, not {other:?}"),
            };
            let req = UpdateSpriteRequest {
                url_settings: Some(UrlSettings {
                    auth: Some(auth.into()),
                    private_access: None,
                }),
                ..Default::default()
            };
            sprite.update(&req).await.map_err(friendly)?
        }
    };
    println!("URL: {}", s.url);
    println!(
        "Auth: {}",
        s.url_settings.auth.as_deref().unwrap_or("sprite")
    );
    Ok(0)
}

/// `sprite templates …`.
pub async fn templates(ctx: &Ctx, cmd: crate::TemplatesCmd) -> Result<i32> {
    let client = ctx.client()?;
    match cmd {
        crate::TemplatesCmd::List => {
            let list = client.list_templates().await.map_err(friendly)?;
            if list.is_empty() {
                println!("No templates; make one with `sprite templates create NAME --from SPRITE[:CHECKPOINT]`.");
            }
            for t in list {
                println!(
                    "{}\tfrom {}:{}\t{}",
                    t.name, t.source_sprite, t.source_checkpoint, t.created_at
                );
            }
        }
        crate::TemplatesCmd::Create { name, from } => {
            let src = source_of(&from);
            let req = sprites_api::PutTemplateRequest {
                sprite: src.sprite.unwrap_or_default(),
                checkpoint: src.checkpoint,
            };
            let t = client.put_template(&name, &req).await.map_err(friendly)?;
            println!(
                "Template {} from {}:{}; use it with `sprite create NAME --template {}`",
                t.name, t.source_sprite, t.source_checkpoint, t.name
            );
        }
        crate::TemplatesCmd::Delete { name } => {
            client.delete_template(&name).await.map_err(friendly)?;
            println!("Deleted template {name}");
        }
    }
    Ok(0)
}

/// `sprite sleep [--cold] [--force]`.
pub async fn sleep(ctx: &Ctx, cold: bool, force: bool) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let s = sprite.sleep(cold, force).await.map_err(friendly)?;
    println!("{} is {}", s.name, s.status.as_str());
    Ok(0)
}

/// `sprite update --warm-after D --cold-after D | --default-idle`.
pub async fn update_idle(
    ctx: &Ctx,
    warm_after: Option<String>,
    cold_after: Option<String>,
    default_idle: bool,
) -> Result<i32> {
    if !default_idle && warm_after.is_none() && cold_after.is_none() {
        bail!("nothing to change: give --warm-after, --cold-after or --default-idle");
    }
    let idle = (!default_idle).then_some(sprites_api::IdleSettings {
        warm_after,
        cold_after,
    });
    let req = UpdateSpriteRequest {
        idle: Some(idle),
        ..Default::default()
    };
    let s = ctx.sprite()?.update(&req).await.map_err(friendly)?;
    match &s.idle {
        Some(i) => println!(
            "{}: warm after {}, cold after {}",
            s.name,
            i.warm_after.as_deref().unwrap_or("the server's time"),
            i.cold_after.as_deref().unwrap_or("the server's time")
        ),
        None => println!("{}: the server's idle times", s.name),
    }
    Ok(0)
}
