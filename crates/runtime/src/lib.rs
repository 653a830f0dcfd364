//! The host runtime: one [`Backend`] trait that every kind of sprite (Linux namespaces,
//! microVMs) implements, and the [`Runtime`] that drives sprites through their lifecycle.
//!
//! Architecture invariant: nothing here knows HTTP routes, tokens or orgs, and nothing here
//! knows how one particular backend boots a sprite. The server talks to sprites only through
//! [`Runtime`], so a new backend slots in without touching the server.

pub mod agent;
mod backend;
pub mod conformance;
pub mod host;
mod lifecycle;

pub use backend::{AgentStream, Backend, BackendError, BackendKind, SpriteSpec};
pub use lifecycle::{Hold, IdlePolicy, Runtime, State, Transition};
