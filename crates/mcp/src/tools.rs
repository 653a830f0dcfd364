//! `/mcp`: the tools, each a call of the sprites REST API in-process, and the rmcp service
//! that serves them (both protocol revisions on one endpoint).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::{json, Map, Value};

use crate::{Access, Mcp};

/// Most bytes of each of stdout and stderr an `exec` returns.
const OUTPUT_CAP: usize = 64 * 1024;
/// Longest a tool waits for the API (a cold sprite boots within it).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default and longest `exec` timeout.
const EXEC_TIMEOUT_DEFAULT: u64 = 60;
const EXEC_TIMEOUT_MAX: u64 = 600;
/// Most bytes read of any other answer.
const BODY_LIMIT: usize = 1 << 20;

/// Access hints of a tool.
#[derive(Clone, Copy)]
enum Kind {
    /// Reads only.
    Read,
    /// Changes things, repeatable with the same effect.
    Write,
    /// Destroys or replaces state.
    Destroy,
}

fn schema(props: Value, required: &[&str]) -> Arc<Map<String, Value>> {
    let mut m = Map::new();
    m.insert("type".into(), "object".into());
    m.insert("properties".into(), props);
    m.insert("required".into(), json!(required));
    m.insert("additionalProperties".into(), false.into());
    Arc::new(m)
}

fn tool(
    name: &'static str,
    title: &str,
    desc: &'static str,
    kind: Kind,
    input: Arc<Map<String, Value>>,
    output: Value,
) -> Tool {
    let a = ToolAnnotations::with_title(title);
    let a = match kind {
        Kind::Read => a.read_only(true).destructive(false).idempotent(true),
        Kind::Write => a.read_only(false).destructive(false).idempotent(true),
        Kind::Destroy => a.read_only(false).destructive(true).idempotent(false),
    }
    // Everything happens on this server's own sprites, not the open internet.
    .open_world(false);
    let mut out = Map::new();
    out.insert("type".into(), "object".into());
    out.insert("properties".into(), output);
    Tool::new(name, desc, input)
        .with_title(title)
        .with_annotations(a)
        .with_raw_output_schema(Arc::new(out))
}

fn sprite_arg() -> Value {
    json!({"type": "string", "description": "The sprite's name"})
}

/// Every tool, in the order they are listed.
pub fn tools() -> Vec<Tool> {
    let s = sprite_arg();
    let any = json!({});
    vec![
        tool("list_sprites", "List sprites", "List the org's sprites (those this grant may see), optionally only names starting with a prefix.", Kind::Read,
            schema(json!({"prefix": {"type": "string"}}), &[]),
            json!({"sprites": {"type": "array"}})),
        tool("create_sprite", "Create a sprite", "Create a sprite: a persistent Linux machine that boots in milliseconds.", Kind::Destroy,
            schema(json!({"name": {"type": "string"}, "url_auth": {"type": "string", "enum": ["sprite", "public"]}, "labels": {"type": "array", "items": {"type": "string"}}}), &["name"]),
            json!({"sprite": {"type": "object"}})),
        tool("destroy_sprite", "Destroy a sprite", "Destroy a sprite with its disk and checkpoints. This cannot be undone.", Kind::Destroy,
            schema(json!({"name": {"type": "string"}}), &["name"]),
            json!({"destroyed": {"type": "string"}})),
        tool("exec", "Run a command", "Run a command in a sprite and return its output and exit code. `command` is an argv array or a shell string (run with bash -lc). A command still running at `timeout_s` returns what it printed so far and keeps running as a session.", Kind::Destroy,
            schema(json!({
                "sprite": s.clone(),
                "command": {"description": "argv array, or a shell command line", "anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string", "minLength": 1}]},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "dir": {"type": "string"},
                "stdin": {"type": "string"},
                "timeout_s": {"type": "integer", "minimum": 1, "maximum": EXEC_TIMEOUT_MAX}
            }), &["sprite", "command"]),
            json!({"stdout": {"type": "string"}, "stderr": {"type": "string"}, "exit_code": {"type": ["integer", "null"]}, "stdout_bytes": {"type": "integer"}, "stderr_bytes": {"type": "integer"}, "timed_out": {"type": "boolean"}})),
        tool("list_sessions", "List sessions", "List the exec sessions of a sprite (running and recently ended).", Kind::Read,
            schema(json!({"sprite": s.clone()}), &["sprite"]), json!({"sessions": any.clone()})),
        tool("read_session", "Read a session's output", "Read an exec session's kept output (scrollback) from a byte offset; `next_offset` is where the next read starts.", Kind::Read,
            schema(json!({"sprite": s.clone(), "id": {"type": "string"}, "offset": {"type": "integer", "minimum": 0}}), &["sprite", "id"]), json!({"output": any.clone(), "next_offset": {"type": "integer"}, "exited": {"type": "boolean"}})),
        tool("kill_session", "Kill a session", "Send a signal to an exec session (default SIGTERM).", Kind::Destroy,
            schema(json!({"sprite": s.clone(), "id": {"type": "string"}, "signal": {"type": "string"}}), &["sprite", "id"]), json!({"result": any.clone()})),
        tool("create_checkpoint", "Create a checkpoint", "Save the sprite's disk as a checkpoint, with an optional comment.", Kind::Write,
            schema(json!({"sprite": s.clone(), "comment": {"type": "string"}}), &["sprite"]), json!({"log": {"type": "array"}})),
        tool("list_checkpoints", "List checkpoints", "List a sprite's checkpoints.", Kind::Read,
            schema(json!({"sprite": s.clone()}), &["sprite"]), json!({"checkpoints": any.clone()})),
        tool("get_checkpoint", "Get a checkpoint", "Show one checkpoint of a sprite.", Kind::Read,
            schema(json!({"sprite": s.clone(), "id": {"type": "string"}}), &["sprite", "id"]), json!({"checkpoint": any.clone()})),
        tool("restore_checkpoint", "Restore a checkpoint", "Restore a sprite's disk to a checkpoint; its processes stop and it boots on that disk.", Kind::Destroy,
            schema(json!({"sprite": s.clone(), "id": {"type": "string"}}), &["sprite", "id"]), json!({"log": {"type": "array"}})),
        tool("get_network_policy", "Get network policy", "Show a sprite's egress policy (which domains it may reach).", Kind::Read,
            schema(json!({"sprite": s.clone()}), &["sprite"]), json!({"policy": any.clone()})),
        tool("set_network_policy", "Set network policy", "Replace a sprite's egress policy: rules of {domain, action: allow|deny}.", Kind::Write,
            schema(json!({"sprite": s.clone(), "rules": {"type": "array", "items": {"type": "object", "properties": {"domain": {"type": "string"}, "action": {"type": "string", "enum": ["allow", "deny"]}}, "required": ["domain", "action"]}}}), &["sprite", "rules"]),
            json!({"policy": any.clone()})),
        tool("list_services", "List services", "List a sprite's services.", Kind::Read,
            schema(json!({"sprite": s.clone()}), &["sprite"]), json!({"services": any.clone()})),
        tool("create_service", "Create a service", "Create or replace a service: a command the sprite keeps running (and restarts).", Kind::Write,
            schema(json!({"sprite": s.clone(), "name": {"type": "string"}, "cmd": {"type": "string"}, "args": {"type": "array", "items": {"type": "string"}}, "http_port": {"type": "integer"}}), &["sprite", "name", "cmd"]),
            json!({"service": any.clone()})),
        tool("start_service", "Start a service", "Start a service.", Kind::Write,
            schema(json!({"sprite": s.clone(), "name": {"type": "string"}}), &["sprite", "name"]), json!({"result": any.clone()})),
        tool("stop_service", "Stop a service", "Stop a service.", Kind::Destroy,
            schema(json!({"sprite": s.clone(), "name": {"type": "string"}}), &["sprite", "name"]), json!({"result": any.clone()})),
        tool("get_service", "Get a service", "Show a service and its state.", Kind::Read,
            schema(json!({"sprite": s.clone(), "name": {"type": "string"}}), &["sprite", "name"]), json!({"service": any.clone()})),
        tool("service_logs", "Service logs", "Read the end of a service's logs.", Kind::Read,
            schema(json!({"sprite": s.clone(), "name": {"type": "string"}}), &["sprite", "name"]), json!({"logs": {"type": "string"}})),
        tool("read_file", "Read a file", "Read a file in a sprite (at most 1 MiB, as text).", Kind::Read,
            schema(json!({"sprite": s.clone(), "path": {"type": "string"}}), &["sprite", "path"]), json!({"content": {"type": "string"}, "truncated": {"type": "boolean"}})),
        tool("write_file", "Write a file", "Write a text file in a sprite (made with its parent directories).", Kind::Write,
            schema(json!({"sprite": s.clone(), "path": {"type": "string"}, "content": {"type": "string"}}), &["sprite", "path", "content"]), json!({"written": {"type": "integer"}})),
        tool("list_dir", "List a directory", "List a directory in a sprite.", Kind::Read,
            schema(json!({"sprite": s, "path": {"type": "string"}}), &["sprite", "path"]), json!({"entries": any})),
    ]
}

/// A tool's failure: shown to the model, never a protocol error.
struct Fail(String);

impl<T: std::fmt::Display> From<T> for Fail {
    fn from(e: T) -> Self {
        Fail(e.to_string())
    }
}

fn arg_str<'a>(a: &'a Map<String, Value>, k: &str) -> Result<&'a str, McpError> {
    a.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| McpError::invalid_params(format!("`{k}` (a string) is required"), None))
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[derive(Clone)]
struct Handler {
    mcp: Arc<Mcp>,
}

impl Handler {
    async fn api(
        &self,
        a: &Access,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        limit: usize,
    ) -> Result<(u16, Bytes, bool), Fail> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("/v1{path}"));
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Bytes::from(body.unwrap_or_default()))
            .map_err(|e| Fail(e.to_string()))?;
        let read = async {
            let (st, mut body) = self.mcp.api.call(&a.org_id, req).await.map_err(Fail)?;
            let mut buf = Vec::new();
            let mut more = false;
            while let Some(chunk) = futures::StreamExt::next(&mut body).await {
                let chunk = chunk.map_err(Fail)?;
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
                if chunk.len() > room {
                    more = true;
                    break;
                }
            }
            Ok((st, Bytes::from(buf), more))
        };
        match tokio::time::timeout(CALL_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(Fail(
                "the sprite did not answer in time (it may be waking up); retry in a few seconds"
                    .into(),
            )),
        }
    }

    /// A JSON answer, or the API's error message as a tool failure.
    async fn json(
        &self,
        a: &Access,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Fail> {
        let (st, b, _) = self
            .api(
                a,
                method,
                path,
                body.map(|v| v.to_string().into_bytes()),
                &[],
                BODY_LIMIT,
            )
            .await?;
        let v: Value = serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned()));
        if !(200..300).contains(&st) {
            let msg = v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(Fail(if st == 503 {
                format!("{msg} (the sprite may be waking up; retry in a few seconds)")
            } else {
                msg
            }));
        }
        Ok(v)
    }

    /// Whether the grant may touch sprite `name`: outside a restricted grant's prefix a
    /// sprite does not exist.
    fn may(&self, a: &Access, name: &str) -> Result<(), Fail> {
        match &a.restriction {
            Some(r) if !name.starts_with(&r.prefix) => {
                Err(Fail(format!("sprite {name:?} not found")))
            }
            _ => Ok(()),
        }
    }

    async fn call(
        &self,
        a: &Access,
        name: &str,
        args: &Map<String, Value>,
    ) -> Result<Result<Value, Fail>, McpError> {
        let sprite = |a2: &Access| -> Result<Result<String, Fail>, McpError> {
            let n = arg_str(args, "sprite")?.to_string();
            Ok(self.may(a2, &n).map(|_| enc(&n)))
        };
        macro_rules! sp {
            () => {
                match sprite(a)? {
                    Ok(s) => s,
                    Err(f) => return Ok(Err(f)),
                }
            };
        }
        Ok(match name {
            "list_sprites" => {
                let mut prefix = args
                    .get("prefix")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Some(r) = &a.restriction {
                    if !prefix.starts_with(&r.prefix) {
                        prefix = if r.prefix.starts_with(&prefix) {
                            r.prefix.clone()
                        } else {
                            return Ok(Ok(json!({"sprites": []})));
                        };
                    }
                }
                self.list(a, &prefix).await.map(|s| json!({"sprites": s}))
            }
            "create_sprite" => {
                let n = arg_str(args, "name")?;
                if let Err(f) = self.may(a, n) {
                    let prefix = a
                        .restriction
                        .as_ref()
                        .map(|r| r.prefix.clone())
                        .unwrap_or_default();
                    let _ = f;
                    return Ok(Err(Fail(format!(
                        "this grant may only create sprites whose names start with {prefix:?}"
                    ))));
                }
                if let Some(r) = &a.restriction {
                    match self.list(a, &r.prefix).await {
                        Ok(l) if l.len() as u32 >= r.max_sprites => {
                            return Ok(Err(Fail(format!(
                            "this grant may have at most {} sprites and has {}; destroy one first",
                            r.max_sprites,
                            l.len()
                        ))))
                        }
                        Ok(_) => {}
                        Err(f) => return Ok(Err(f)),
                    }
                }
                let mut body = json!({"name": n});
                if let Some(l) = args.get("labels") {
                    body["labels"] = l.clone();
                }
                if let Some(u) = args.get("url_auth").and_then(Value::as_str) {
                    body["url_settings"] = json!({"auth": u});
                }
                self.json(a, Method::POST, "/sprites", Some(body))
                    .await
                    .map(|s| json!({"sprite": s}))
            }
            "destroy_sprite" => {
                let n = arg_str(args, "name")?;
                match self.may(a, n) {
                    Err(f) => Err(f),
                    Ok(()) => self
                        .json(a, Method::DELETE, &format!("/sprites/{}", enc(n)), None)
                        .await
                        .map(|_| json!({"destroyed": n})),
                }
            }
            "exec" => {
                let s = sp!();
                self.exec(a, &s, args).await?
            }
            "list_sessions" => {
                let s = sp!();
                self.json(a, Method::GET, &format!("/sprites/{s}/exec"), None)
                    .await
                    .map(|v| json!({"sessions": v}))
            }
            "read_session" => {
                let s = sp!();
                let id = enc(arg_str(args, "id")?);
                let off = args.get("offset").and_then(Value::as_u64).unwrap_or(0);
                self.json(
                    a,
                    Method::GET,
                    &format!("/sprites/{s}/exec/{id}?offset={off}"),
                    None,
                )
                .await
            }
            "kill_session" => {
                let s = sp!();
                let id = enc(arg_str(args, "id")?);
                let sig = args
                    .get("signal")
                    .and_then(Value::as_str)
                    .unwrap_or("SIGTERM");
                self.json(
                    a,
                    Method::POST,
                    &format!("/sprites/{s}/exec/{id}/kill?signal={}", enc(sig)),
                    Some(json!({})),
                )
                .await
                .map(|v| json!({"result": v}))
            }
            "create_checkpoint" => {
                let s = sp!();
                let comment = args.get("comment").and_then(Value::as_str);
                self.ndjson(
                    a,
                    &format!("/sprites/{s}/checkpoint"),
                    json!({"comment": comment}),
                )
                .await
            }
            "list_checkpoints" => {
                let s = sp!();
                self.json(a, Method::GET, &format!("/sprites/{s}/checkpoints"), None)
                    .await
                    .map(|v| json!({"checkpoints": v}))
            }
            "get_checkpoint" => {
                let s = sp!();
                let id = enc(arg_str(args, "id")?);
                self.json(
                    a,
                    Method::GET,
                    &format!("/sprites/{s}/checkpoints/{id}"),
                    None,
                )
                .await
                .map(|v| json!({"checkpoint": v}))
            }
            "restore_checkpoint" => {
                let s = sp!();
                let id = enc(arg_str(args, "id")?);
                self.ndjson(
                    a,
                    &format!("/sprites/{s}/checkpoints/{id}/restore"),
                    json!({}),
                )
                .await
            }
            "get_network_policy" => {
                let s = sp!();
                self.json(
                    a,
                    Method::GET,
                    &format!("/sprites/{s}/policy/network"),
                    None,
                )
                .await
                .map(|v| json!({"policy": v}))
            }
            "set_network_policy" => {
                let s = sp!();
                let rules = args
                    .get("rules")
                    .cloned()
                    .ok_or_else(|| McpError::invalid_params("`rules` is required", None))?;
                match self
                    .json(
                        a,
                        Method::POST,
                        &format!("/sprites/{s}/policy/network"),
                        Some(json!({"rules": rules})),
                    )
                    .await
                {
                    Ok(_) => self
                        .json(
                            a,
                            Method::GET,
                            &format!("/sprites/{s}/policy/network"),
                            None,
                        )
                        .await
                        .map(|v| json!({"policy": v})),
                    Err(f) => Err(f),
                }
            }
            "list_services" => {
                let s = sp!();
                self.json(a, Method::GET, &format!("/sprites/{s}/services"), None)
                    .await
                    .map(|v| json!({"services": v}))
            }
            "create_service" => {
                let s = sp!();
                let n = enc(arg_str(args, "name")?);
                let mut body = json!({"cmd": arg_str(args, "cmd")?, "args": args.get("args").cloned().unwrap_or(json!([]))});
                if let Some(p) = args.get("http_port") {
                    body["http_port"] = p.clone();
                }
                self.json(
                    a,
                    Method::PUT,
                    &format!("/sprites/{s}/services/{n}"),
                    Some(body),
                )
                .await
                .map(|v| json!({"service": v}))
            }
            "start_service" | "stop_service" => {
                let s = sp!();
                let n = enc(arg_str(args, "name")?);
                let action = if name == "start_service" {
                    "start"
                } else {
                    "stop"
                };
                self.api_text(
                    a,
                    Method::POST,
                    &format!("/sprites/{s}/services/{n}/{action}"),
                )
                .await
                .map(|t| json!({"result": t}))
            }
            "get_service" => {
                let s = sp!();
                let n = enc(arg_str(args, "name")?);
                self.json(a, Method::GET, &format!("/sprites/{s}/services/{n}"), None)
                    .await
                    .map(|v| json!({"service": v}))
            }
            "service_logs" => {
                let s = sp!();
                let n = enc(arg_str(args, "name")?);
                self.api_text(a, Method::GET, &format!("/sprites/{s}/services/{n}/logs"))
                    .await
                    .map(|t| json!({"logs": t}))
            }
            "read_file" => {
                let s = sp!();
                let p = enc(arg_str(args, "path")?);
                match self
                    .api(
                        a,
                        Method::GET,
                        &format!("/sprites/{s}/fs/read?path={p}"),
                        None,
                        &[],
                        BODY_LIMIT,
                    )
                    .await
                {
                    Ok((200, b, more)) => {
                        Ok(json!({"content": String::from_utf8_lossy(&b), "truncated": more}))
                    }
                    Ok((_, b, _)) => Err(Fail(error_text(&b))),
                    Err(f) => Err(f),
                }
            }
            "write_file" => {
                let s = sp!();
                let p = enc(arg_str(args, "path")?);
                let content = args.get("content").and_then(Value::as_str).ok_or_else(|| {
                    McpError::invalid_params("`content` (a string) is required", None)
                })?;
                match self
                    .api(
                        a,
                        Method::PUT,
                        &format!("/sprites/{s}/fs/write?path={p}&mkdir=true"),
                        Some(content.as_bytes().to_vec()),
                        &[],
                        BODY_LIMIT,
                    )
                    .await
                {
                    Ok((st, _, _)) if (200..300).contains(&st) => {
                        Ok(json!({"written": content.len()}))
                    }
                    Ok((_, b, _)) => Err(Fail(error_text(&b))),
                    Err(f) => Err(f),
                }
            }
            "list_dir" => {
                let s = sp!();
                let p = enc(arg_str(args, "path")?);
                self.json(
                    a,
                    Method::GET,
                    &format!("/sprites/{s}/fs/list?path={p}"),
                    None,
                )
                .await
                .map(|v| json!({"entries": v}))
            }
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool {other:?}"),
                    None,
                ))
            }
        })
    }

    async fn list(&self, a: &Access, prefix: &str) -> Result<Vec<Value>, Fail> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/sprites?prefix={}&max_results=100", enc(prefix));
            if let Some(t) = &token {
                path.push_str(&format!("&continuation_token={}", enc(t)));
            }
            let v = self.json(a, Method::GET, &path, None).await?;
            for s in v["sprites"].as_array().cloned().unwrap_or_default() {
                out.push(json!({"name": s["name"], "status": s["status"], "url": s["url"], "labels": s["labels"], "created_at": s["created_at"]}));
            }
            match v["next_continuation_token"]
                .as_str()
                .filter(|t| !t.is_empty() && v["has_more"] == true)
            {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
    }

    async fn api_text(&self, a: &Access, method: Method, path: &str) -> Result<String, Fail> {
        let (st, b, _) = self.api(a, method, path, None, &[], BODY_LIMIT).await?;
        if !(200..300).contains(&st) {
            return Err(Fail(error_text(&b)));
        }
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    async fn ndjson(&self, a: &Access, path: &str, body: Value) -> Result<Value, Fail> {
        let (st, b, _) = self
            .api(
                a,
                Method::POST,
                path,
                Some(body.to_string().into_bytes()),
                &[],
                BODY_LIMIT,
            )
            .await?;
        if !(200..300).contains(&st) {
            return Err(Fail(error_text(&b)));
        }
        let lines: Vec<Value> = String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Some(e) = lines.iter().find(|l| l["type"] == "error") {
            return Err(Fail(
                e["error"]
                    .as_str()
                    .or(e["data"].as_str())
                    .unwrap_or("failed")
                    .to_string(),
            ));
        }
        Ok(json!({"log": lines}))
    }

    async fn exec(
        &self,
        a: &Access,
        sprite: &str,
        args: &Map<String, Value>,
    ) -> Result<Result<Value, Fail>, McpError> {
        let argv: Vec<String> = match args.get("command") {
            Some(Value::String(s)) if !s.is_empty() => vec!["bash".into(), "-lc".into(), s.clone()],
            Some(Value::Array(v)) if !v.is_empty() && v.iter().all(Value::is_string) => v
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => {
                return Err(McpError::invalid_params(
                    "`command` must be a non-empty string or array of strings",
                    None,
                ))
            }
        };
        let timeout = args
            .get("timeout_s")
            .and_then(Value::as_u64)
            .unwrap_or(EXEC_TIMEOUT_DEFAULT)
            .clamp(1, EXEC_TIMEOUT_MAX);
        let mut q: Vec<String> = argv.iter().map(|c| format!("cmd={}", enc(c))).collect();
        if let Some(Value::Object(env)) = args.get("env") {
            for (k, v) in env {
                q.push(format!(
                    "env={}",
                    enc(&format!("{k}={}", v.as_str().unwrap_or_default()))
                ));
            }
        }
        if let Some(d) = args.get("dir").and_then(Value::as_str) {
            q.push(format!("dir={}", enc(d)));
        }
        // A command outliving the call's timeout goes on as a session for up to an hour.
        q.push("max_run_after_disconnect=1h".into());
        let stdin = args
            .get("stdin")
            .and_then(Value::as_str)
            .map(|s| s.as_bytes().to_vec());
        if stdin.is_some() {
            q.push("stdin=true".into());
        }
        let path = format!("/sprites/{sprite}/exec?{}", q.join("&"));
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("/v1{path}"))
            .header("sprite-exec-framing", "length-prefixed")
            .body(Bytes::from(stdin.unwrap_or_default()))
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        // Frames are parsed as they arrive; past the caps they are counted, not kept. At the
        // timeout, what arrived is the answer and the command goes on as a session.
        let (st, mut body) = match tokio::time::timeout(
            CALL_TIMEOUT,
            self.mcp.api.call(&a.org_id, req),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Ok(Err(Fail(e))),
            Err(_) => return Ok(Err(Fail(
                "the sprite did not answer in time (it may be waking up); retry in a few seconds"
                    .into(),
            ))),
        };
        if st != 200 {
            let mut b = Vec::new();
            while let Some(Ok(c)) = futures::StreamExt::next(&mut body).await {
                b.extend_from_slice(&c);
                if b.len() > 4096 {
                    break;
                }
            }
            return Ok(Err(Fail(error_text(&b))));
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_n, mut err_n) = (0usize, 0usize);
        let mut code = None;
        let mut pending: Vec<u8> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut timed_out = false;
        'read: loop {
            let chunk = match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut body))
                .await
            {
                Err(_) => {
                    timed_out = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Ok(Err(Fail(e))),
                Ok(Some(Ok(c))) => c,
            };
            pending.extend_from_slice(&chunk);
            loop {
                if pending.len() < 5 {
                    continue 'read;
                }
                let id = pending[0];
                let len =
                    u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
                // A frame of ours never exceeds a few MiB; more is not an exec stream.
                if len > 16 << 20 {
                    return Ok(Err(Fail(
                        "the sprite's answer is not an exec stream".into(),
                    )));
                }
                if pending.len() < 5 + len {
                    continue 'read;
                }
                let data = &pending[5..5 + len];
                match id {
                    1 => {
                        out_n += len;
                        let room = OUTPUT_CAP.saturating_sub(out.len());
                        out.extend_from_slice(&data[..room.min(len)]);
                    }
                    2 => {
                        err_n += len;
                        let room = OUTPUT_CAP.saturating_sub(err.len());
                        err.extend_from_slice(&data[..room.min(len)]);
                    }
                    3 if len == 1 => code = Some(data[0]),
                    _ => {}
                }
                pending.drain(..5 + len);
            }
        }
        if timed_out {
            return Ok(Ok(json!({
                "stdout": String::from_utf8_lossy(&out),
                "stderr": String::from_utf8_lossy(&err),
                "exit_code": null,
                "stdout_bytes": out_n,
                "stderr_bytes": err_n,
                "timed_out": true,
                "note": format!("still running after {timeout} s; it goes on in the sprite as a session (list_sessions, kill_session)"),
            })));
        }
        Ok(Ok(json!({
            "stdout": String::from_utf8_lossy(&out),
            "stderr": String::from_utf8_lossy(&err),
            "exit_code": code,
            "stdout_bytes": out_n,
            "stderr_bytes": err_n,
            "timed_out": false,
        })))
    }
}

fn error_text(b: &[u8]) -> String {
    serde_json::from_slice::<Value>(b)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&b[..b.len().min(1024)]).into_owned())
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let mut c = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        c.server_info = Implementation::new("spritesd", env!("CARGO_PKG_VERSION"));
        c.instructions = Some(
            "Sprites are persistent Linux machines. Create one with create_sprite, then run commands in it with exec; \
             it keeps its files between calls and sleeps when idle (the next call wakes it)."
                .into(),
        );
        c
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools())
            .with_ttl_ms(3_600_000)
            .with_cache_scope(CacheScope::Public))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let access = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Access>().cloned())
            .ok_or_else(|| McpError::invalid_request("not authorized", None))?;
        let args = request.arguments.clone().unwrap_or_default();
        let r = match self.call(&access, &request.name, &args).await? {
            Ok(v) => CallToolResult::structured(v),
            Err(Fail(msg)) => CallToolResult::error(vec![ContentBlock::text(msg)]),
        };
        Ok(r.into())
    }
}

/// The bearer token on `/mcp`: an MCP access token or an org token; else 401 pointing at
/// the protected resource metadata.
async fn authenticate(State(m): State<Arc<Mcp>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let access = match token {
        Some(t) => m.access_of(&t).await,
        None => None,
    };
    let Some(access) = access else {
        let value = format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"{}\"",
            m.issuer(),
            crate::oauth::SCOPE
        );
        let mut r = (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token", "error_description": "sign in: this endpoint needs an OAuth access token"})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

pub(crate) fn router<S: Clone + Send + Sync + 'static>(mcp: Arc<Mcp>) -> Router<S> {
    let origin = url::Url::parse(&mcp.issuer())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_legacy_session_mode(true)
        .with_json_response(true)
        // The server's own Host may be anything a proxy or a user puts in front of it;
        // Origin (a browser's) must be ours.
        .disable_allowed_hosts()
        .with_allowed_origins(vec![origin]);
    let handler = Handler { mcp: mcp.clone() };
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        // One JSON-RPC message per request: 4 MiB is far more than any tool call needs.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(4 << 20))
        .layer(middleware::from_fn_with_state(mcp, authenticate))
}
