//! Services: long-running processes the sprite runtime manages (spec §8). Definitions persist
//! in `/.sprite/services/<name>.json` on the sprite's disk, so services start on every boot
//! and after every cold wake, in `needs` order. A service that exits without being asked to is
//! restarted with exponential backoff. Output goes to `/.sprite/logs/services/<name>.log`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sprites_api::exec::ExecRequest;
use sprites_api::ErrorCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};

use crate::server::error;

const DEFS_DIR: &str = "/.sprite/services";
const LOGS_DIR: &str = "/.sprite/logs/services";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A service that ran this long before dying starts its backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// A service definition, as clients send it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Def {
    /// Name (from the path).
    #[serde(default)]
    pub name: String,
    /// Program.
    pub cmd: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Services to start first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Port that receives the sprite URL's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
}

#[derive(Debug, Clone, Default)]
struct Run {
    status: &'static str,
    pid: Option<u32>,
    started_ms: Option<i64>,
    error: Option<String>,
    restart_count: u32,
    next_restart_ms: Option<i64>,
    /// Set by stop/delete: the supervisor must not restart.
    stopping: bool,
    /// Bumped on each start so an old supervisor knows it is stale.
    generation: u64,
}

struct Svc {
    def: Mutex<Def>,
    run: Mutex<Run>,
    events: broadcast::Sender<Value>,
}

/// All services of the sprite.
#[derive(Default)]
pub struct Services {
    map: Mutex<BTreeMap<String, Arc<Svc>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn event(kind: &str, extra: Value) -> Value {
    let mut v = json!({ "type": kind, "timestamp": now_ms() });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

fn log_files(name: &str) -> Value {
    let p = format!("{LOGS_DIR}/{name}.log");
    json!({ "combined": p, "stdout": p, "stderr": p })
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {name:?}: use letters, digits, '-', '_' and '.'"
        ))
    }
}

impl Svc {
    fn to_json(&self) -> Value {
        let def = self.def.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut state =
            json!({ "name": def.name, "status": run.status, "restart_count": run.restart_count });
        if let Some(p) = run.pid {
            state["pid"] = json!(p);
        }
        if let Some(t) = run.started_ms {
            state["started_at"] = json!(sprites_api::timefmt::format_millis(t));
        }
        if let Some(e) = run.error {
            state["error"] = json!(e);
        }
        if let Some(t) = run.next_restart_ms {
            state["next_restart_at"] = json!(sprites_api::timefmt::format_millis(t));
        }
        json!({
            "name": def.name, "cmd": def.cmd, "args": def.args, "env": def.env, "dir": def.dir,
            "needs": def.needs, "http_port": def.http_port, "state": state,
        })
    }
}

impl Services {
    /// Loads saved definitions and starts them in `needs` order.
    pub fn boot(self: &Arc<Self>) {
        let _ = std::fs::create_dir_all(DEFS_DIR);
        let _ = std::fs::create_dir_all(LOGS_DIR);
        let mut defs = Vec::new();
        if let Ok(dir) = std::fs::read_dir(DEFS_DIR) {
            for e in dir.flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    match serde_json::from_str::<Def>(&text) {
                        Ok(d) => defs.push(d),
                        Err(err) => tracing::warn!("ignoring {}: {err}", e.path().display()),
                    }
                }
            }
        }
        // Every service is known at once; they start in the background in `needs` order.
        let ordered: Vec<(Def, Arc<Svc>)> = order(defs)
            .into_iter()
            .map(|d| (d.clone(), self.insert(d)))
            .collect();
        let me = self.clone();
        tokio::spawn(async move {
            for (d, svc) in ordered {
                // Start a service once what it needs is up (running or given up on).
                for need in &d.needs {
                    if let Some(n) = me.get(need) {
                        me.wait_started(&n, Duration::from_secs(10)).await;
                    }
                }
                me.start(&svc);
            }
        });
    }

    async fn wait_started(&self, svc: &Arc<Svc>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if matches!(
                svc.run.lock().unwrap_or_else(|e| e.into_inner()).status,
                "running" | "failed"
            ) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn insert(&self, def: Def) -> Arc<Svc> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let svc = Arc::new(Svc {
            def: Mutex::new(def.clone()),
            run: Mutex::new(Run {
                status: "stopped",
                ..Default::default()
            }),
            events: broadcast::channel(256).0,
        });
        m.insert(def.name, svc.clone());
        svc
    }

    fn get(&self, name: &str) -> Option<Arc<Svc>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The port the sprite URL goes to: the `http_port` service's (started first if it is not
    /// running), else 8080.
    pub async fn url_port(self: &Arc<Self>) -> u16 {
        let owner = {
            let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            m.values()
                .find(|s| {
                    s.def
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .http_port
                        .is_some()
                })
                .cloned()
        };
        let Some(svc) = owner else { return 8080 };
        let port = svc
            .def
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .http_port
            .unwrap_or(8080);
        let running = svc
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pid
            .is_some();
        if !running {
            self.start(&svc);
            self.wait_started(&svc, Duration::from_secs(10)).await;
        }
        port
    }

    /// Starts the service's process and a supervisor that restarts it after a crash.
    fn start(self: &Arc<Self>, svc: &Arc<Svc>) {
        let generation = {
            let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
            run.stopping = false;
            run.generation += 1;
            run.generation
        };
        let me = self.clone();
        let svc = svc.clone();
        tokio::spawn(async move { me.supervise(svc, generation).await });
    }

    async fn supervise(self: Arc<Self>, svc: Arc<Svc>, generation: u64) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let def = svc.def.lock().unwrap_or_else(|e| e.into_inner()).clone();
            {
                let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
                if run.generation != generation || run.stopping {
                    return;
                }
                run.status = "starting";
                run.next_restart_ms = None;
            }
            let mut argv = vec![def.cmd.clone()];
            argv.extend(def.args.iter().cloned());
            let req = ExecRequest {
                cmd: argv,
                env: def
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                dir: def.dir.clone(),
                ..Default::default()
            };
            let mut cmd = crate::exec::command(&req);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let started = tokio::time::Instant::now();
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("starting {}: {e}", def.cmd);
                    let _ = svc.events.send(event("error", json!({ "data": msg })));
                    let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
                    run.status = "failed";
                    run.error = Some(msg);
                    run.pid = None;
                    return;
                }
            };
            {
                let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
                run.status = "running";
                run.pid = child.id();
                run.started_ms = Some(now_ms());
                run.error = None;
            }
            let _ = svc
                .events
                .send(event("started", json!({ "pid": child.id() })));
            let (line_tx, line_rx) = mpsc::channel::<(String, String)>(256);
            if let Some(out) = child.stdout.take() {
                tokio::spawn(lines(out, "stdout", line_tx.clone()));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(lines(err, "stderr", line_tx.clone()));
            }
            drop(line_tx);
            let logger = tokio::spawn(write_log(def.name.clone(), line_rx, svc.events.clone()));
            let status = child.wait().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), logger).await;
            let code = status.as_ref().ok().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                i32::from(sprites_api::exec::exit_byte(s.code(), s.signal()))
            });
            let _ = svc.events.send(event("exit", json!({ "exit_code": code })));
            let restart = {
                let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
                run.pid = None;
                if run.generation != generation || run.stopping {
                    run.status = "stopped";
                    false
                } else {
                    run.status = "failed";
                    run.error = Some(format!("exited with code {}", code.unwrap_or(-1)));
                    run.restart_count += 1;
                    if started.elapsed() > HEALTHY_RUN {
                        backoff = Duration::from_secs(1);
                    }
                    run.next_restart_ms = Some(now_ms() + backoff.as_millis() as i64);
                    true
                }
            };
            if !restart {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Asks the service to stop: SIGTERM to its process group, SIGKILL after `timeout`.
    async fn stop(&self, svc: &Arc<Svc>, timeout: Duration) -> Option<i32> {
        let pid = {
            let mut run = svc.run.lock().unwrap_or_else(|e| e.into_inner());
            run.stopping = true;
            run.next_restart_ms = None;
            if run.pid.is_some() {
                run.status = "stopping";
            } else {
                run.status = "stopped";
            }
            run.pid
        };
        let pid = pid? as i32;
        let mut rx = svc.events.subscribe();
        let _ = svc.events.send(event("stopping", json!({})));
        // SAFETY: kill(2) on the service's own process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(v) if v["type"] == "exit" => {
                        return v["exit_code"].as_i64().map(|c| c as i32)
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                    _ => {}
                }
            }
        };
        let code = match tokio::time::timeout(timeout, wait).await {
            Ok(c) => c,
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                Some(137)
            }
        };
        let _ = svc
            .events
            .send(event("stopped", json!({ "exit_code": code })));
        code
    }
}

/// Orders definitions so that every service comes after the ones it needs (cycles and
/// unknown needs are ignored rather than blocking boot).
fn order(defs: Vec<Def>) -> Vec<Def> {
    let by_name: BTreeMap<String, Def> = defs.into_iter().map(|d| (d.name.clone(), d)).collect();
    let mut out = Vec::new();
    let mut done = HashSet::new();
    fn visit(
        n: &str,
        by: &BTreeMap<String, Def>,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<Def>,
    ) {
        if done.contains(n) || path.iter().any(|p| p == n) {
            return;
        }
        let Some(d) = by.get(n) else { return };
        path.push(n.to_string());
        for need in &d.needs {
            visit(need, by, done, path, out);
        }
        path.pop();
        done.insert(n.to_string());
        out.push(d.clone());
    }
    for n in by_name.keys() {
        visit(n, &by_name, &mut done, &mut Vec::new(), &mut out);
    }
    out
}

async fn lines<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    stream: &'static str,
    tx: mpsc::Sender<(String, String)>,
) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx
                    .send((
                        stream.to_string(),
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Appends lines to the service log (`<RFC3339> [stream] line`) and publishes them.
async fn write_log(
    name: String,
    mut rx: mpsc::Receiver<(String, String)>,
    events: broadcast::Sender<Value>,
) {
    let path = PathBuf::from(LOGS_DIR).join(format!("{name}.log"));
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .ok();
    while let Some((stream, line)) = rx.recv().await {
        let ts = now_ms();
        if let Some(file) = f.as_mut() {
            let mut text = format!(
                "{} [{stream}] {line}",
                sprites_api::timefmt::format_millis(ts)
            );
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = file.write_all(text.as_bytes()).await;
        }
        let _ = events.send(json!({ "type": stream, "data": line, "timestamp": ts }));
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

type Shared = State<Arc<Services>>;

fn ndjson(rx: mpsc::Receiver<Value>) -> Response {
    let stream = crate::exec::tokio_stream_from(rx);
    let body = futures::StreamExt::map(stream, |v| {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(line))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

fn query_duration(
    q: &[(String, String)],
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    match q.iter().find(|(k, _)| k == key) {
        Some((_, v)) => sprites_api::exec::parse_duration(v),
        None => Ok(default),
    }
}

/// Streams a service's events for `window`, then `complete`.
fn monitor(
    svc: &Arc<Svc>,
    name: &str,
    window: Duration,
    prelude: Vec<Value>,
) -> (mpsc::Sender<Value>, Response) {
    let (tx, rx) = mpsc::channel::<Value>(64);
    let mut sub = svc.events.subscribe();
    let name = name.to_string();
    let out = tx.clone();
    tokio::spawn(async move {
        for v in prelude {
            let _ = out.send(v).await;
        }
        let until = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(until, sub.recv()).await {
                Ok(Ok(v)) => {
                    if out.send(v).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                _ => break,
            }
        }
        let _ = out
            .send(event("complete", json!({ "log_files": log_files(&name) })))
            .await;
    });
    (tx, ndjson(rx))
}

/// `GET /services`: a bare array.
pub async fn list(State(s): Shared) -> Json<Value> {
    let m = s.map.lock().unwrap_or_else(|e| e.into_inner());
    Json(Value::Array(m.values().map(|svc| svc.to_json()).collect()))
}

/// `GET /services/{name}`.
pub async fn get(State(s): Shared, Path(name): Path<String>) -> Response {
    match s.get(&name) {
        Some(svc) => Json(svc.to_json()).into_response(),
        None => error(ErrorCode::NotFound, format!("service {name:?} not found")),
    }
}

/// `PUT /services/{name}`: create or replace, start, stream events for `duration`.
pub async fn put(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    if let Err(e) = valid_name(&name) {
        return error(ErrorCode::BadRequest, e);
    }
    let mut def: Def = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(
                ErrorCode::BadRequest,
                format!("invalid service definition: {e}"),
            )
        }
    };
    def.name = name.clone();
    if def.cmd.trim().is_empty() {
        return error(ErrorCode::BadRequest, "cmd is required");
    }
    let window = match query_duration(&q, "duration", Duration::from_secs(5)) {
        Ok(d) => d,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    if def.http_port.is_some() {
        let m = s.map.lock().unwrap_or_else(|e| e.into_inner());
        let other = m.iter().find(|(n, svc)| {
            **n != name
                && svc
                    .def
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .http_port
                    .is_some()
        });
        if let Some((other, _)) = other {
            return error(
                ErrorCode::Conflict,
                format!("another service ({other}) already has an HTTP port configured"),
            );
        }
    }
    let saved = serde_json::to_vec_pretty(&def).unwrap_or_default();
    let _ = std::fs::create_dir_all(DEFS_DIR);
    let _ = std::fs::create_dir_all(LOGS_DIR);
    let tmp = format!("{DEFS_DIR}/.{name}.json.tmp");
    if let Err(e) = std::fs::write(&tmp, saved)
        .and_then(|_| std::fs::rename(&tmp, format!("{DEFS_DIR}/{name}.json")))
    {
        return error(ErrorCode::Internal, format!("saving service: {e}"));
    }
    let svc = match s.get(&name) {
        Some(existing) => {
            s.stop(&existing, Duration::from_secs(10)).await;
            *existing.def.lock().unwrap_or_else(|e| e.into_inner()) = def;
            existing
        }
        None => s.insert(def),
    };
    let (_, resp) = monitor(&svc, &name, window, Vec::new());
    s.start(&svc);
    resp
}

/// `DELETE /services/{name}`: stop and forget.
pub async fn delete(State(s): Shared, Path(name): Path<String>) -> Response {
    let Some(svc) = s.get(&name) else {
        return error(ErrorCode::NotFound, format!("service {name:?} not found"));
    };
    s.stop(&svc, Duration::from_secs(10)).await;
    s.map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name);
    let _ = std::fs::remove_file(format!("{DEFS_DIR}/{name}.json"));
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /services/{name}/{start|stop|restart}`.
pub async fn action(
    State(s): Shared,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let Some(svc) = s.get(&name) else {
        return error(ErrorCode::NotFound, format!("service {name:?} not found"));
    };
    let running = svc
        .run
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pid
        .is_some();
    match action.as_str() {
        "start" => {
            let window = match query_duration(&q, "duration", Duration::from_secs(5)) {
                Ok(d) => d,
                Err(e) => return error(ErrorCode::BadRequest, e),
            };
            let (_, resp) = monitor(&svc, &name, window, Vec::new());
            if !running {
                s.start(&svc);
            }
            resp
        }
        "stop" => {
            if !running {
                return error(
                    ErrorCode::Conflict,
                    format!("service {name:?} is not running"),
                );
            }
            let timeout = match query_duration(&q, "timeout", Duration::from_secs(10)) {
                Ok(d) => d,
                Err(e) => return error(ErrorCode::BadRequest, e),
            };
            let (etx, erx) = mpsc::channel::<Value>(16);
            let me = s.clone();
            tokio::spawn(async move {
                let mut sub = svc.events.subscribe();
                let stop = me.stop(&svc, timeout);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        Ok(v) = sub.recv() => { let _ = etx.send(v).await; }
                    }
                }
                while let Ok(v) = sub.try_recv() {
                    let _ = etx.send(v).await;
                }
                let _ = etx
                    .send(event("complete", json!({ "log_files": log_files(&name) })))
                    .await;
            });
            ndjson(erx)
        }
        "restart" => {
            let window = match query_duration(&q, "duration", Duration::from_secs(5)) {
                Ok(d) => d,
                Err(e) => return error(ErrorCode::BadRequest, e),
            };
            let (etx, erx) = mpsc::channel::<Value>(64);
            let me = s.clone();
            tokio::spawn(async move {
                let mut sub = svc.events.subscribe();
                let stop = me.stop(&svc, Duration::from_secs(10));
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        Ok(v) = sub.recv() => { let _ = etx.send(v).await; }
                    }
                }
                while let Ok(v) = sub.try_recv() {
                    let _ = etx.send(v).await;
                }
                me.start(&svc);
                let until = tokio::time::Instant::now() + window;
                while let Ok(Ok(v)) = tokio::time::timeout_at(until, sub.recv()).await {
                    if etx.send(v).await.is_err() {
                        return;
                    }
                }
                let _ = etx
                    .send(event("complete", json!({ "log_files": log_files(&name) })))
                    .await;
            });
            ndjson(erx)
        }
        _ => error(ErrorCode::NotFound, "no such service action"),
    }
}

/// `GET /services/{name}/logs?lines=N&duration=D`.
pub async fn logs(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let Some(svc) = s.get(&name) else {
        return error(ErrorCode::NotFound, format!("service {name:?} not found"));
    };
    let lines: usize = q
        .iter()
        .find(|(k, _)| k == "lines")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(100);
    let window = match query_duration(&q, "duration", Duration::ZERO) {
        Ok(d) => d,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let text = std::fs::read_to_string(format!("{LOGS_DIR}/{name}.log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let prelude = all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| {
            // `<ts> [stream] line`
            let mut parts = l.splitn(3, ' ');
            let ts = parts
                .next()
                .and_then(sprites_api::timefmt::parse_millis)
                .unwrap_or(0);
            let stream = parts
                .next()
                .unwrap_or("[stdout]")
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let data = format!("{}\n", parts.next().unwrap_or(""));
            json!({ "type": stream, "data": data, "timestamp": ts })
        })
        .collect();
    let (_, resp) = monitor(&svc, &name, window, prelude);
    resp
}

#[derive(Deserialize)]
pub struct SignalReq {
    name: String,
    signal: String,
}

/// `POST /services/signal {"name","signal"}`: 204.
pub async fn signal(State(s): Shared, body: Bytes) -> Response {
    let req: SignalReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, format!("invalid body: {e}")),
    };
    let Some(svc) = s.get(&req.name) else {
        return error(
            ErrorCode::NotFound,
            format!("service {:?} not found", req.name),
        );
    };
    let Some(sig) = sprites_api::signal::parse_signal(&req.signal) else {
        return error(
            ErrorCode::BadRequest,
            format!("invalid signal {:?}", req.signal),
        );
    };
    let Some(pid) = svc.run.lock().unwrap_or_else(|e| e.into_inner()).pid else {
        return error(
            ErrorCode::Conflict,
            format!("service {:?} is not running", req.name),
        );
    };
    // SAFETY: kill(2) on the service's process group.
    unsafe { libc::kill(-(pid as i32), sig) };
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, needs: &[&str]) -> Def {
        Def {
            name: name.into(),
            cmd: "x".into(),
            args: vec![],
            env: BTreeMap::new(),
            dir: None,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            http_port: None,
        }
    }

    #[test]
    fn needs_order() {
        let o = order(vec![
            def("web", &["db", "cache"]),
            def("db", &[]),
            def("cache", &["db"]),
            def("loop", &["loop"]),
        ]);
        let names: Vec<&str> = o.iter().map(|d| d.name.as_str()).collect();
        let pos = |n| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("db") < pos("cache") && pos("cache") < pos("web"));
        assert!(names.contains(&"loop"), "a self-cycle does not block boot");
    }
}
