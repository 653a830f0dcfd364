//! `checkpoint create|list|info|delete|restore` and `restore`.

use anyhow::Result;

use crate::context::{friendly, Ctx};

/// Runs a checkpoint or restore to its end, its progress events as one live line on a
/// terminal (nothing in a pipe, where only the result is printed).
async fn follow(progress: sprites::Progress, what: &str) -> Result<String> {
    let bar = crate::progress::spinner(what);
    let done = progress
        .finish(|ev| {
            if let (Some(bar), "info", Some(d)) = (&bar, ev.kind.as_str(), &ev.data) {
                bar.set_message(d.clone());
            }
        })
        .await
        .map_err(friendly);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    done
}

/// `sprite checkpoint create [--comment TEXT]`.
pub async fn create(ctx: &Ctx, comment: Option<String>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let progress = sprite
        .create_checkpoint(comment.as_deref())
        .await
        .map_err(friendly)?;
    let done = follow(progress, "Checkpointing").await?;
    // "Checkpoint v3 created successfully" → "Checkpoint created: v3", as the official CLI says.
    match done.split_whitespace().nth(1) {
        Some(id) if sprites::api::checkpoint::is_version_id(id) => {
            println!("Checkpoint created: {id}")
        }
        _ => println!("{done}"),
    }
    Ok(0)
}

/// `sprite checkpoint list [--include-auto] [--history V]`.
pub async fn list(ctx: &Ctx, include_auto: bool, history: Option<String>) -> Result<i32> {
    let sprite = ctx.sprite()?;
    let all = sprite
        .list_checkpoints(include_auto)
        .await
        .map_err(friendly)?;
    println!("{:<10} {:<26} {:<8} COMMENT", "ID", "CREATED", "SOURCE");
    for c in all {
        if let Some(h) = &history {
            if !c.history.as_ref().is_some_and(|hs| hs.contains(h)) {
                continue;
            }
        }
        println!(
            "{:<10} {:<26} {:<8} {}",
            c.id,
            c.create_time,
            c.source_id.as_deref().unwrap_or("-"),
            c.comment.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

/// `sprite checkpoint info ID`.
pub async fn info(ctx: &Ctx, id: &str) -> Result<i32> {
    let c = ctx.sprite()?.get_checkpoint(id).await.map_err(friendly)?;
    println!("ID:       {}", c.id);
    println!("Created:  {}", c.create_time);
    println!("Comment:  {}", c.comment.as_deref().unwrap_or(""));
    println!("Source:   {}", c.source_id.as_deref().unwrap_or("-"));
    if let Some(h) = c.history.filter(|h| !h.is_empty()) {
        println!("History:  {}", h.join(" <- "));
    }
    Ok(0)
}

/// `sprite checkpoint delete ID`.
pub async fn delete(ctx: &Ctx, id: &str) -> Result<i32> {
    ctx.sprite()?
        .delete_checkpoint(id)
        .await
        .map_err(friendly)?;
    println!("Deleted checkpoint {id}");
    Ok(0)
}

/// `sprite restore ID`.
pub async fn restore(ctx: &Ctx, id: &str) -> Result<i32> {
    let progress = ctx
        .sprite()?
        .restore_checkpoint(id)
        .await
        .map_err(friendly)?;
    let done = follow(progress, &format!("Restoring {id}")).await?;
    println!("{done}");
    Ok(0)
}
