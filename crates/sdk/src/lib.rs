//! `sprites`: the Rust client of the Sprites API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sprites::Error> {
//! let client = sprites::Client::new("org/id/tok/secret").base_url("http://127.0.0.1:7780");
//! client.create_sprite("demo").await?;
//! let out = client.sprite("demo").command("echo", ["hi"]).output().await?;
//! assert_eq!(out.stdout, b"hi\n");
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: this crate knows the public API only (through `sprites-api`); it
//! never depends on server internals.

mod checkpoint;
mod client;
mod connectors;
mod error;
mod exec;
use sprites_api::frames;
mod fs;
mod ndjson;
mod proxy;

pub use checkpoint::Progress;
pub use client::{Client, ListOptions, SpriteHandle};
pub use error::{Error, Result};
pub use exec::{Child, ChildOutput, ChildStdin, Command, KillEvent, Output, SessionInfo};
pub use fs::{ByteStream, FileInfo, TarSummary, SPRITE_HOME};
pub use ndjson::NdjsonStream;
pub use proxy::{PortMapping, ProxyManager, ProxySession, ProxyStream};
pub use sprites_api as api;
