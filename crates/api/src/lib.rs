//! Public wire types of the Sprites API, as the official clients speak it.
//!
//! This crate is the only place that knows the public JSON shapes and the exec frame format
//! (`shared/spec/sprites-protocol.md`). It does no I/O, so the server, the agent, the SDK and
//! the CLI can all depend on it without pulling in a runtime.

pub mod checkpoint;
pub mod cli;
pub mod connector;
pub mod duration;
pub mod error;
pub mod exec;
pub mod frames;
pub mod mcp;
pub mod names;
pub mod signal;
pub mod sprite;
pub mod timefmt;

pub use error::{ErrorBody, ErrorCode};
pub use sprite::*;

/// Value of the `Sprite-Version` header sent on every response. Go picks the attach URL form
/// from it: release versions use the path form `/exec/{id}`.
pub const SPRITE_VERSION: &str = "0.1.0";

/// Header carrying [`SPRITE_VERSION`].
pub const SPRITE_VERSION_HEADER: &str = "Sprite-Version";

/// Capabilities advertised on the exec WebSocket upgrade.
pub const CAPABILITIES_HEADER: &str = "X-Sprite-Capabilities";
