//! The OAuth 2.1 authorization server MCP clients sign in with: metadata (RFC 9728, RFC
//! 8414), dynamic client registration (RFC 7591), the authorization endpoint with its consent
//! page (PKCE S256 required, RFC 8707 `resource` checked, `iss` in the answer per RFC 9207),
//! the token endpoint (codes single use, refresh tokens rotated and a reused one revoking the
//! whole grant) and revocation (RFC 7009). Tokens are opaque and stored hashed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{hash, now_ms, random, ClientRow, CodeRow, GrantRow, Mcp, TokenRow};

/// Access tokens live an hour; refresh tokens 30 days; codes 5 minutes.
const ACCESS_TTL_MS: i64 = 3_600_000;
const REFRESH_TTL_MS: i64 = 30 * 86_400_000;
const CODE_TTL_MS: i64 = 300_000;
/// Tokens made for clients without OAuth (`POST /v1/mcp/grants`) live a year.
const DIRECT_TTL_MS: i64 = 365 * 86_400_000;
/// The scope every token has.
pub const SCOPE: &str = "sprites";

pub(crate) fn router<S: Clone + Send + Sync + 'static>(mcp: Arc<Mcp>) -> Router<S> {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server),
        )
        .route("/oauth/register", post(register))
        .route(
            "/oauth/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .with_state(mcp)
}

async fn protected_resource(State(m): State<Arc<Mcp>>) -> Json<Value> {
    Json(json!({
        "resource": m.resource(),
        "authorization_servers": [m.issuer()],
        "scopes_supported": [SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": "Sprites",
    }))
}

async fn authorization_server(State(m): State<Arc<Mcp>>) -> Json<Value> {
    let i = m.issuer();
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth/authorize"),
        "token_endpoint": format!("{i}/oauth/token"),
        "registration_endpoint": format!("{i}/oauth/register"),
        "revocation_endpoint": format!("{i}/oauth/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": [SCOPE],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
    }))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Whether `uri` may be a redirect URI: HTTPS, or HTTP on a loopback host (RFC 8252).
fn redirect_allowed(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    if u.fragment().is_some() || uri.len() > 2000 {
        return false;
    }
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => is_loopback(&u),
        _ => false,
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Whether `given` is one of `registered`: exactly, or a loopback URI differing only in its
/// port (native apps pick a free port at run time).
pub fn redirect_matches(registered: &[String], given: &str) -> bool {
    if registered.iter().any(|r| r == given) {
        return true;
    }
    let Ok(g) = url::Url::parse(given) else {
        return false;
    };
    if !is_loopback(&g) || g.scheme() != "http" {
        return false;
    }
    registered.iter().any(|r| {
        url::Url::parse(r).is_ok_and(|r| {
            is_loopback(&r)
                && r.scheme() == g.scheme()
                && r.host() == g.host()
                && r.path() == g.path()
                && r.query() == g.query()
        })
    })
}

async fn register(State(m): State<Arc<Mcp>>, body: axum::body::Bytes) -> Response {
    if body.len() > 16 * 1024 {
        return oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_client_metadata",
            "the registration is larger than 16 KiB",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "the body is not JSON",
        );
    };
    let uris: Vec<String> = v["redirect_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if uris.is_empty() || uris.len() > 10 {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "give 1 to 10 redirect_uris",
        );
    }
    if let Some(bad) = uris.iter().find(|u| !redirect_allowed(u)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            &format!("{bad:?} is neither HTTPS nor a loopback HTTP URI"),
        );
    }
    if let Some(method) = v["token_endpoint_auth_method"].as_str() {
        if method != "none" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "only public clients (token_endpoint_auth_method none) are supported",
            );
        }
    }
    let name: String = v["client_name"]
        .as_str()
        .unwrap_or("MCP client")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let c = ClientRow {
        id: random("mcpc_", 16),
        name,
        redirect_uris: uris,
        created_at: now_ms(),
    };
    if let Err(e) = m.auth.put_client(&c).await {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e);
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "client_id": c.id,
            "client_name": c.name,
            "redirect_uris": c.redirect_uris,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_id_issued_at": c.created_at / 1000,
        })),
    )
        .into_response()
}

/// The request parameters of an authorization, carried through the consent form.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuthRequest {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl Mcp {
    /// HMAC-like binding of the form to its request and an expiry, so a form can only be
    /// posted for the request it was shown for, within 10 minutes.
    fn form_mac(&self, r: &AuthRequest, expires: i64) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.form_key);
        for part in [
            &r.client_id,
            &r.redirect_uri,
            &r.code_challenge,
            r.state.as_deref().unwrap_or(""),
            &expires.to_string(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks a request up to its redirect URI; errors are shown to the person (never sent to
    /// an unverified redirect).
    async fn check_client(&self, r: &AuthRequest) -> Result<ClientRow, String> {
        let c = if r.client_id.starts_with("https://") || r.client_id.starts_with("http://") {
            self.metadata_document(&r.client_id).await?
        } else {
            self.auth
                .client(&r.client_id)
                .await
                .ok_or_else(|| "unknown client_id: the client must register first".to_string())?
        };
        if !redirect_matches(&c.redirect_uris, &r.redirect_uri) {
            return Err("redirect_uri is not one this client registered".into());
        }
        Ok(c)
    }

    /// A Client ID Metadata Document: the `client_id` is an HTTPS URL whose JSON names the
    /// client and its redirect URIs. Fetched with an SSRF guard (public addresses only, no
    /// redirects, 5 s, 64 KiB) and kept for 5 minutes.
    async fn metadata_document(&self, url: &str) -> Result<ClientRow, String> {
        const MAX: usize = 64 * 1024;
        if let Some((at, c)) = self
            .documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            if at.elapsed() < std::time::Duration::from_secs(300) {
                return Ok(c.clone());
            }
        }
        let u = url::Url::parse(url).map_err(|e| format!("client_id is not a URL: {e}"))?;
        let https = u.scheme() == "https";
        if !(https || self.allow_private_metadata)
            || u.path() == "/"
            || u.fragment().is_some()
            || url.len() > 2000
        {
            return Err("a URL client_id must be an HTTPS URL with a path".into());
        }
        if !sprites_gateway::forward::literal_host_allowed(&u, self.allow_private_metadata) {
            return Err("the client_id's host is not a public address".into());
        }
        let failed =
            |e: String| format!("the client's metadata document could not be fetched: {e}");
        let mut resp = self
            .fetcher
            .get(u.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(failed(format!("it answered {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX {
                return Err(failed("it is larger than 64 KiB".into()));
            }
        }
        let v: Value =
            serde_json::from_slice(&body).map_err(|_| failed("it is not JSON".into()))?;
        if v["client_id"].as_str() != Some(url) {
            return Err("the metadata document's client_id is not its own URL".into());
        }
        let uris: Vec<String> = v["redirect_uris"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if uris.is_empty() || uris.len() > 10 || uris.iter().any(|x| !redirect_allowed(x)) {
            return Err(
                "the metadata document's redirect_uris must be 1 to 10 HTTPS or loopback URIs"
                    .into(),
            );
        }
        let c = ClientRow {
            id: url.to_string(),
            name: v["client_name"]
                .as_str()
                .unwrap_or(u.host_str().unwrap_or("MCP client"))
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect(),
            redirect_uris: uris,
            created_at: now_ms(),
        };
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), (std::time::Instant::now(), c.clone()));
        Ok(c)
    }

    /// The rest of the checks; errors go back to the client's redirect URI.
    fn check_request(&self, r: &AuthRequest) -> Result<(), (&'static str, String)> {
        if r.response_type != "code" {
            return Err((
                "unsupported_response_type",
                "response_type must be code".into(),
            ));
        }
        if r.code_challenge_method != "S256"
            || r.code_challenge.len() < 43
            || r.code_challenge.len() > 128
        {
            return Err((
                "invalid_request",
                "PKCE with code_challenge_method S256 is required".into(),
            ));
        }
        if let Some(res) = &r.resource {
            if res.trim_end_matches('/') != self.resource() {
                return Err((
                    "invalid_target",
                    format!("resource must be {}", self.resource()),
                ));
            }
        }
        Ok(())
    }

    fn redirect_with(&self, r: &AuthRequest, params: &[(&str, &str)]) -> Response {
        let mut u = match url::Url::parse(&r.redirect_uri) {
            Ok(u) => u,
            Err(_) => return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response(),
        };
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = &r.state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", &self.issuer());
        }
        (
            StatusCode::FOUND,
            [(header::LOCATION, u.as_str().to_string())],
        )
            .into_response()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        ],
        Html(format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{t}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:2em auto;padding:0 1em;line-height:1.5}}fieldset{{border:1px solid #ccc;border-radius:6px;margin:1em 0}}label{{display:block;margin:.4em 0}}input[type=text],input[type=password],input[type=number]{{width:100%;padding:.4em;box-sizing:border-box}}button{{padding:.5em 1.2em;margin-right:.5em}}.muted{{color:#555}}</style></head>
<body><h1>{t}</h1>{body}</body></html>"#,
            t = esc(title)
        )),
    )
        .into_response()
}

/// Whether the browser says another site started this request (`Sec-Fetch-Site`).
fn from_other_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
}

async fn authorize_page(
    State(m): State<Arc<Mcp>>,
    headers: HeaderMap,
    Query(r): Query<AuthRequest>,
    Query(extra): Query<HashMap<String, String>>,
) -> Response {
    let client = match m.check_client(&r).await {
        Ok(c) => c,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Cannot authorize",
                &format!("<p>{}</p>", esc(&e)),
            )
        }
    };
    if let Err((code, msg)) = m.check_request(&r) {
        return m.redirect_with(&r, &[("error", code), ("error_description", &msg)]);
    }
    let browser = m.auth.org_of_browser(&headers).await;
    // A client sends the person here from its own site, and a SameSite=Strict session cookie
    // does not come along on that navigation. Load the page once more from this page itself
    // (a same-site navigation), which brings the cookie of a signed-in browser.
    if browser.is_none() && from_other_site(&headers) && !extra.contains_key("_same_site") {
        let mut u = url::Url::parse("http://x/oauth/authorize").expect("a valid URL");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in &extra {
                q.append_pair(k, v);
            }
            q.append_pair("_same_site", "1");
        }
        let target = format!("/oauth/authorize?{}", u.query().unwrap_or(""));
        return page(
            StatusCode::OK,
            "Authorize an MCP client",
            &format!(
                r#"<meta http-equiv="refresh" content="0;url={t}"><p><a href="{t}">Continue</a></p>"#,
                t = esc(&target)
            ),
        );
    }
    let expires = now_ms() + 600_000;
    let mac = m.form_mac(&r, expires);
    let hidden: String = [
        ("response_type", r.response_type.as_str()),
        ("client_id", &r.client_id),
        ("redirect_uri", &r.redirect_uri),
        ("code_challenge", &r.code_challenge),
        ("code_challenge_method", &r.code_challenge_method),
        ("state", r.state.as_deref().unwrap_or("")),
        ("resource", r.resource.as_deref().unwrap_or("")),
        ("scope", r.scope.as_deref().unwrap_or("")),
        ("expires", &expires.to_string()),
        ("csrf", &mac),
    ]
    .iter()
    .map(|(k, v)| format!(r#"<input type="hidden" name="{k}" value="{}">"#, esc(v)))
    .collect();
    let body = format!(
        r#"<p><strong>{name}</strong> wants to use Sprites on your behalf.</p>
<p class="muted">It will be sent back to <code>{redirect}</code>.</p>
<form method="post" action="/oauth/authorize">{hidden}
{signin}
<fieldset><legend>Access</legend>
<label><input type="radio" name="mode" value="restricted" checked> Restricted: only sprites whose names start with the prefix, at most the number below</label>
<label for="prefix">Name prefix</label><input id="prefix" name="prefix" type="text" value="mcp-">
<label for="max_sprites">Most sprites</label><input id="max_sprites" name="max_sprites" type="number" min="1" max="1000" value="5">
<label><input type="radio" name="mode" value="full"> Full access to every sprite of the org</label>
</fieldset>
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>"#,
        name = esc(&client.name),
        redirect = esc(&r.redirect_uri),
        signin = match &browser {
            Some((_, slug)) => format!(
                r#"<p id="signed-in">Signed in to org <strong>{}</strong> (console session).</p>"#,
                esc(slug)
            ),
            None => r#"<fieldset><legend>Sign in</legend>
<label for="token">Org API token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
</fieldset>"#
                .to_string(),
        },
    );
    page(StatusCode::OK, "Authorize an MCP client", &body)
}

async fn authorize_submit(
    State(m): State<Arc<Mcp>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let opt = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
    let r = AuthRequest {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        state: opt("state"),
        resource: opt("resource"),
        scope: opt("scope"),
    };
    let client = match m.check_client(&r).await {
        Ok(c) => c,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Cannot authorize",
                &format!("<p>{}</p>", esc(&e)),
            )
        }
    };
    let expires: i64 = get("expires").parse().unwrap_or(0);
    let mac = m.form_mac(&r, expires);
    let ok: bool = subtle::ConstantTimeEq::ct_eq(mac.as_bytes(), get("csrf").as_bytes()).into();
    if !ok || expires < now_ms() {
        return page(StatusCode::BAD_REQUEST, "Cannot authorize", "<p>This form has expired or was not made by this server. Go back to the client and start again.</p>");
    }
    if let Err((code, msg)) = m.check_request(&r) {
        return m.redirect_with(&r, &[("error", code), ("error_description", &msg)]);
    }
    if get("decision") != "approve" {
        return m.redirect_with(
            &r,
            &[
                ("error", "access_denied"),
                ("error_description", "the person denied access"),
            ],
        );
    }
    // A console session signs the person in, unless another site posted this form (its
    // cookie is SameSite=Strict, so it would not come along anyway).
    let browser = if from_other_site(&headers) {
        None
    } else {
        m.auth.org_of_browser(&headers).await.map(|(id, _)| id)
    };
    let org = match browser {
        Some(id) => Some(id),
        None => m.auth.org_of_token(get("token").trim()).await,
    };
    let Some(org_id) = org else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "<p>That org token is not valid. Go back and try again.</p>",
        );
    };
    let mode = get("mode");
    let (mode, prefix, max) = match mode.as_str() {
        "full" => ("full", None, None),
        _ => {
            let prefix = get("prefix");
            let max: u32 = get("max_sprites").parse().unwrap_or(0);
            if sprites_api::names::validate_sprite_name(&format!("{prefix}x")).is_err()
                || prefix.is_empty()
            {
                return page(StatusCode::BAD_REQUEST, "Cannot authorize", "<p>The prefix must be the start of a valid sprite name (lowercase letters, digits, dashes).</p>");
            }
            if !(1..=1000).contains(&max) {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Cannot authorize",
                    "<p>Most sprites must be between 1 and 1000.</p>",
                );
            }
            ("restricted", Some(prefix), Some(max))
        }
    };
    let g = GrantRow {
        id: random("mcpg_", 12),
        org_id,
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        mode: mode.into(),
        prefix,
        max_sprites: max,
        created_at: now_ms(),
        last_used_at: None,
    };
    if let Err(e) = m.auth.put_grant(&g).await {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot authorize",
            &esc(&e),
        );
    }
    let code = random("mcpcode_", 24);
    let row = CodeRow {
        client_id: client.id,
        redirect_uri: r.redirect_uri.clone(),
        challenge: r.code_challenge.clone(),
        grant_id: g.id,
        expires_at: now_ms() + CODE_TTL_MS,
    };
    if let Err(e) = m.auth.put_code(&hash(&code), &row).await {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot authorize",
            &esc(&e),
        );
    }
    m.redirect_with(&r, &[("code", &code)])
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    use base64::Engine;
    use sha2::Digest;
    if !(43..=128).contains(&verifier.len()) {
        return false;
    }
    let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    subtle::ConstantTimeEq::ct_eq(want.as_bytes(), challenge.as_bytes()).into()
}

impl Mcp {
    async fn issue(&self, grant_id: &str, refresh: bool, access_ttl: i64) -> Result<Value, String> {
        let access = random("mcp_at_", 32);
        self.auth
            .put_token(
                &hash(&access),
                &TokenRow {
                    grant_id: grant_id.into(),
                    kind: "access".into(),
                    expires_at: now_ms() + access_ttl,
                    used: false,
                },
            )
            .await?;
        let mut out = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": access_ttl / 1000,
            "scope": SCOPE,
        });
        if refresh {
            let r = random("mcp_rt_", 32);
            self.auth
                .put_token(
                    &hash(&r),
                    &TokenRow {
                        grant_id: grant_id.into(),
                        kind: "refresh".into(),
                        expires_at: now_ms() + REFRESH_TTL_MS,
                        used: false,
                    },
                )
                .await?;
            out["refresh_token"] = Value::String(r);
        }
        Ok(out)
    }

    /// A token endpoint answer: a new access and refresh token pair for `grant_id`.
    async fn token_response(&self, grant_id: &str) -> Response {
        match self.issue(grant_id, true, ACCESS_TTL_MS).await {
            Ok(v) => (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(v),
            )
                .into_response(),
            Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e),
        }
    }

    /// The access a bearer token on `/mcp` gives: an MCP access token, or an org API token
    /// (full access, for clients that cannot do OAuth).
    pub async fn access_of(&self, token: &str) -> Option<crate::Access> {
        if token.starts_with("mcp_at_") {
            let t = self.auth.token(&hash(token)).await?;
            if t.kind != "access" || t.expires_at < now_ms() {
                return None;
            }
            let g = self.auth.grant(&t.grant_id).await?;
            self.auth.touch_grant(&g.id).await;
            return Some(crate::Access {
                org_id: g.org_id.clone(),
                grant_id: Some(g.id.clone()),
                restriction: g.restriction(),
            });
        }
        let org_id = self.auth.org_of_token(token).await?;
        Some(crate::Access {
            org_id,
            grant_id: None,
            restriction: None,
        })
    }

    /// A grant and a long-lived access token for a client without OAuth (shown once).
    pub async fn direct_grant(
        &self,
        org_id: &str,
        restriction: Option<crate::Restriction>,
    ) -> Result<(GrantRow, String), String> {
        let g = GrantRow {
            id: random("mcpg_", 12),
            org_id: org_id.into(),
            client_id: "direct".into(),
            client_name: "token (sprite mcp token)".into(),
            mode: if restriction.is_some() {
                "restricted"
            } else {
                "full"
            }
            .into(),
            prefix: restriction.as_ref().map(|r| r.prefix.clone()),
            max_sprites: restriction.as_ref().map(|r| r.max_sprites),
            created_at: now_ms(),
            last_used_at: None,
        };
        self.auth.put_grant(&g).await?;
        let t = self.issue(&g.id, false, DIRECT_TTL_MS).await?;
        Ok((
            g,
            t["access_token"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// The org's grants.
    pub async fn grants(&self, org_id: &str) -> Vec<GrantRow> {
        self.auth.grants(org_id).await
    }

    /// Revokes a grant of the org; false when there is none.
    pub async fn revoke(&self, org_id: &str, id: &str) -> bool {
        self.auth.revoke_grant(Some(org_id), id).await
    }
}

async fn token(State(m): State<Arc<Mcp>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form || body.len() > 16 * 1024 {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send a form (application/x-www-form-urlencoded) of at most 16 KiB",
        );
    }
    let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if let Some(res) = f.get("resource") {
        if res.trim_end_matches('/') != m.resource() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                &format!("resource must be {}", m.resource()),
            );
        }
    }
    match get("grant_type") {
        "authorization_code" => {
            let Some(c) = m.auth.take_code(&hash(get("code"))).await else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the code is unknown, used or expired",
                );
            };
            if c.expires_at < now_ms()
                || c.client_id != get("client_id")
                || c.redirect_uri != get("redirect_uri")
            {
                m.auth.revoke_grant(None, &c.grant_id).await;
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the code does not match this client, redirect_uri or time",
                );
            }
            if !pkce_ok(get("code_verifier"), &c.challenge) {
                m.auth.revoke_grant(None, &c.grant_id).await;
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the PKCE code_verifier does not match",
                );
            }
            m.token_response(&c.grant_id).await
        }
        "refresh_token" => {
            let h = hash(get("refresh_token"));
            let Some(t) = m.auth.use_refresh(&h).await else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the refresh token is unknown",
                );
            };
            if t.used {
                // A refresh token used twice was copied: the whole grant goes.
                m.auth.revoke_grant(None, &t.grant_id).await;
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the refresh token was already used; the grant is revoked",
                );
            }
            if t.kind != "refresh"
                || t.expires_at < now_ms()
                || m.auth.grant(&t.grant_id).await.is_none()
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the refresh token expired or its grant was revoked",
                );
            }
            m.token_response(&t.grant_id).await
        }
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant_type {other:?} is not supported"),
        ),
    }
}

async fn revoke(State(m): State<Arc<Mcp>>, Form(f): Form<HashMap<String, String>>) -> Response {
    let t = f.get("token").map(String::as_str).unwrap_or("");
    let h = hash(t);
    if let Some(row) = m.auth.token(&h).await {
        if row.kind == "refresh" {
            m.auth.revoke_grant(None, &row.grant_id).await;
        } else {
            m.auth.delete_token(&h).await;
        }
    }
    // RFC 7009: 200 whether or not the token was known.
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_match_exactly_or_by_loopback_port() {
        let reg = vec![
            "http://127.0.0.1:3000/cb".to_string(),
            "https://app.example/cb".to_string(),
        ];
        assert!(redirect_matches(&reg, "http://127.0.0.1:3000/cb"));
        assert!(redirect_matches(&reg, "http://127.0.0.1:49152/cb"));
        assert!(!redirect_matches(&reg, "http://127.0.0.1:49152/other"));
        assert!(!redirect_matches(&reg, "https://app.example/cb2"));
        assert!(!redirect_matches(&reg, "https://app.example:444/cb"));
        assert!(!redirect_matches(&reg, "http://localhost:3000/cb"));
        assert!(redirect_allowed("http://localhost:1/x") && redirect_allowed("https://a.b/c"));
        assert!(
            !redirect_allowed("http://example.com/cb") && !redirect_allowed("javascript:alert(1)")
        );
    }

    #[test]
    fn pkce_needs_the_matching_verifier() {
        use base64::Engine;
        use sha2::Digest;
        let v = "a".repeat(43);
        let c = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(v.as_bytes()));
        assert!(pkce_ok(&v, &c));
        assert!(!pkce_ok(&"b".repeat(43), &c));
        assert!(!pkce_ok("short", &c));
    }
}
