//! `/metrics` in Prometheus' text format (`prometheus-client`), on its own listener
//! (`--metrics-listen`): the figures span every org, so they are not on the public API.
//! Every metric is listed in `docs/metrics.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sprites_runtime::State as SpriteState;

type Labels = Vec<(String, String)>;

fn seconds_buckets() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// The last state each sprite was seen entering (sprites never touched since the start
    /// are cold, and counted as the rest of the store's total).
    states: std::sync::Mutex<std::collections::HashMap<String, SpriteState>>,
    sprites: Family<Labels, Gauge>,
    transitions: Family<Labels, Counter>,
    wakes: Family<Labels, Counter>,
    wake_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    requests: Family<Labels, Counter>,
    request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sprites");
        let sprites = Family::<Labels, Gauge>::default();
        registry.register(
            "sprites",
            "Sprites on this node by state (running, warm, cold)",
            sprites.clone(),
        );
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "transitions",
            "Lifecycle transitions by the state entered",
            transitions.clone(),
        );
        let wakes = Family::<Labels, Counter>::default();
        registry.register(
            "wakes",
            "Wakes by the state woken from (warm: resumed, cold: booted)",
            wakes.clone(),
        );
        let wake_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets);
        registry.register(
            "wake_duration_seconds",
            "Time a wake took, by the state woken from",
            wake_seconds.clone(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests by route template, method and status class",
            requests.clone(),
        );
        let request_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head (streams and upgrades last longer), by route template",
            request_seconds.clone(),
        );
        Metrics {
            registry,
            states: Default::default(),
            sprites,
            transitions,
            wakes,
            wake_seconds,
            requests,
            request_seconds,
        }
    }
}

fn name(s: SpriteState) -> &'static str {
    match s {
        SpriteState::Running => "running",
        SpriteState::Warm => "warm",
        SpriteState::Cold => "cold",
    }
}

impl Metrics {
    /// Counts the runtime's transitions until the process ends.
    pub fn follow(self: &Arc<Self>, runtime: &sprites_runtime::Runtime) {
        let mut events = runtime.subscribe();
        let m = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(t) => {
                        m.states
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(t.id.clone(), t.state);
                        let to = name(t.state);
                        m.transitions
                            .get_or_create(&vec![("to".into(), to.into())])
                            .inc();
                        if let Some((from, took)) = t.woke {
                            let l = vec![("from".into(), name(from).into())];
                            m.wakes.get_or_create(&l).inc();
                            m.wake_seconds.get_or_create(&l).observe(took.as_secs_f64());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
    }

    fn observe_request(&self, route: &str, method: &str, status: StatusCode, took: Duration) {
        let class = format!("{}xx", status.as_u16() / 100);
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.into()),
                ("method".into(), method.into()),
                ("code".into(), class),
            ])
            .inc();
        self.request_seconds
            .get_or_create(&vec![("route".into(), route.into())])
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the sprite counts as of now (`total`: sprites in the store).
    pub fn render(&self, total: i64) -> String {
        let (mut running, mut warm) = (0i64, 0i64);
        for st in self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            match st {
                SpriteState::Running => running += 1,
                SpriteState::Warm => warm += 1,
                SpriteState::Cold => {}
            }
        }
        let cold = total.saturating_sub(running).saturating_sub(warm).max(0);
        for (state, n) in [("running", running), ("warm", warm), ("cold", cold)] {
            self.sprites
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// Counts every API request by its route template (never a sprite's name: bounded labels).
pub async fn count_requests(
    State(s): State<crate::http::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .observe_request(&route, &method, resp.status(), t.elapsed());
    resp
}

/// `GET /metrics` on the metrics listener.
pub async fn serve(State(s): State<crate::http::AppState>) -> Response {
    let total = match s.store.with(crate::store::count_sprites).await {
        Ok(n) => n,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(total),
    )
        .into_response()
}
