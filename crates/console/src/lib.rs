//! The web console: server-rendered pages (minijinja templates, embedded with their assets at
//! build time) over the sprites API. It owns sign-in sessions, CSRF and the browser terminal's
//! page; every operation it offers is a call of the REST API made in-process as the signed-in
//! token ([`Backend::call`]), so it adds no second implementation of anything.
//!
//! Security: the session cookie is `HttpOnly`, `SameSite=Strict` (and `Secure` over TLS);
//! every state-changing request carries the session's CSRF token (a form field, or the
//! `X-CSRF-Token` header of the few fetches the pages make) and is refused when the browser
//! says it comes from another site; WebSocket upgrades must come from this origin. Nothing but
//! the sign-in page is served without a session. A token is shown once, in the answer that
//! minted it, with `Cache-Control: no-store`.

// Handlers return `Result<_, Response>` to answer early (a redirect, a refusal), as axum's
// own extractors do; boxing every early answer would buy nothing.
#![allow(clippy::result_large_err)]

mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::Digest;

/// The session cookie's name over plain HTTP (every cookie of this server starts with
/// `sprites_`, which sprite URLs keep away from the apps in sprites).
pub const SESSION_COOKIE: &str = "sprites_session";
/// Its name over TLS: a browser takes a `__Host-` cookie only from this very host (Secure,
/// `Path=/`, no `Domain`), so no app on a sprite URL can plant one, even on a subdomain.
pub const SECURE_SESSION_COOKIE: &str = "__Host-sprites_session";

/// The session cookie's name for a server that does (`secure`) or does not speak TLS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}
/// How long a session lives.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;
/// Largest API answer a page reads (lists are paged far below this).
const MAX_API_BODY: usize = 8 << 20;

/// Who signed in: what a token resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Org id.
    pub org_id: String,
    /// Org slug (shown, and used in `/v1/organizations/{org}` paths).
    pub org_slug: String,
    /// The token the session acts as (its rights, and its revocation ends the session).
    pub token_id: String,
}

/// A stored session (its id is kept only as a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Who.
    pub principal: Principal,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Unix ms after which it is refused.
    pub expires_at: i64,
}

/// A connector provider as the add forms show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderInfo {
    /// Name in the API.
    pub name: String,
    /// Shown to people.
    pub display_name: String,
    /// What it is.
    pub description: String,
    /// `api_key`, `oauth` or `custom`.
    pub kind: &'static str,
    /// Whether the server offers its own credential (a managed connector).
    pub managed: bool,
}

/// What the console needs from the server.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The principal of a valid org token.
    async fn sign_in(&self, token: &str) -> Option<Principal>;
    /// Stores a new session under the hash of its id.
    async fn put_session(&self, hash: &str, row: &SessionRow) -> Result<(), String>;
    /// A session that has not expired and whose token still exists.
    async fn session(&self, hash: &str) -> Option<SessionRow>;
    /// Ends a session.
    async fn delete_session(&self, hash: &str);
    /// The connector providers this server offers (the add-connector forms list them).
    fn providers(&self) -> Vec<ProviderInfo>;
    /// The REST API (`/v1/...`), as `who`, in-process. The request keeps its extensions, so a
    /// WebSocket upgrade goes through.
    async fn call(&self, who: &Principal, req: Request) -> Response;
}

/// The console.
pub struct Console {
    backend: Arc<dyn Backend>,
    env: minijinja::Environment<'static>,
    /// Where it is mounted: `""` for `/`, else a path like `/console`.
    base: String,
    /// The server speaks TLS itself: the cookie is `__Host-` and `Secure`.
    pub(crate) secure: bool,
}

/// The hash a session id is stored under.
fn hash(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored hash of the session a request's cookie names, if it names one (only the name
/// this server sets: over TLS a plain `sprites_session` is someone else's). The MCP consent
/// page uses it to find a signed-in browser.
pub fn session_hash(headers: &HeaderMap, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name && !val.is_empty() && val.len() <= 100 {
                    return Some(hash(val));
                }
            }
        }
    }
    None
}

/// An API answer a page could not use, as one line for the person.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

/// Marks a response as a console page, so the API's JSON error rewriting leaves it alone (an
/// extension: only this process can set one).
#[derive(Debug, Clone, Copy)]
pub struct Page;

/// Headers every console answer carries.
fn harden(mut resp: Response, nonce: Option<&str>) -> Response {
    resp.extensions_mut().insert(Page);
    let h = resp.headers_mut();
    let style = match nonce {
        Some(n) => format!("'nonce-{n}'"),
        None => "'self'".to_string(),
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src {style}; img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Whether the browser says this request was started by another site (`Sec-Fetch-Site`), or
/// its `Origin` is not this server's.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(v) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if v != "same-origin" && v != "none" {
            return true;
        }
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => {
            let o = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            o != host
        }
        // No Origin: not a browser's cross-site request (browsers send it on POST and
        // WebSocket); the CSRF token still has to match.
        _ => false,
    }
}

impl Console {
    /// A console mounted at `base` (`/` or a path such as `/console`).
    pub fn new(backend: Arc<dyn Backend>, base: &str, secure: bool) -> Self {
        let base = base.trim_end_matches('/').to_string();
        Console {
            backend,
            env: pages::environment(),
            base,
            secure,
        }
    }

    /// Its routes, at its base path.
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        let r = Router::new()
            .route("/signin", get(pages::signin_page).post(pages::signin))
            .route("/signout", post(pages::signout))
            .route("/", get(pages::sprites))
            .route("/sprites", post(pages::create_sprite))
            .route("/sprites/{name}", get(pages::sprite))
            .route("/sprites/{name}/settings", post(pages::sprite_settings))
            .route("/sprites/{name}/destroy", post(pages::destroy_sprite))
            .route("/sprites/{name}/sleep", post(pages::sleep_sprite))
            .route("/sprites/{name}/policy", post(pages::network_policy))
            .route("/sprites/{name}/checkpoint", post(pages::create_checkpoint))
            .route(
                "/sprites/{name}/checkpoints/{id}/restore",
                post(pages::restore_checkpoint),
            )
            .route(
                "/sprites/{name}/checkpoints/{id}/delete",
                post(pages::delete_checkpoint),
            )
            .route("/sprites/{name}/terminal", get(pages::terminal))
            .route(
                "/sprites/{name}/services/{svc}/logs",
                get(pages::service_logs),
            )
            .route("/tokens", get(pages::tokens).post(pages::create_token))
            .route("/tokens/{id}/revoke", post(pages::revoke_token))
            .route(
                "/connectors",
                get(pages::connectors).post(pages::add_connector),
            )
            .route("/connectors/{id}", get(pages::connector))
            .route("/connectors/{id}/policy", post(pages::connector_policy))
            .route("/connectors/{id}/delete", post(pages::delete_connector))
            .route("/connectors/{id}/playground", post(pages::playground))
            .route("/grants", get(pages::grants))
            .route("/grants/{id}/revoke", post(pages::revoke_grant))
            .route("/static/{file}", get(pages::asset))
            .route("/api/v1/{*rest}", any(passthrough))
            .with_state(self.clone());
        if self.base.is_empty() {
            r
        } else {
            // A nested "/" answers only `{base}`; the pages link to `{base}/`.
            let base = self.base.clone();
            let home = Router::new()
                .route(&format!("{base}/"), get(pages::sprites))
                .with_state(self.clone());
            Router::new().nest(&base, r).merge(home)
        }
    }

    /// A path under the console.
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The signed-in session of a request.
    pub(crate) async fn session_of(&self, headers: &HeaderMap) -> Option<SessionRow> {
        let h = session_hash(headers, self.secure)?;
        self.backend.session(&h).await
    }

    /// A cookie header that sets (or, with `None`, clears) the session.
    pub(crate) fn session_cookie(&self, id: Option<&str>) -> String {
        // A `__Host-` cookie must have `Path=/`.
        let path = if self.base.is_empty() || self.secure {
            "/"
        } else {
            &self.base
        };
        let secure = if self.secure { "; Secure" } else { "" };
        let name = cookie_name(self.secure);
        match id {
            Some(id) => format!(
                "{name}={id}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_TTL_MS / 1000
            ),
            None => {
                format!("{name}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
            }
        }
    }

    /// Calls the API as the session and reads the whole answer.
    pub(crate) async fn api(
        &self,
        who: &Principal,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ApiFailure> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("/v1{path}"))
            .header(header::HOST, "console.internal");
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let req = b.body(body).map_err(|e| ApiFailure {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
        })?;
        let resp = self.backend.call(who, req).await;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_API_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| ApiFailure {
                status: StatusCode::BAD_GATEWAY,
                message: format!("reading the answer: {e}"),
            })?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(ApiFailure { status, message });
        }
        Ok(bytes)
    }

    /// [`Self::api`] for a JSON answer.
    pub(crate) async fn api_json(
        &self,
        who: &Principal,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiFailure> {
        let b = self.api(who, method, path, body).await?;
        if b.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&b).map_err(|e| ApiFailure {
            status: StatusCode::BAD_GATEWAY,
            message: format!("the API answered something that is not JSON: {e}"),
        })
    }
}

/// Parses a form body and checks its CSRF field against the session's.
pub(crate) fn checked_form(
    s: &SessionRow,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, Response> {
    if cross_site(headers) {
        return Err(forbidden("cross-site request refused"));
    }
    let f = form_pairs(body);
    let given = f.get("_csrf").map(String::as_str).unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        s.csrf.as_bytes(),
    )) {
        return Err(forbidden(
            "this form was not made for your session (CSRF check failed): reload the page",
        ));
    }
    Ok(f)
}

/// `application/x-www-form-urlencoded` pairs (the last of a repeated name wins; a body that
/// is not a form is no fields).
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

pub(crate) fn forbidden(msg: &str) -> Response {
    harden(
        (StatusCode::FORBIDDEN, msg.to_string()).into_response(),
        None,
    )
}

/// Which API calls the pages' scripts may make with the session cookie: the live sprite list,
/// exec sockets (the terminal), checkpoint progress streams, a connector's authorized sprites.
/// Everything else goes through a form handler.
fn passthrough_allowed(method: &Method, rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        (method.as_str(), parts.as_slice()),
        ("GET", ["sprites"])
            | ("GET", ["sprites", _, "exec"])
            | ("GET", ["sprites", _, "exec", _])
            | ("POST", ["sprites", _, "checkpoint"])
            | ("POST", ["sprites", _, "checkpoints", _, "restore"])
            | ("GET", ["oauth", "connections", _, "sprites"])
    )
}

/// `/api/v1/...`: the allowed API calls, with the session instead of a bearer token.
async fn passthrough(State(c): State<Arc<Console>>, mut req: Request) -> Response {
    let Some(s) = c.session_of(req.headers()).await else {
        return harden(
            (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            None,
        );
    };
    let path = req.uri().path().to_string();
    let rest = path
        .strip_prefix(&c.at("/api/v1/"))
        .unwrap_or("")
        .to_string();
    if !passthrough_allowed(req.method(), &rest) {
        return forbidden("the console does not make this call");
    }
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if cross_site(req.headers()) {
        return forbidden("cross-site request refused");
    }
    if req.method() != Method::GET || upgrade {
        // An upgrade's Origin was checked above; a fetch must also carry the CSRF token.
        let given = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_ok = upgrade && req.headers().contains_key(header::ORIGIN);
        let token_ok: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), s.csrf.as_bytes()).into();
        if !(token_ok || origin_ok) {
            return forbidden("missing or wrong X-CSRF-Token");
        }
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri = format!("/v1/{rest}{query}");
    match uri.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return forbidden("bad path"),
    }
    // The API reads neither, and nothing of the browser's goes on towards a sprite.
    req.headers_mut().remove(header::COOKIE);
    req.headers_mut().remove(header::AUTHORIZATION);
    c.backend.call(&s.principal, req).await
}

/// Forms the pages post: `None` for a missing field.
pub(crate) fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_name_the_session() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; sprites_session=xyz; c=d".parse().unwrap(),
        );
        assert_eq!(session_hash(&h, false), Some(hash("xyz")));
        assert_eq!(
            session_hash(&h, true),
            None,
            "over TLS only the __Host- name counts"
        );
        h.insert(
            header::COOKIE,
            "sprites_session=planted; __Host-sprites_session=mine"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_hash(&h, true), Some(hash("mine")));
        h.insert(header::COOKIE, "sprites_session=".parse().unwrap());
        assert_eq!(session_hash(&h, false), None);
        h.insert(header::COOKIE, "xsprites_session=abc".parse().unwrap());
        assert_eq!(session_hash(&h, false), None);
    }

    #[test]
    fn cross_site_requests_are_seen() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7780".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:7780".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:7780".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            cross_site(&h),
            "a sprite URL is same-site, and must not post here"
        );
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h));
    }

    #[test]
    fn the_passthrough_allows_only_what_the_pages_call() {
        assert!(passthrough_allowed(&Method::GET, "sprites"));
        assert!(passthrough_allowed(&Method::GET, "sprites/a/exec/12"));
        assert!(passthrough_allowed(&Method::POST, "sprites/a/checkpoint"));
        assert!(!passthrough_allowed(&Method::DELETE, "sprites/a"));
        assert!(!passthrough_allowed(&Method::POST, "sprites"));
        assert!(!passthrough_allowed(
            &Method::POST,
            "organizations/x/tokens"
        ));
        assert!(!passthrough_allowed(&Method::GET, "sprites/a/fs/read"));
    }

    #[test]
    fn forms_decode() {
        let f = form_pairs(b"a=1+2&b=%2Fx%26&c");
        assert_eq!(f["a"], "1 2");
        assert_eq!(f["b"], "/x&");
        assert_eq!(f["c"], "");
    }
}
