//! The Tasks API (in-sprite, on `/.sprite/api.sock`): named holds that keep the sprite from
//! going idle until they are deleted or expire (at most one hour each).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sprites_api::ErrorCode;

use crate::server::error;

/// Longest a task may be set to expire in.
pub const MAX_EXPIRE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
struct Task {
    started_ms: i64,
    expires_ms: i64,
}

static TASKS: Mutex<BTreeMap<String, Task>> = Mutex::new(BTreeMap::new());

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn tasks() -> std::sync::MutexGuard<'static, BTreeMap<String, Task>> {
    let mut g = TASKS.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    g.retain(|_, t| t.expires_ms > now);
    g
}

/// Number of live tasks.
pub fn live_count() -> u32 {
    tasks().len() as u32
}

fn to_json(name: &str, t: &Task) -> Value {
    json!({
        "name": name,
        "started_at": sprites_api::timefmt::format_millis(t.started_ms),
        "expires_at": sprites_api::timefmt::format_millis(t.expires_ms),
    })
}

/// `expire` as integer seconds or a duration string, at most [`MAX_EXPIRE`].
fn parse_expire(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::Null => {
            return Err("expire is required (seconds or a duration such as \"30m\")".into())
        }
        v => sprites_api::duration::from_json(v).map_err(|e| format!("expire: {e}"))?,
    };
    if d.is_zero() {
        return Err("expire must be more than zero".into());
    }
    if d > MAX_EXPIRE {
        return Err("expire is at most 1h; refresh the task to hold longer".into());
    }
    Ok(d)
}

fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.contains('/') {
        return Err("task name must be 1 to 128 characters without '/'".into());
    }
    Ok(())
}

/// `GET /v1/tasks`.
pub async fn list() -> Json<Value> {
    let g = tasks();
    Json(json!({ "tasks": g.iter().map(|(n, t)| to_json(n, t)).collect::<Vec<_>>() }))
}

/// `GET /v1/tasks/{name}`.
pub async fn get(Path(name): Path<String>) -> Response {
    match tasks().get(&name) {
        Some(t) => Json(to_json(&name, t)).into_response(),
        None => error(ErrorCode::NotFound, format!("task {name:?} not found")),
    }
}

/// Parses a JSON body whatever its Content-Type (curl users often leave it out).
fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// `POST /v1/tasks {"name","expire"}`: 201, or 409 when the name is taken.
pub async fn create(body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if let Err(e) = valid_name(&name) {
        return error(ErrorCode::BadRequest, e);
    }
    let d = match parse_expire(&body["expire"]) {
        Ok(d) => d,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let mut g = tasks();
    if g.contains_key(&name) {
        return error(ErrorCode::Conflict, format!("task {name:?} already exists"));
    }
    let now = now_ms();
    let t = Task {
        started_ms: now,
        expires_ms: now + d.as_millis() as i64,
    };
    let out = to_json(&name, &t);
    g.insert(name, t);
    (StatusCode::CREATED, Json(out)).into_response()
}

/// `PUT /v1/tasks/{name} {"expire"}` and `PUT /v1/tasks {"name","expire"}`: upsert, 200.
pub async fn upsert(name: Option<Path<String>>, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let name = match name {
        Some(Path(n)) => n,
        None => body["name"].as_str().unwrap_or_default().to_string(),
    };
    if let Err(e) = valid_name(&name) {
        return error(ErrorCode::BadRequest, e);
    }
    let d = match parse_expire(&body["expire"]) {
        Ok(d) => d,
        Err(e) => return error(ErrorCode::BadRequest, e),
    };
    let mut g = tasks();
    let now = now_ms();
    let t = g.entry(name.clone()).or_insert(Task {
        started_ms: now,
        expires_ms: now,
    });
    t.expires_ms = now + d.as_millis() as i64;
    Json(to_json(&name, t)).into_response()
}

/// `DELETE /v1/tasks/{name}`: 204, or 404.
pub async fn delete(Path(name): Path<String>) -> Response {
    match tasks().remove(&name) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(ErrorCode::NotFound, format!("task {name:?} not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_forms() {
        assert_eq!(parse_expire(&json!(60)).unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_expire(&json!("30m")).unwrap(),
            Duration::from_secs(1800)
        );
        assert!(parse_expire(&json!("2h")).is_err());
        assert!(parse_expire(&json!(0)).is_err());
        assert!(parse_expire(&json!(null)).is_err());
        assert!(parse_expire(&json!([1])).is_err());
        for bad in [json!(1e20), json!(-1), json!("NaN"), json!(f64::MAX)] {
            assert!(parse_expire(&bad).is_err(), "{bad}");
        }
    }
}
