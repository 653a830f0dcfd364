//! The lifecycle state machine: `cold → running ⇄ warm`, `running|warm → cold`, and the idle
//! detector that drives it.
//!
//! One async mutex per sprite serialises transitions, so concurrent wakes of one sprite are a
//! single boot and a request never sees a half-started sprite. Requests hold a sprite awake
//! with [`Runtime::hold`]; when nothing holds it and its agent reports no activity, the idle
//! loop freezes it (`warm`) and later stops it (`cold`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::{agent, AgentStream, Backend, BackendError, SpriteSpec};

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

/// A state change, for whoever records timestamps.
#[derive(Debug, Clone)]
pub struct Transition {
    /// Sprite id.
    pub id: String,
    /// New state.
    pub state: State,
    /// For a wake: the state woken from and how long the resume or boot took.
    pub woke: Option<(State, Duration)>,
}

/// When idle sprites go warm and cold.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Idle time before freezing.
    pub warm_after: Duration,
    /// Time warm before stopping.
    pub cold_after: Duration,
    /// How often to look.
    pub tick: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self {
            warm_after: Duration::from_secs(10),
            cold_after: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(1),
        }
    }
}

#[derive(Default)]
struct SlotState {
    state: Option<State>,
    spec: Option<SpriteSpec>,
    idle_since: Option<Instant>,
    warm_since: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    inner: tokio::sync::Mutex<SlotState>,
    holds: AtomicUsize,
    /// The idle detector is looking at this sprite (its probe may take a while).
    visiting: std::sync::atomic::AtomicBool,
}

/// Keeps a sprite awake while alive (an in-flight request, an open connection).
pub struct Hold {
    slot: Arc<Slot>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.slot.holds.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Drives sprites of one backend through their lifecycle.
pub struct Runtime {
    backend: Arc<dyn Backend>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    events: broadcast::Sender<Transition>,
    /// Per-sprite idle times (warm after, cold after) that replace the server's.
    idle: Mutex<HashMap<String, (Duration, Duration)>>,
}

impl Runtime {
    /// A runtime over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            slots: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Sets (or with `None` clears) sprite `id`'s own idle times.
    pub fn set_idle(&self, id: &str, times: Option<(Duration, Duration)>) {
        let mut m = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match times {
            Some(t) => m.insert(id.to_string(), t),
            None => m.remove(id),
        };
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// State changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(id.to_string()).or_default().clone()
    }

    /// Keeps the sprite from going idle until the returned guard drops.
    pub fn hold(&self, spec: &SpriteSpec) -> Hold {
        let slot = self.slot(&spec.id);
        slot.holds.fetch_add(1, Ordering::SeqCst);
        Hold { slot }
    }

    fn set(&self, st: &mut SlotState, spec: &SpriteSpec, next: State) {
        self.set_woken(st, spec, next, None)
    }

    fn set_woken(
        &self,
        st: &mut SlotState,
        spec: &SpriteSpec,
        next: State,
        woke: Option<(State, Duration)>,
    ) {
        if st.state == Some(next) {
            return;
        }
        debug_assert!(
            st.state.is_none_or(|s| s.can_become(next)),
            "{:?} -> {next:?}",
            st.state
        );
        st.state = Some(next);
        st.spec = Some(spec.clone());
        st.idle_since = None;
        st.warm_since = (next == State::Warm).then(Instant::now);
        let _ = self.events.send(Transition {
            id: spec.id.clone(),
            state: next,
            woke,
        });
    }

    /// Reads the state, asking the backend when this process has not seen the sprite yet
    /// (after a restart, sprites that kept running or stayed frozen are adopted as such).
    async fn observe(&self, spec: &SpriteSpec, st: &mut SlotState) -> State {
        if let Some(s) = st.state {
            return s;
        }
        let s = if !self.backend.is_running(spec).await {
            State::Cold
        } else if self.backend.is_paused(spec).await {
            State::Warm
        } else {
            State::Running
        };
        st.state = Some(s);
        st.spec = Some(spec.clone());
        st.warm_since = (s == State::Warm).then(Instant::now);
        s
    }

    /// Current state of a sprite.
    pub async fn state(&self, spec: &SpriteSpec) -> State {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        self.observe(spec, &mut g).await
    }

    /// Makes sure the sprite runs, booting or thawing it if needed.
    pub async fn ensure_running(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        match self.observe(spec, &mut g).await {
            State::Running => {}
            State::Warm => {
                let t = Instant::now();
                self.backend.resume(spec).await?;
                let woke = Some((State::Warm, t.elapsed()));
                self.set_woken(&mut g, spec, State::Running, woke);
            }
            State::Cold => {
                let t = Instant::now();
                self.backend.start(spec).await?;
                let woke = Some((State::Cold, t.elapsed()));
                self.set_woken(&mut g, spec, State::Running, woke);
            }
        }
        g.idle_since = None;
        Ok(())
    }

    /// [`Backend::dial_loopback`] on a running sprite (woken first).
    pub async fn dial_loopback(
        &self,
        spec: &SpriteSpec,
        port: u16,
    ) -> Option<Result<tokio::net::TcpStream, BackendError>> {
        if let Err(e) = self.ensure_running(spec).await {
            return Some(Err(e));
        }
        self.backend.dial_loopback(spec, port).await
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
                    let mut g = slot.inner.lock().await;
                    // A sprite that is still shutting down (a stop cut short by a server
                    // crash) gets a moment to finish; then it is booted again.
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while self.backend.is_running(spec).await {
                        if let Ok(s) = self.backend.connect(spec).await {
                            return Ok(s);
                        }
                        if Instant::now() > deadline {
                            return Err(first);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tracing::warn!(id = %spec.id, "sprite stopped unexpectedly; booting it again");
                    self.set(&mut g, spec, State::Cold);
                }
                self.ensure_running(spec).await?;
                self.backend.connect(spec).await
            }
        }
    }

    /// Stops the sprite if it runs.
    pub async fn stop(&self, spec: &SpriteSpec) -> Result<(), BackendError> {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        if self.observe(spec, &mut g).await != State::Cold {
            self.backend.stop(spec).await?;
        }
        self.set(&mut g, spec, State::Cold);
        Ok(())
    }

    /// Runs `f` while the sprite's disk cannot change (the backend quiesces it: processes
    /// paused and the filesystem frozen, or the guest's filesystem frozen); a cold sprite is
    /// kept from booting. Lifecycle changes of this sprite wait until `f` is done.
    pub async fn with_disk_still<T, F, Fut>(
        &self,
        spec: &SpriteSpec,
        f: F,
    ) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        if self.observe(spec, &mut g).await == State::Cold {
            return Ok(f().await);
        }
        self.backend.freeze_disk(spec).await?;
        let out = f().await;
        let thawed = self.backend.thaw_disk(spec).await;
        g.idle_since = None;
        thawed.map(|_| out)
    }

    /// Stops the sprite, runs `f` (which replaces its disk), and boots it again. Every process
    /// and exec session of the sprite ends; services start again at boot.
    pub async fn with_disk_replaced<T, E, F, Fut>(
        &self,
        spec: &SpriteSpec,
        f: F,
    ) -> Result<Result<T, E>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.with_disk_replaced_as(spec, spec, f).await
    }

    /// [`Runtime::with_disk_replaced`], booting it again as `next` (the same sprite on
    /// another base image) when `f` succeeds, and as `spec` when it fails.
    pub async fn with_disk_replaced_as<T, E, F, Fut>(
        &self,
        spec: &SpriteSpec,
        next: &SpriteSpec,
        f: F,
    ) -> Result<Result<T, E>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        if self.observe(spec, &mut g).await != State::Cold {
            self.backend.stop(spec).await?;
        }
        self.set(&mut g, spec, State::Cold);
        let out = f().await;
        let boot = if out.is_ok() { next } else { spec };
        self.backend.start(boot).await?;
        self.set(&mut g, boot, State::Running);
        Ok(out)
    }

    /// Puts a sprite to sleep now: frozen (`cold` false: memory kept) or stopped. Unless
    /// `force`, refused while a request holds it or its agent reports activity (a task, an
    /// attached session). Returns the state it is in afterwards, or `None` when busy.
    pub async fn sleep(
        &self,
        spec: &SpriteSpec,
        cold: bool,
        force: bool,
    ) -> Result<Option<State>, BackendError> {
        let slot = self.slot(&spec.id);
        if !force && slot.holds.load(Ordering::SeqCst) > 0 {
            return Ok(None);
        }
        let mut g = slot.inner.lock().await;
        let now = self.observe(spec, &mut g).await;
        if !force && now == State::Running && self.agent_active(spec).await {
            return Ok(None);
        }
        match (now, cold) {
            (State::Cold, _) | (State::Warm, false) => {}
            (_, true) => {
                self.backend.stop(spec).await?;
                self.set(&mut g, spec, State::Cold);
            }
            (State::Running, false) => {
                self.backend.pause(spec).await?;
                self.set(&mut g, spec, State::Warm);
            }
        }
        Ok(g.state)
    }

    /// Runs `f` while the sprite is kept from booting; if it ran, it is stopped first and
    /// booted again afterwards as `next`. For changes of what a sprite boots from (its base
    /// image) that must never happen under a running sprite.
    pub async fn while_stopped<T, E, F, Fut>(
        &self,
        spec: &SpriteSpec,
        next: &SpriteSpec,
        f: F,
    ) -> Result<Result<T, E>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let slot = self.slot(&spec.id);
        let mut g = slot.inner.lock().await;
        let was = self.observe(spec, &mut g).await;
        if was != State::Cold {
            self.backend.stop(spec).await?;
            self.set(&mut g, spec, State::Cold);
        }
        let out = f().await;
        if was != State::Cold {
            let boot = if out.is_ok() { next } else { spec };
            self.backend.start(boot).await?;
            self.set(&mut g, boot, State::Running);
        }
        Ok(out)
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

    /// Looks at every known sprite once: freezes the idle running ones, stops the ones warm
    /// for too long. Each sprite is looked at in a task of its own, and a sprite still being
    /// looked at from an earlier tick is skipped: an agent may take its whole probe timeout
    /// to answer, or never answer, and must not hold back any other sprite's sleep.
    pub fn idle_pass(self: &Arc<Self>, policy: IdlePolicy) {
        let slots: Vec<(String, Arc<Slot>)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, slot) in slots {
            if slot.visiting.swap(true, Ordering::SeqCst) {
                continue;
            }
            let me = self.clone();
            // The sprite's own idle times, where it has them.
            let mut policy = policy;
            if let Some((w, c)) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                policy.warm_after = *w;
                policy.cold_after = *c;
            }
            tokio::spawn(async move {
                me.visit_idle(slot.clone(), &policy).await;
                slot.visiting.store(false, Ordering::SeqCst);
            });
        }
    }

    /// One sprite's turn in [`Runtime::idle_pass`]; transitions go out as events.
    async fn visit_idle(&self, slot: Arc<Slot>, policy: &IdlePolicy) {
        if slot.holds.load(Ordering::SeqCst) > 0 {
            // A request is in flight or a connection open: not idle.
            if let Ok(mut g) = slot.inner.try_lock() {
                g.idle_since = None;
            }
            return;
        }
        let (state, spec, idle_since, warm_since) = {
            let g = slot.inner.lock().await;
            match (&g.state, &g.spec) {
                (Some(s), Some(spec)) => (*s, spec.clone(), g.idle_since, g.warm_since),
                _ => return,
            }
        };
        let now = Instant::now();
        match state {
            State::Running => {
                if self.agent_active(&spec).await {
                    slot.inner.lock().await.idle_since = None;
                    return;
                }
                let since = idle_since.unwrap_or(now);
                let mut g = slot.inner.lock().await;
                g.idle_since = Some(since);
                if now.duration_since(since) < policy.warm_after
                    || slot.holds.load(Ordering::SeqCst) > 0
                    || g.state != Some(State::Running)
                {
                    return;
                }
                match self.backend.pause(&spec).await {
                    Ok(()) => self.set(&mut g, &spec, State::Warm),
                    Err(e) => tracing::warn!(id = %spec.id, "pausing idle sprite: {e}"),
                }
            }
            State::Warm => {
                let Some(since) = warm_since else { return };
                if now.duration_since(since) < policy.cold_after {
                    return;
                }
                let mut g = slot.inner.lock().await;
                if slot.holds.load(Ordering::SeqCst) > 0 || g.state != Some(State::Warm) {
                    return;
                }
                let stopped = async {
                    self.backend.resume(&spec).await?;
                    self.backend.stop(&spec).await
                };
                match stopped.await {
                    Ok(()) => self.set(&mut g, &spec, State::Cold),
                    Err(e) => tracing::warn!(id = %spec.id, "stopping warm sprite: {e}"),
                }
            }
            State::Cold => {}
        }
    }

    /// Whether the agent reports work (attached sessions, recent output, live tasks).
    /// An agent that does not answer counts as active: it may be booting or busy.
    async fn agent_active(&self, spec: &SpriteSpec) -> bool {
        let probe = async {
            let s = self.backend.connect(spec).await?;
            agent::activity(s).await
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(a)) => a.active,
            _ => true,
        }
    }

    /// Runs [`Runtime::idle_pass`] forever, every `policy.tick`.
    pub async fn run_idle_loop(self: Arc<Self>, policy: IdlePolicy) {
        let mut tick = tokio::time::interval(policy.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.idle_pass(policy);
        }
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
