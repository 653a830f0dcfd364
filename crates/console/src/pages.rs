//! The console's pages and form handlers. Each reads or changes through [`Console::api`] (the
//! REST API as the signed-in token) and renders a template; a form answers with a redirect
//! carrying a one-line message, so reloading never posts twice.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use crate::{
    checked_form, field, harden, hash, now_ms, random, ApiFailure, Console, SessionRow,
    SESSION_TTL_MS,
};

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");
const TERMINAL_JS: &str = include_str!("../static/terminal.js");
const XTERM_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.js"));
const XTERM_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.css"));
const FIT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/addon-fit.js"));

/// Characters a path segment or query value keeps as they are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The templates, compiled in.
pub(crate) fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, src) in [
        ("layout.html", include_str!("../templates/layout.html")),
        ("signin.html", include_str!("../templates/signin.html")),
        ("sprites.html", include_str!("../templates/sprites.html")),
        ("sprite.html", include_str!("../templates/sprite.html")),
        ("terminal.html", include_str!("../templates/terminal.html")),
        ("logs.html", include_str!("../templates/logs.html")),
        ("tokens.html", include_str!("../templates/tokens.html")),
        (
            "connectors.html",
            include_str!("../templates/connectors.html"),
        ),
        (
            "connector.html",
            include_str!("../templates/connector.html"),
        ),
        ("grants.html", include_str!("../templates/grants.html")),
        ("error.html", include_str!("../templates/error.html")),
        ("continue.html", include_str!("../templates/continue.html")),
    ] {
        env.add_template(name, src)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
}

impl Console {
    /// Renders `name` with the common context (base path, session, flash messages).
    fn render(
        &self,
        status: StatusCode,
        name: &str,
        s: Option<&SessionRow>,
        flash: &Flash,
        page: Value,
    ) -> Response {
        let mut ctx = Map::new();
        ctx.insert("base".into(), json!(self.base));
        if let Some(s) = s {
            ctx.insert("signed_in".into(), json!(true));
            ctx.insert("org".into(), json!(s.principal.org_slug));
            ctx.insert("csrf".into(), json!(s.csrf));
        }
        ctx.insert("msg".into(), json!(flash.msg));
        ctx.insert("err".into(), json!(flash.err));
        // The sign-in page is the only one served without a session: it carries its style
        // inline (under a nonce) rather than link an asset.
        let nonce = s.is_none().then(|| random(16));
        if let Some(n) = &nonce {
            ctx.insert("nonce".into(), json!(n));
            ctx.insert("inline_css".into(), json!(CSS));
        }
        if let Value::Object(m) = page {
            ctx.extend(m);
        }
        let html = self.env.get_template(name).and_then(|t| {
            t.render(minijinja::Value::from(minijinja::value::Serde(
                &Value::Object(ctx),
            )))
        });
        let resp = match html {
            Ok(h) => (status, Html(h)).into_response(),
            Err(e) => {
                tracing::error!("console template {name}: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page failed to render",
                )
                    .into_response()
            }
        };
        harden(resp, nonce.as_deref())
    }

    /// An error page for an API failure while reading a page.
    fn failure(&self, s: &SessionRow, e: ApiFailure) -> Response {
        let status = if e.status.is_client_error() || e.status.is_server_error() {
            e.status
        } else {
            StatusCode::BAD_GATEWAY
        };
        self.render(
            status,
            "error.html",
            Some(s),
            &Flash::default(),
            json!({"title": "Something went wrong", "message": e.message}),
        )
    }

    /// The session, or the sign-in page's address to go to.
    async fn signed_in(&self, headers: &HeaderMap, uri: &Uri) -> Result<SessionRow, Response> {
        match self.session_of(headers).await {
            Some(s) => Ok(s),
            None => {
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_string();
                Err(see_other(&format!(
                    "{}?next={}",
                    self.at("/signin"),
                    enc(&next)
                )))
            }
        }
    }

    /// The session of a form post and its checked fields.
    async fn posted(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(SessionRow, HashMap<String, String>), Response> {
        let Some(s) = self.session_of(headers).await else {
            return Err(harden(
                (
                    StatusCode::FORBIDDEN,
                    "your session has ended: sign in again",
                )
                    .into_response(),
                None,
            ));
        };
        let f = checked_form(&s, headers, body)?;
        Ok((s, f))
    }

    /// One API call for a form, then back to `back` with `done` or the API's error.
    async fn act(
        &self,
        s: &SessionRow,
        method: Method,
        path: &str,
        body: Option<&Value>,
        back: &str,
        done: String,
    ) -> Response {
        let r = self.api(&s.principal, method, path, body).await;
        self.back(back, r.map(|_| done).map_err(|e| e.message))
    }

    /// A page of one API answer: `page` turns it into the template's context.
    async fn show(
        &self,
        s: &SessionRow,
        path: &str,
        template: &str,
        flash: &Flash,
        page: impl FnOnce(Value) -> Value,
    ) -> Response {
        match self.api_json(&s.principal, Method::GET, path, None).await {
            Ok(v) => self.render(StatusCode::OK, template, Some(s), flash, page(v)),
            Err(e) => self.failure(s, e),
        }
    }

    /// A redirect to `path` with a message.
    fn back(&self, path: &str, r: Result<String, String>) -> Response {
        let (k, v) = match r {
            Ok(m) => ("msg", m),
            Err(e) => ("err", e),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        see_other(&format!("{}{sep}{k}={}", self.at(path), enc(&v)))
    }
}

fn see_other(to: &str) -> Response {
    harden(
        (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response(),
        None,
    )
}

/// One-line messages carried by a redirect.
#[derive(Default, serde::Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    err: Option<String>,
}

type C = State<Arc<Console>>;

// --- sign-in -------------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
pub(crate) struct Next {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    err: Option<String>,
}

/// Only a path of this server may be gone to after sign-in.
fn safe_next(c: &Console, next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => c.at("/"),
    }
}

pub(crate) async fn signin_page(
    State(c): C,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Response {
    if c.session_of(&headers).await.is_some() {
        return see_other(&safe_next(&c, q.next.as_deref()));
    }
    let flash = Flash {
        msg: q.msg,
        err: q.err,
    };
    c.render(
        StatusCode::OK,
        "signin.html",
        None,
        &flash,
        json!({"title": "Sign in", "next": safe_next(&c, q.next.as_deref())}),
    )
}

pub(crate) async fn signin(State(c): C, headers: HeaderMap, body: Bytes) -> Response {
    // No session yet, so no CSRF token: a sign-in another site posts (to sign the browser
    // into the attacker's org) is refused by its origin instead.
    if crate::cross_site(&headers) {
        return crate::forbidden("cross-site sign-in refused");
    }
    let f = crate::form_pairs(&body);
    let next = safe_next(&c, field(&f, "next"));
    let token = field(&f, "token").unwrap_or("");
    let again = |e: &str| {
        c.render(
            StatusCode::UNAUTHORIZED,
            "signin.html",
            None,
            &Flash {
                msg: None,
                err: Some(e.to_string()),
            },
            json!({"title": "Sign in", "next": next}),
        )
    };
    if token.is_empty() || token.len() > 512 {
        return again("Paste an org token.");
    }
    let Some(principal) = c.backend.sign_in(token).await else {
        return again("That token is not valid.");
    };
    let id = random(32);
    let row = SessionRow {
        principal,
        csrf: random(24),
        expires_at: now_ms() + SESSION_TTL_MS,
    };
    if let Err(e) = c.backend.put_session(&hash(&id), &row).await {
        tracing::error!("console session: {e}");
        return again("The server could not start a session; try again.");
    }
    let mut r = see_other(&next);
    if let Ok(v) = c.session_cookie(Some(&id)).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(crate) async fn signout(State(c): C, headers: HeaderMap, body: Bytes) -> Response {
    let (_, _) = match c.posted(&headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(h) = crate::session_hash(&headers, c.secure) {
        c.backend.delete_session(&h).await;
    }
    let mut r = see_other(&format!("{}?msg={}", c.at("/signin"), enc("Signed out.")));
    if let Ok(v) = c.session_cookie(None).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// --- sprites -------------------------------------------------------------------------------

macro_rules! session {
    ($c:expr, $headers:expr, $uri:expr) => {
        match $c.signed_in(&$headers, &$uri).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

macro_rules! posted {
    ($c:expr, $headers:expr, $body:expr) => {
        match $c.posted(&$headers, &$body).await {
            Ok(x) => x,
            Err(r) => return r,
        }
    };
}

pub(crate) async fn sprites(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Query(fl): Query<Flash>,
) -> Response {
    let s = session!(c, headers, uri);
    c.show(&s, "/sprites?max_results=50", "sprites.html", &fl, |v| {
        json!({"title": "Sprites", "nav": "sprites", "sprites": v["sprites"], "has_more": v["has_more"], "counts": v["org"]})
    })
    .await
}

pub(crate) async fn create_sprite(State(c): C, headers: HeaderMap, body: Bytes) -> Response {
    let (s, f) = posted!(c, headers, body);
    let Some(name) = field(&f, "name") else {
        return c.back("/", Err("Give the sprite a name.".into()));
    };
    let r = c
        .api(
            &s.principal,
            Method::POST,
            "/sprites",
            Some(&json!({"name": name})),
        )
        .await;
    match r {
        Ok(_) => c.back(
            &format!("/sprites/{}", enc(name)),
            Ok(format!("Sprite {name} created.")),
        ),
        Err(e) => c.back("/", Err(e.message)),
    }
}

/// Network policy rules as lines of `allow DOMAIN`, `deny DOMAIN`, `include PRESET`.
fn rules_text(policy: &Value) -> String {
    policy["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| match (r["include"].as_str(), r["domain"].as_str()) {
                    (Some(i), _) => format!("include {i}"),
                    (_, Some(d)) => format!("{} {d}", r["action"].as_str().unwrap_or("allow")),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn parse_rules(text: &str) -> Result<Value, String> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (verb, arg) = (it.next().unwrap_or(""), it.next());
        let (Some(arg), None) = (arg, it.next()) else {
            return Err(format!(
                "line {}: write `allow DOMAIN`, `deny DOMAIN` or `include PRESET`",
                n + 1
            ));
        };
        rules.push(match verb {
            "allow" | "deny" => json!({"domain": arg, "action": verb}),
            "include" => json!({"include": arg}),
            _ => {
                return Err(format!(
                    "line {}: {verb:?} is not allow, deny or include",
                    n + 1
                ))
            }
        });
    }
    Ok(json!({"rules": rules}))
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct SpriteQuery {
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    err: Option<String>,
    #[serde(default)]
    wake: Option<String>,
}

pub(crate) async fn sprite(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Query(q): Query<SpriteQuery>,
) -> Response {
    let s = session!(c, headers, uri);
    let p = &s.principal;
    let n = enc(&name);
    let sp = match c
        .api_json(p, Method::GET, &format!("/sprites/{n}"), None)
        .await
    {
        Ok(v) => v,
        Err(e) => return c.failure(&s, e),
    };
    // Sessions and services live in the sprite: reading them wakes it, so a sleeping sprite's
    // page asks first.
    let awake = sp["status"] == "running" || q.wake.is_some();
    let sessions_path = format!("/sprites/{n}/exec");
    let services_path = format!("/sprites/{n}/services");
    let checkpoints_path = format!("/sprites/{n}/checkpoints");
    let policy_path = format!("/sprites/{n}/policy/network");
    let (sessions, services, checkpoints, policy) = futures::join!(
        async {
            if awake {
                c.api_json(p, Method::GET, &sessions_path, None).await.ok()
            } else {
                None
            }
        },
        async {
            if awake {
                c.api_json(p, Method::GET, &services_path, None).await.ok()
            } else {
                None
            }
        },
        c.api_json(p, Method::GET, &checkpoints_path, None),
        c.api_json(p, Method::GET, &policy_path, None),
    );
    let checkpoints: Vec<Value> = checkpoints
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["id"] != "Current")
        .collect();
    let services = services.map(|v| match v {
        Value::Array(a) => Value::Array(a),
        other => other["services"].clone(),
    });
    let flash = Flash {
        msg: q.msg,
        err: q.err,
    };
    c.render(
        StatusCode::OK,
        "sprite.html",
        Some(&s),
        &flash,
        json!({
            "title": name,
            "nav": "sprites",
            "sprite": sp,
            "labels": sp["labels"].as_array().map(|l| l.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
            "awake": awake,
            "sessions": sessions.map(|v| v["sessions"].clone()),
            "services": services,
            "checkpoints": checkpoints,
            "rules": policy.map(|p| rules_text(&p)).unwrap_or_default(),
        }),
    )
}

pub(crate) async fn sprite_settings(
    State(c): C,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let labels: Vec<&str> = f
        .get("labels")
        .map(|l| {
            l.split([',', ' '])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let idle = match (field(&f, "warm_after"), field(&f, "cold_after")) {
        (None, None) => Value::Null,
        (w, cold) => json!({"warm_after": w, "cold_after": cold}),
    };
    let mut body = json!({"labels": labels, "idle": idle});
    if let Some(auth) = field(&f, "url_auth") {
        body["url_settings"] = json!({"auth": auth});
    }
    let n = enc(&name);
    let (path, done) = (format!("/sprites/{n}"), "Settings saved.".to_string());
    c.act(&s, Method::PUT, &path, Some(&body), &path, done)
        .await
}

pub(crate) async fn destroy_sprite(
    State(c): C,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    if field(&f, "confirm") != Some(name.as_str()) {
        return c.back(
            &format!("/sprites/{}", enc(&name)),
            Err(format!(
                "Type the sprite's name ({name}) to confirm that it goes, with its disk and checkpoints."
            )),
        );
    }
    match c
        .api(
            &s.principal,
            Method::DELETE,
            &format!("/sprites/{}", enc(&name)),
            None,
        )
        .await
    {
        Ok(_) => c.back("/", Ok(format!("Sprite {name} destroyed."))),
        Err(e) => c.back(&format!("/sprites/{}", enc(&name)), Err(e.message)),
    }
}

pub(crate) async fn sleep_sprite(
    State(c): C,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let state = if field(&f, "state") == Some("cold") {
        "cold"
    } else {
        "warm"
    };
    let n = enc(&name);
    let body = json!({"state": state, "force": f.contains_key("force")});
    let done = format!("{name} is {state}.");
    let (path, back) = (format!("/sprites/{n}/sleep"), format!("/sprites/{n}"));
    c.act(&s, Method::POST, &path, Some(&body), &back, done)
        .await
}

pub(crate) async fn network_policy(
    State(c): C,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let n = enc(&name);
    let back = format!("/sprites/{n}");
    let rules = match parse_rules(f.get("rules").map(String::as_str).unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return c.back(&back, Err(e)),
    };
    let path = format!("/sprites/{n}/policy/network");
    let done = "Network policy saved.".to_string();
    c.act(&s, Method::POST, &path, Some(&rules), &back, done)
        .await
}

/// The outcome of an NDJSON progress stream (checkpoint, restore): its complete or error line.
fn outcome(body: &[u8]) -> Result<String, String> {
    let mut last = Err("the stream ended without a result".to_string());
    for line in body.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("complete") => last = Ok(v["data"].as_str().unwrap_or("done").to_string()),
            Some("error") => {
                return Err(v["error"]
                    .as_str()
                    .or(v["data"].as_str())
                    .unwrap_or("failed")
                    .to_string())
            }
            _ => {}
        }
    }
    last
}

pub(crate) async fn create_checkpoint(
    State(c): C,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let comment = field(&f, "comment");
    let r = c
        .api(
            &s.principal,
            Method::POST,
            &format!("/sprites/{}/checkpoint", enc(&name)),
            Some(&json!({"comment": comment})),
        )
        .await;
    let r = r.map_err(|e| e.message).and_then(|b| outcome(&b));
    c.back(&format!("/sprites/{}", enc(&name)), r)
}

pub(crate) async fn restore_checkpoint(
    State(c): C,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let back = format!("/sprites/{}", enc(&name));
    if !f.contains_key("confirm") {
        return c.back(
            &back,
            Err(
                "Tick the box to confirm: a restore replaces the disk and ends every session."
                    .into(),
            ),
        );
    }
    let r = c
        .api(
            &s.principal,
            Method::POST,
            &format!("/sprites/{}/checkpoints/{}/restore", enc(&name), enc(&id)),
            None,
        )
        .await;
    let r = r.map_err(|e| e.message).and_then(|b| outcome(&b));
    c.back(&back, r)
}

pub(crate) async fn delete_checkpoint(
    State(c): C,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (s, _) = posted!(c, headers, body);
    let n = enc(&name);
    let path = format!("/sprites/{n}/checkpoints/{}", enc(&id));
    let done = format!("Checkpoint {id} deleted.");
    c.act(
        &s,
        Method::DELETE,
        &path,
        None,
        &format!("/sprites/{n}"),
        done,
    )
    .await
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct TerminalQuery {
    #[serde(default)]
    session: Option<String>,
}

pub(crate) async fn terminal(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Query(q): Query<TerminalQuery>,
) -> Response {
    let s = session!(c, headers, uri);
    let mut r = c.render(
        StatusCode::OK,
        "terminal.html",
        Some(&s),
        &Flash::default(),
        json!({"title": format!("{name}: terminal"), "nav": "sprites", "name": name, "session": q.session}),
    );
    // xterm.js sizes its rows with style elements it creates; scripts stay 'self' only.
    if let Some(v) = r
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
    {
        let relaxed = v.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'");
        if let Ok(v) = relaxed.parse() {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    r
}

pub(crate) async fn service_logs(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Path((name, svc)): Path<(String, String)>,
) -> Response {
    let s = session!(c, headers, uri);
    let r = c
        .api(
            &s.principal,
            Method::GET,
            &format!(
                "/sprites/{}/services/{}/logs?lines=500",
                enc(&name),
                enc(&svc)
            ),
            None,
        )
        .await;
    let body = match r {
        Ok(b) => b,
        Err(e) => return c.failure(&s, e),
    };
    let lines: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|v| v["type"] == "stdout" || v["type"] == "stderr")
        .map(|v| json!({"stream": v["type"], "data": v["data"]}))
        .collect();
    c.render(
        StatusCode::OK,
        "logs.html",
        Some(&s),
        &Flash::default(),
        json!({"title": format!("{svc} logs"), "nav": "sprites", "name": name, "service": svc, "lines": lines}),
    )
}

// --- tokens --------------------------------------------------------------------------------

async fn tokens_page(
    c: &Console,
    s: &SessionRow,
    flash: &Flash,
    created: Option<Value>,
) -> Response {
    let path = format!("/organizations/{}/tokens", enc(&s.principal.org_slug));
    let (tokens, err) = match c.api_json(&s.principal, Method::GET, &path, None).await {
        Ok(v) => (v["tokens"].clone(), None),
        Err(e) => (Value::Array(vec![]), Some(e.message)),
    };
    let status = if created.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    c.render(
        status,
        "tokens.html",
        Some(s),
        flash,
        json!({"title": "Tokens", "nav": "tokens", "tokens": tokens, "list_error": err, "created": created, "current": s.principal.token_id}),
    )
}

pub(crate) async fn tokens(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Query(fl): Query<Flash>,
) -> Response {
    let s = session!(c, headers, uri);
    tokens_page(&c, &s, &fl, None).await
}

pub(crate) async fn create_token(State(c): C, headers: HeaderMap, body: Bytes) -> Response {
    let (s, f) = posted!(c, headers, body);
    let path = format!("/organizations/{}/tokens", enc(&s.principal.org_slug));
    let req = json!({"description": field(&f, "description").unwrap_or(""), "admin": f.contains_key("admin")});
    match c
        .api_json(&s.principal, Method::POST, &path, Some(&req))
        .await
    {
        // Shown in this answer only (no-store); the list never carries a secret.
        Ok(v) => tokens_page(&c, &s, &Flash::default(), Some(v)).await,
        Err(e) => c.back("/tokens", Err(e.message)),
    }
}

pub(crate) async fn revoke_token(
    State(c): C,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, _) = posted!(c, headers, body);
    let org = enc(&s.principal.org_slug);
    let path = format!("/organizations/{org}/tokens/{}", enc(&id));
    let done = format!("Token {id} revoked.");
    c.act(&s, Method::DELETE, &path, None, "/tokens", done)
        .await
}

// --- connectors ----------------------------------------------------------------------------

pub(crate) async fn connectors(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Query(fl): Query<Flash>,
) -> Response {
    let s = session!(c, headers, uri);
    let list = match c
        .api_json(&s.principal, Method::GET, "/oauth/connections", None)
        .await
    {
        Ok(v) => v["connections"].clone(),
        Err(e) => return c.failure(&s, e),
    };
    let providers = c.backend.providers();
    c.render(
        StatusCode::OK,
        "connectors.html",
        Some(&s),
        &fl,
        json!({"title": "Connectors", "nav": "connectors", "connections": list, "providers": providers}),
    )
}

fn lines(f: &HashMap<String, String>, k: &str) -> Vec<String> {
    f.get(k)
        .map(|t| {
            t.split(['\n', ','])
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The access policy a form describes.
fn policy_of(f: &HashMap<String, String>) -> Value {
    let mut p = Map::new();
    if f.contains_key("allow_all") {
        p.insert("allow_all".into(), json!(true));
    }
    if let Some(prefix) = field(f, "name_prefix") {
        p.insert("name_prefix".into(), json!(prefix));
    }
    for k in ["sprite_labels", "allowed_endpoints", "blocked_endpoints"] {
        let v = lines(f, k);
        if !v.is_empty() {
            p.insert(k.into(), json!(v));
        }
    }
    Value::Object(p)
}

pub(crate) async fn add_connector(State(c): C, headers: HeaderMap, body: Bytes) -> Response {
    let (s, f) = posted!(c, headers, body);
    let kind = field(&f, "kind").unwrap_or("");
    let provider = field(&f, "provider").unwrap_or("");
    let created = |r: Result<Value, ApiFailure>| match r {
        Ok(v) => {
            let id = v["connection"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            c.back(
                &format!("/connectors/{}", enc(&id)),
                Ok(
                    "Connector added. It is dormant until its access policy lets a sprite in."
                        .into(),
                ),
            )
        }
        Err(e) => c.back("/connectors", Err(e.message)),
    };
    match kind {
        "api_key" => {
            let req = json!({"provider": provider, "api_key": f.get("api_key").map(|k| k.trim()).unwrap_or("")});
            created(
                c.api_json(
                    &s.principal,
                    Method::POST,
                    "/oauth/connections/api_key",
                    Some(&req),
                )
                .await,
            )
        }
        "custom_api" => {
            let mut auth = json!({"in": field(&f, "auth_in").unwrap_or("header")});
            if let Some(n) = field(&f, "auth_name") {
                auth["name"] = json!(n);
            }
            if let Some(fmt) = field(&f, "auth_format") {
                auth["format"] = json!(fmt);
            }
            let mut req = json!({
                "provider": "custom_api",
                "name": field(&f, "name"),
                "base_url": field(&f, "base_url"),
                "api_key": f.get("api_key").map(|k| k.trim()).unwrap_or(""),
                "auth": auth,
            });
            if let Some(path) = field(&f, "test_path") {
                req["test_request"] = json!({"method": "GET", "path": path});
            }
            let policy = policy_of(&f);
            if policy.as_object().is_some_and(|m| !m.is_empty()) {
                req["access_policy"] = policy;
            }
            created(
                c.api_json(
                    &s.principal,
                    Method::POST,
                    "/oauth/connections/api_key",
                    Some(&req),
                )
                .await,
            )
        }
        "managed" => created(
            c.api_json(
                &s.principal,
                Method::POST,
                "/oauth/connections/provision",
                Some(&json!({"provider": provider})),
            )
            .await,
        ),
        "oauth" => {
            // The provider sends the browser back to the server's callback, which finishes the
            // connection and links back here.
            let path = format!("/oauth/{}/authorize", enc(provider));
            match c.api_json(&s.principal, Method::GET, &path, None).await {
                Ok(v) => match v["authorize_url"].as_str() {
                    // Not a redirect: the pages' CSP (`form-action 'self'`) stops a form's
                    // redirect to another site, and should. A page that goes on does not.
                    Some(u) if u.starts_with("https://") || u.starts_with("http://") => c.render(
                        StatusCode::OK,
                        "continue.html",
                        Some(&s),
                        &Flash::default(),
                        json!({"title": "Continue to the provider", "nav": "connectors", "url": u, "provider": provider}),
                    ),
                    _ => c.back(
                        "/connectors",
                        Err("the provider gave no authorize URL".into()),
                    ),
                },
                Err(e) => c.back("/connectors", Err(e.message)),
            }
        }
        _ => c.back(
            "/connectors",
            Err("Choose what kind of connector to add.".into()),
        ),
    }
}

async fn connector_page(
    c: &Console,
    s: &SessionRow,
    id: &str,
    flash: &Flash,
    playground: Option<Value>,
) -> Response {
    let p = &s.principal;
    let conn_path = format!("/oauth/connections/{}", enc(id));
    let authorized_path = format!("/oauth/connections/{}/sprites", enc(id));
    let (conn, authorized, sprites) = futures::join!(
        c.api_json(p, Method::GET, &conn_path, None),
        c.api_json(p, Method::GET, &authorized_path, None),
        c.api_json(p, Method::GET, "/sprites?max_results=50", None),
    );
    let conn = match conn {
        Ok(v) => v["connection"].clone(),
        Err(e) => return c.failure(s, e),
    };
    let pol = &conn["access_policy"];
    let joined = |k: &str| {
        pol[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    c.render(
        StatusCode::OK,
        "connector.html",
        Some(s),
        flash,
        json!({
            "title": conn["provider_account_name"].as_str().or(conn["provider"].as_str()).unwrap_or("Connector"),
            "nav": "connectors",
            "c": conn,
            "labels": joined("sprite_labels").replace('\n', ", "),
            "allowed": joined("allowed_endpoints"),
            "blocked": joined("blocked_endpoints"),
            "authorized": authorized.ok().map(|v| v["sprites"].clone()),
            "sprites": sprites.ok().map(|v| v["sprites"].clone()),
            "playground": playground,
        }),
    )
}

pub(crate) async fn connector(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(fl): Query<Flash>,
) -> Response {
    let s = session!(c, headers, uri);
    connector_page(&c, &s, &id, &fl, None).await
}

pub(crate) async fn connector_policy(
    State(c): C,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let path = format!("/oauth/connections/{}", enc(&id));
    let body = json!({"access_policy": policy_of(&f)});
    let back = format!("/connectors/{}", enc(&id));
    let done = "Access policy saved.".to_string();
    c.act(&s, Method::PUT, &path, Some(&body), &back, done)
        .await
}

pub(crate) async fn delete_connector(
    State(c): C,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    if !f.contains_key("confirm") {
        return c.back(
            &format!("/connectors/{}", enc(&id)),
            Err("Tick the box to confirm: the credential is destroyed at once.".into()),
        );
    }
    let r = c
        .api(
            &s.principal,
            Method::DELETE,
            &format!("/oauth/connections/{}", enc(&id)),
            None,
        )
        .await;
    match r {
        Ok(_) => c.back("/connectors", Ok("Connector deleted.".into())),
        Err(e) => c.back(&format!("/connectors/{}", enc(&id)), Err(e.message)),
    }
}

/// Longest answer the playground shows.
const PLAYGROUND_MAX: usize = 64 * 1024;

/// The playground sends a real request as the chosen sprite: `curl` run inside it against its
/// own gateway address, so the gateway sees exactly what an agent's call would be.
pub(crate) async fn playground(
    State(c): C,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, f) = posted!(c, headers, body);
    let sprite = field(&f, "sprite").unwrap_or("").to_string();
    let method = field(&f, "method").unwrap_or("GET").to_ascii_uppercase();
    let path = field(&f, "path").unwrap_or("/").to_string();
    let flash = Flash::default();
    let mut result = json!({"sprite": sprite, "method": method, "path": path});
    let bad = |e: &str| Some(e.to_string());
    let problem = if sprite.is_empty() {
        bad("Choose a sprite to send the request as.")
    } else if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method.as_str()) {
        bad("Choose a method.")
    } else if !path.starts_with('/') || path.len() > 2000 || path.chars().any(char::is_control) {
        bad("The path starts with / and has no control characters.")
    } else {
        None
    };
    if let Some(e) = problem {
        result["error"] = json!(e);
        return connector_page(&c, &s, &id, &flash, Some(result)).await;
    }
    let conn = match c
        .api_json(
            &s.principal,
            Method::GET,
            &format!("/oauth/connections/{}", enc(&id)),
            None,
        )
        .await
    {
        Ok(v) => v["connection"].clone(),
        Err(e) => return c.failure(&s, e),
    };
    let provider = conn["provider"].as_str().unwrap_or_default();
    // The URL goes to curl as an argument (no shell), so nothing in the path is interpreted.
    let url = format!("$SPRITES_GATEWAY_URL/v1/gateway/{provider}/{id}{path}");
    let mut q: Vec<(String, String)> = vec![
        ("path".into(), "sh".into()),
        ("cmd".into(), "sh".into()),
        ("cmd".into(), "-c".into()),
        (
            "cmd".into(),
            "exec curl -sS -i --max-time 20 -X \"$1\" \"$SPRITES_GATEWAY_URL$2\"".into(),
        ),
        ("cmd".into(), "playground".into()),
        ("cmd".into(), method.clone()),
        ("cmd".into(), format!("/v1/gateway/{provider}/{id}{path}")),
    ];
    let data = f.get("body").map(|b| b.as_str()).unwrap_or("");
    if !data.is_empty() && method != "GET" && method != "HEAD" {
        q[3].1 =
            "exec curl -sS -i --max-time 20 -X \"$1\" --data-binary @- \"$SPRITES_GATEWAY_URL$2\""
                .into();
        q.push(("stdin".into(), "true".into()));
    }
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/sprites/{}/exec?{query}", enc(&sprite)))
        .header(header::HOST, "console.internal")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        // Our framing: the official form's frames have no length and cannot be read whole.
        .header("sprite-exec-framing", "length-prefixed")
        .body(axum::body::Body::from(data.to_string()));
    let Ok(req) = req else {
        return c.failure(
            &s,
            ApiFailure {
                status: StatusCode::BAD_REQUEST,
                message: "bad request".into(),
            },
        );
    };
    let resp = c.backend.call(&s.principal, req).await;
    let status = resp.status();
    let out = http_body_util::BodyExt::collect(http_body_util::Limited::new(
        resp.into_body(),
        PLAYGROUND_MAX * 4,
    ))
    .await
    .map(|b| b.to_bytes());
    match out {
        Ok(b) if status.is_success() => {
            let (stdout, stderr, code) = demux(&b);
            let text =
                String::from_utf8_lossy(&stdout[..stdout.len().min(PLAYGROUND_MAX)]).into_owned();
            result["url"] = json!(url);
            result["answer"] = json!(text);
            if code != Some(0) {
                result["error"] = json!(format!(
                    "curl in the sprite failed ({}): {}",
                    code.map(|c| c.to_string()).unwrap_or("no exit code".into()),
                    String::from_utf8_lossy(&stderr).trim()
                ));
            }
        }
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            result["error"] = json!(v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("the sprite could not run the request"));
        }
        Err(e) => result["error"] = json!(format!("reading the answer: {e}")),
    }
    connector_page(&c, &s, &id, &flash, Some(result)).await
}

/// Splits a length-prefixed HTTP exec answer into stdout, stderr and the exit code.
fn demux(b: &[u8]) -> (Vec<u8>, Vec<u8>, Option<u8>) {
    use sprites_api::frames::{Decoder, Frame};
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let mut d = Decoder::default();
    d.push(b);
    while let Ok(Some(f)) = d.next_frame() {
        match f {
            Frame::Data(1, data) => out.extend_from_slice(&data),
            Frame::Data(_, data) => err.extend_from_slice(&data),
            Frame::Exit(c) => code = Some(c),
        }
    }
    (out, err, code)
}

// --- MCP grants ----------------------------------------------------------------------------

pub(crate) async fn grants(
    State(c): C,
    headers: HeaderMap,
    uri: Uri,
    Query(fl): Query<Flash>,
) -> Response {
    let s = session!(c, headers, uri);
    c.show(
        &s,
        "/mcp/grants",
        "grants.html",
        &fl,
        |v| json!({"title": "MCP grants", "nav": "grants", "grants": v["grants"]}),
    )
    .await
}

pub(crate) async fn revoke_grant(
    State(c): C,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (s, _) = posted!(c, headers, body);
    let path = format!("/mcp/grants/{}", enc(&id));
    let done = "Grant revoked: its tokens no longer work.".to_string();
    c.act(&s, Method::DELETE, &path, None, "/grants", done)
        .await
}

// --- assets --------------------------------------------------------------------------------

/// The embedded assets, for signed-in browsers only.
pub(crate) async fn asset(State(c): C, headers: HeaderMap, Path(file): Path<String>) -> Response {
    if c.session_of(&headers).await.is_none() {
        return harden(
            (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            None,
        );
    }
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "console.css" => (CSS.as_bytes(), "text/css; charset=utf-8"),
        "console.js" => (JS.as_bytes(), "text/javascript; charset=utf-8"),
        "terminal.js" => (TERMINAL_JS.as_bytes(), "text/javascript; charset=utf-8"),
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        "addon-fit.js" => (FIT_JS, "text/javascript; charset=utf-8"),
        _ => {
            return harden(
                (StatusCode::NOT_FOUND, "no such asset").into_response(),
                None,
            )
        }
    };
    harden(
        (
            [
                (header::CONTENT_TYPE, kind),
                // Private: a shared cache must not keep what only signed-in people may fetch.
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None,
    )
}
