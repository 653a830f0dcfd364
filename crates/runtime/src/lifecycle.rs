//! The lifecycle state machine: `cold → running ⇄ warm`, `running|warm → cold`.
//!
//! One async mutex per sprite serialises transitions, so concurrent wakes of one sprite are a
//! single boot and a request never sees a half-started sprite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{AgentStream, Backend, BackendError, SpriteSpec};

/// Lifecycle state of one sprite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing runs; only the disk exists.
    Cold,
    /// Processes run.
    Running,
    /// Processes are frozen; memory is kept.
    Warm,
}

impl State {
    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: State) -> bool {
        matches!(
            (self, next),
            (State::Cold, State::Running)
                | (State::Running, State::Warm)
                | (State::Warm, State::Running)
                | (State::Running, State::Cold)
                | (State::Warm, State::Cold)
        )
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<State>>>;

/// Drives sprites of one backend through their lifecycle.
pub struct Runtime {
    backend: Arc<dyn Backend>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Runtime {
    /// A runtime over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn slot(&self, id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(id.to_string()).or_default().clone()
    }

    /// Reads the state, asking the backend when this process has not seen the sprite yet
    /// (after a restart, sprites that kept running are adopted as running).
    async fn observe(&self, spec: &SpriteSpec, known: &mut Option<State>) -> State {
        match *known {
            Some(s) => s,
            None => {
                let s = if self.backend.is_running(spec).await {
                    State::Running
                } else {
                    State::Cold
                };
                *known = Some(s);
                s
            }
        }
    }

    /// Current state of a sprite.
    pub async fn state(&self, spec: &SpriteSpec) -> State {
        let slot = self.slot(&spec.id);
        let mut g = slot.lock().await;
        self.observe(spec, &mut g).await
    }

    /// Makes sure the sprite runs, booting or thawing it if needed.
    pub async fn ensure_running(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let slot = self.slot(&spec.id);
        let mut g = slot.lock().await;
        match self.observe(spec, &mut g).await {
            State::Running => Ok(()),
            State::Warm => {
                self.backend.resume(spec).await?;
                *g = Some(State::Running);
                Ok(())
            }
            State::Cold => {
                self.backend.start(spec).await?;
                *g = Some(State::Running);
                Ok(())
            }
        }
    }

    /// Opens a stream to the sprite's agent, waking the sprite first. If the sprite died
    /// behind our back, it is marked cold and booted again once.
    pub async fn connect(&self, spec: &SpriteSpec) -> Result<AgentStream, BackendError> {
        self.ensure_running(spec).await?;
        match self.backend.connect(spec).await {
            Ok(s) => Ok(s),
            Err(first) => {
                let slot = self.slot(&spec.id);
                {
                    let mut g = slot.lock().await;
                    if self.backend.is_running(spec).await {
                        return Err(first);
                    }
                    tracing::warn!(id = %spec.id, "sprite stopped unexpectedly; booting it again");
                    *g = Some(State::Cold);
                }
                self.ensure_running(spec).await?;
                self.backend.connect(spec).await
            }
        }
    }

    /// Stops the sprite if it runs.
    pub async fn stop(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let slot = self.slot(&spec.id);
        let mut g = slot.lock().await;
        if self.observe(spec, &mut g).await != State::Cold {
            self.backend.stop(spec).await?;
        }
        *g = Some(State::Cold);
        Ok(())
    }

    /// Stops the sprite and releases every host resource but its disk; forgets it.
    pub async fn destroy(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        self.stop(spec).await?;
        self.backend.cleanup(spec).await?;
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&spec.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;

    #[test]
    fn transitions() {
        assert!(Cold.can_become(Running));
        assert!(Running.can_become(Warm));
        assert!(Warm.can_become(Running));
        assert!(Warm.can_become(Cold));
        assert!(!Cold.can_become(Warm));
        assert!(!Running.can_become(Running));
    }
}
