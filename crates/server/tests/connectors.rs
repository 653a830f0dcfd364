//! Connectors and the gateway, against a real upstream of the tests' own (it records what it
//! received, streams server-sent events, serves and swallows large bodies, and is an OAuth
//! provider with refresh-token rotation) and real sprites calling through the gateway.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Form, Json, Router};
use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "sk-test-0123456789abcdef-SECRET";

/// What the upstream saw and how it behaves.
#[derive(Default)]
struct Up {
    /// (method, path, query, headers) of each call.
    calls: Vec<(String, String, String, HashMap<String, String>)>,
    /// OAuth: code → PKCE challenge; valid access tokens; valid refresh tokens.
    codes: HashMap<String, String>,
    access: Vec<String>,
    refresh: Vec<String>,
    refreshes: Vec<String>,
    /// Every token ever handed out.
    issued: Vec<String>,
    next: u32,
    expires_in: u64,
}

type Shared = Arc<Mutex<Up>>;

async fn record(State(up): State<Shared>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let key_seen = headers.values().any(|v| v.contains(KEY)) || parts.uri.to_string().contains(KEY);
    let names: Vec<String> = headers.keys().cloned().collect();
    up.lock().unwrap().calls.push((
        parts.method.to_string(),
        parts.uri.path().to_string(),
        parts.uri.query().unwrap_or("").to_string(),
        headers,
    ));
    // Never echoes a credential: only whether it arrived.
    Json(json!({
        "method": parts.method.to_string(),
        "path": parts.uri.path(),
        "key_seen": key_seen,
        "headers": names,
        "body_bytes": bytes.len(),
    }))
    .into_response()
}

async fn sse() -> Response {
    let s = futures::stream::unfold(0u32, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        Some((
            Ok::<_, std::io::Error>(format!("data: event {i}\n\n")),
            i + 1,
        ))
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(s),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Big {
    mib: usize,
}

async fn big(Query(q): Query<Big>) -> Response {
    let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let s = futures::stream::iter((0..q.mib).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    axum::body::Body::from_stream(s).into_response()
}

async fn upload(body: axum::body::Body) -> Response {
    use futures::StreamExt;
    let mut n = 0usize;
    let mut s = body.into_data_stream();
    while let Some(c) = s.next().await {
        n += c.map(|c| c.len()).unwrap_or(0);
    }
    Json(json!({"received": n})).into_response()
}

#[derive(serde::Deserialize)]
struct Authorize {
    redirect_uri: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
}

async fn oauth_authorize(State(up): State<Shared>, Query(q): Query<Authorize>) -> Response {
    assert_eq!(q.code_challenge_method, "S256");
    let mut u = up.lock().unwrap();
    u.next += 1;
    let code = format!("code{}", u.next);
    u.codes.insert(code.clone(), q.code_challenge);
    let sep = if q.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    (
        StatusCode::FOUND,
        [(
            "location",
            format!("{}{sep}code={code}&state={}", q.redirect_uri, q.state),
        )],
    )
        .into_response()
}

async fn oauth_token(State(up): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    use base64::Engine;
    use sha2::Digest;
    let mut u = up.lock().unwrap();
    let grant = |u: &mut Up| {
        u.next += 1;
        let (a, r) = (
            format!("gho_access_{}_q7Zt9Lm2", u.next),
            format!("ghr_refresh_{}_q7Zt9Lm2", u.next),
        );
        u.access.push(a.clone());
        u.refresh.push(r.clone());
        u.issued.extend([a.clone(), r.clone()]);
        Json(json!({"access_token": a, "refresh_token": r, "token_type": "bearer", "expires_in": u.expires_in, "scope": "repo,read:user"}))
            .into_response()
    };
    let refused = (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant"})),
    )
        .into_response();
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(challenge) = u
                .codes
                .remove(f.get("code").map(String::as_str).unwrap_or(""))
            else {
                return refused;
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if want != challenge {
                return refused;
            }
            grant(&mut u)
        }
        Some("refresh_token") => {
            let r = f.get("refresh_token").cloned().unwrap_or_default();
            u.refreshes.push(r.clone());
            // Rotation: a refresh token works once.
            let Some(i) = u.refresh.iter().position(|x| *x == r) else {
                return refused;
            };
            u.refresh.remove(i);
            grant(&mut u)
        }
        _ => refused,
    }
}

async fn api_user(State(up): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let tok = auth.strip_prefix("Bearer ").unwrap_or("");
    if up.lock().unwrap().access.iter().any(|a| a == tok) {
        Json(json!({"login": "octo", "token_ok": true})).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response()
    }
}

/// Starts the upstream on loopback; its base URL.
async fn upstream() -> (String, Shared) {
    let up: Shared = Arc::new(Mutex::new(Up {
        expires_in: 3600,
        ..Default::default()
    }));
    let app = Router::new()
        .route("/sse", get(sse))
        .route("/big", get(big))
        .route("/upload", any(upload))
        .route(
            "/moved",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [("location", "http://127.0.0.1:9/elsewhere")],
                )
            }),
        )
        .route("/oauth/authorize", get(oauth_authorize))
        .route("/oauth/token", post(oauth_token))
        .route("/api/user", get(api_user))
        .fallback(any(record))
        .with_state(up.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), up)
}

fn server(up: &str, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--gateway-allow-private".to_string(),
        "--provider".into(),
        format!("anthropic.base_url={up}"),
        "--provider".into(),
        format!("openai.base_url={up}/openai"),
        "--provider".into(),
        format!("github.base_url={up}/api"),
        "--provider".into(),
        format!("github.authorize_url={up}/oauth/authorize"),
        "--provider".into(),
        format!("github.token_url={up}/oauth/token"),
        "--provider".into(),
        "github.client_id=test-client".into(),
        "--provider".into(),
        "github.client_secret=test-secret".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_with(&refs).unwrap()
}

/// Runs `script` in sprite `name`: stdout.
async fn sh(api: &Api, name: &str, script: &str) -> String {
    let o = api.sh(name, script).await;
    assert_eq!(o.code, Some(0), "{script}: {o:?}");
    o.stdout
}

/// A gateway call from inside `name`: (status, body).
async fn call(api: &Api, name: &str, args: &str) -> (u16, Value) {
    let out = sh(
        api,
        name,
        &format!("curl -s -o /tmp/out -w '%{{http_code}}' {args}; echo; cat /tmp/out"),
    )
    .await;
    let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (code.trim().parse().unwrap_or(0), v)
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

#[tokio::test]
async fn sprites_call_providers_through_the_gateway_without_ever_holding_the_key() {
    let (up, seen) = upstream().await;
    let mut s = server(&up, &[]);
    let api = Api::new(&s);
    api.create_with(json!({"name": "agent", "labels": ["ai"]}))
        .await;
    api.create("other").await;

    // Stored once; the answer never carries it.
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/connections/api_key",
            Some(json!({"provider": "anthropic", "api_key": KEY, "access_policy": {"sprite_labels": ["ai"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains(KEY));
    let c = &v["connection"];
    let id = c["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("conn_"), "{id}");
    assert_eq!(c["connection_type"], "api_key");
    for f in [
        "provider_account_id",
        "scopes",
        "provider_info",
        "user_id",
        "token_expires_at",
        "inserted_at",
        "updated_at",
        "usage_snippet",
        "gateway_base_url",
        "usage",
    ] {
        assert!(c.get(f).is_some(), "missing {f}: {c}");
    }
    assert!(c["gateway_base_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/v1/gateway/anthropic/{id}")));

    // A labelled sprite calls through the gateway; what it sent as identity is dropped.
    assert_eq!(
        sh(&api, "agent", "echo $SPRITES_GATEWAY_URL").await.trim(),
        "http://gateway.sprites.internal"
    );
    let (code, v) = call(&api, "agent", "-H 'Authorization: Bearer mine' -H 'X-Sprite-Id: forged' -H 'Cookie: a=b' -H 'anthropic-version: 2023-06-01' -d '{\"x\":1}' $SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/messages").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["path"], "/v1/messages");
    assert_eq!(v["key_seen"], true);
    assert_eq!(v["body_bytes"], 7);
    {
        let u = seen.lock().unwrap();
        let (_, path, _, h) = u.calls.last().unwrap();
        assert_eq!(path, "/v1/messages");
        assert_eq!(h.get("x-api-key").map(String::as_str), Some(KEY));
        assert!(
            !h.contains_key("authorization")
                && !h.contains_key("x-sprite-id")
                && !h.contains_key("cookie"),
            "{h:?}"
        );
        assert_eq!(
            h.get("anthropic-version").map(String::as_str),
            Some("2023-06-01")
        );
    }
    // The connection id form, and the list.
    let (code, _) = call(
        &api,
        "agent",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/anthropic/{id}/v1/models"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(seen.lock().unwrap().calls.last().unwrap().1, "/v1/models");
    let (code, list) = call(&api, "agent", "$SPRITES_GATEWAY_URL/v1/gateway/list").await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["connections"][0]["id"], id.as_str());
    assert_eq!(list["connections"][0]["provider"], "anthropic");
    let avail: Vec<&str> = list["available"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["provider"].as_str().unwrap())
        .collect();
    assert!(
        avail.contains(&"github") && avail.contains(&"openrouter") && !avail.contains(&"anthropic"),
        "{avail:?}"
    );

    // The key is nowhere in the sprite.
    let found = sh(&api, "agent", &format!("(env; cat /proc/*/environ; grep -rs -- '{KEY}' /etc /home /tmp /.sprite /root /var) 2>/dev/null | grep -c -- '{KEY}' || true")).await;
    assert_eq!(found.trim(), "0");

    // Coding agents find the skill that says how to use the gateway.
    let out = sh(&api, "agent", "for a in claude cursor codex gemini; do f=~/.$a/skills/sprite-api-gateway/SKILL.md; stat -c %U $f; grep -c 'v1/gateway/list' $f; done").await;
    assert_eq!(out, "sprite\n1\n".repeat(4), "{out}");

    // A sprite without the label: refused, as the docs say.
    let (code, v) = call(
        &api,
        "other",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["error"], "forbidden");
    assert_eq!(v["message"], "connection denies all sprites by default");
    let (code, v) = call(
        &api,
        "other",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/anthropic/{id}/v1/models"),
    )
    .await;
    assert_eq!(code, 403, "{v}");

    // Endpoint lists, judged after normalization.
    let (st, v) = api
        .json(
            Method::PATCH,
            &format!("/v1/oauth/connections/{id}"),
            Some(json!({"access_policy": {"sprite_labels": ["ai"], "allowed_endpoints": ["/v1/*"], "blocked_endpoints": ["/v1/admin*"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let calls_before = seen.lock().unwrap().calls.len();
    for path in [
        "/v1/admin/keys",
        "/v1/models/../admin/keys",
        "/v1/models/%2e%2e/admin/keys",
        "/v1//admin/keys",
        "/v1/%61dmin/keys",
        "/v2/models",
    ] {
        let (code, v) = call(
            &api,
            "agent",
            &format!("--path-as-is \"$SPRITES_GATEWAY_URL/v1/gateway/anthropic{path}\""),
        )
        .await;
        assert_eq!(code, 403, "{path}: {v}");
        assert_eq!(v["message"], "endpoint not allowed", "{path}");
    }
    assert_eq!(
        seen.lock().unwrap().calls.len(),
        calls_before,
        "a refused call reached the provider"
    );
    let (code, _) = call(
        &api,
        "agent",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 200);

    // A label taken off the sprite refuses its very next call.
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/sprites/agent",
            Some(json!({"labels": []})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (code, v) = call(
        &api,
        "agent",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 403, "{v}");
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/sprites/agent",
            Some(json!({"labels": ["ai"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = api
        .json(
            Method::GET,
            &format!("/v1/oauth/connections/{id}/sprites"),
            None,
        )
        .await;
    let names: Vec<&str> = v["sprites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent"]);

    // PUT replaces the whole policy (the endpoint lists go).
    let (st, v) = api
        .json(
            Method::PUT,
            &format!("/v1/oauth/connections/{id}"),
            Some(json!({"access_policy": {"sprite_labels": ["ai"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["connection"]["access_policy"],
        json!({"sprite_labels": ["ai"]})
    );

    // A redirect goes back to the caller; the gateway does not follow it with the key.
    let n = seen.lock().unwrap().calls.len();
    let out = sh(&api, "agent", "curl -s -o /dev/null -w '%{http_code} %{redirect_url}' $SPRITES_GATEWAY_URL/v1/gateway/anthropic/moved").await;
    assert_eq!(out, "302 http://127.0.0.1:9/elsewhere");
    assert_eq!(seen.lock().unwrap().calls.len(), n);

    // Server-sent events arrive one by one, not at the end.
    let out = sh(&api, "agent", "curl -sN $SPRITES_GATEWAY_URL/v1/gateway/anthropic/sse | while read -r l; do [ -n \"$l\" ] && echo \"$(date +%s%3N) $l\"; done; true").await;
    let times: Vec<i64> = out
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let raw = sh(
        &api,
        "agent",
        "curl -sN -i $SPRITES_GATEWAY_URL/v1/gateway/anthropic/sse",
    )
    .await;
    assert_eq!(times.len(), 3, "{out} / {raw}");
    assert!(times[2] - times[0] >= 1500, "events were buffered: {out}");

    // Large bodies both ways, in constant memory on the host.
    let pid = s.server_pid().unwrap();
    let hwm = |pid: u32| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            << 10
    };
    let before = hwm(pid);
    let out = sh(
        &api,
        "agent",
        "curl -s $SPRITES_GATEWAY_URL/v1/gateway/anthropic/big?mib=512 | wc -c",
    )
    .await;
    assert_eq!(out.trim(), (512u64 << 20).to_string());
    let out = sh(&api, "agent", "head -c 100000000 /dev/zero | curl -s -T - $SPRITES_GATEWAY_URL/v1/gateway/anthropic/upload").await;
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::String(out.clone()));
    assert_eq!(v["received"], 100_000_000, "{out}");
    let grew = hwm(pid).saturating_sub(before);
    assert!(
        grew < 96 << 20,
        "the server grew by {} MiB moving the bodies",
        grew >> 20
    );

    // From the host (even with the org's token): not a sprite.
    let (st, v) = api
        .json(Method::GET, "/v1/gateway/anthropic/v1/models", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    let r = reqwest::get(format!("{}/v1/gateway/list", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Usage.
    let (_, v) = api
        .json(Method::GET, &format!("/v1/oauth/connections/{id}"), None)
        .await;
    let day = &v["connection"]["usage"]["24h"];
    assert!(day["requests"].as_u64().unwrap() >= 14, "{v}");
    assert!(day["errors"].as_u64().unwrap() >= 8, "{v}");
    assert!(day["bytes"].as_u64().unwrap() >= 512 << 20, "{v}");

    // No secret in the database (and its WAL) or the log.
    for f in ["state.db", "state.db-wal"] {
        assert!(!file_has(&s.data_dir.join(f), KEY), "{f} holds the key");
    }
    assert!(!s.log().contains(KEY), "the log holds the key");

    // kill -9 while a call streams: the connector survives, calls work after the restart.
    let api2 = Api::new(&s);
    let streaming = tokio::spawn(async move {
        api2.sh(
            "agent",
            "curl -sN $SPRITES_GATEWAY_URL/v1/gateway/anthropic/sse",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kill9();
    let _ = streaming.await;
    s.restart().unwrap();
    let api = Api::new(&s);
    let (code, v) = call(
        &api,
        "agent",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 200, "{v}");

    // Delete: gone at once.
    let r = api
        .req(Method::DELETE, &format!("/v1/oauth/connections/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = api
        .req(Method::DELETE, &format!("/v1/oauth/connections/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (code, v) = call(
        &api,
        "agent",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/anthropic/{id}/v1/models"),
    )
    .await;
    assert_eq!(code, 404, "{v}");
    let (st, v) = api.json(Method::GET, "/v1/oauth/connections", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["connections"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn custom_apis_take_the_key_where_they_say_and_a_failing_test_request_saves_nothing() {
    let (up, seen) = upstream().await;
    let s = server(&up, &[]);
    let api = Api::new(&s);
    api.create("c-1").await;
    let create = |body: Value| {
        let api = &api;
        async move {
            api.json(Method::POST, "/v1/oauth/connections/api_key", Some(body))
                .await
        }
    };
    // In the query, with a test request that passes.
    let (st, v) = create(json!({
        "provider": "custom_api", "name": "weather", "base_url": format!("{up}/custom/"), "api_key": KEY,
        "auth": {"in": "query", "name": "key"},
        "test_request": {"method": "GET", "path": "/ping", "expect_status": 200},
        "access_policy": {"name_prefix": "c-"}
    }))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let q_id = v["connection"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["connection"]["provider_info"]["auth"]["in"], "query");
    assert!(!v.to_string().contains(KEY));
    let (code, _) = call(
        &api,
        "c-1",
        &format!("'$SPRITES_GATEWAY_URL/v1/gateway/custom_api/{q_id}/forecast?city=oslo&key=mine'")
            .replace('\'', "\""),
    )
    .await;
    assert_eq!(code, 200);
    {
        let u = seen.lock().unwrap();
        let (_, path, query, h) = u.calls.last().unwrap();
        assert_eq!(path, "/custom/forecast");
        assert_eq!(
            query,
            &format!("city=oslo&key={KEY}"),
            "the caller's own key= is replaced"
        );
        assert!(!h.contains_key("authorization"));
    }
    // In the path.
    let (st, v) = create(json!({
        "provider": "custom_api", "name": "bot", "base_url": format!("{up}/bot"), "api_key": KEY,
        "auth": {"in": "path"}, "access_policy": {"allow_all": true}
    }))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let p_id = v["connection"]["id"].as_str().unwrap().to_string();
    let (code, _) = call(
        &api,
        "c-1",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/custom_api/{p_id}/getMe"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        seen.lock().unwrap().calls.last().unwrap().1,
        format!("/bot/{KEY}/getMe")
    );
    // Two custom connections open to the sprite: the id must be named.
    let (code, v) = call(
        &api,
        "c-1",
        "$SPRITES_GATEWAY_URL/v1/gateway/custom_api/getMe",
    )
    .await;
    assert_eq!(code, 409, "{v}");

    // A failing test request: 422 with the upstream's status, nothing saved.
    let (st, v) = create(json!({
        "provider": "custom_api", "name": "bad", "base_url": format!("{up}/custom"), "api_key": KEY,
        "test_request": {"path": "/ping", "method": "POST", "expect_status": 204}
    }))
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("answered 200, expected 204"),
        "{v}"
    );
    let (_, v) = api
        .json(
            Method::GET,
            "/v1/oauth/connections?provider=custom_api",
            None,
        )
        .await;
    assert_eq!(v["connections"].as_array().unwrap().len(), 2);
    // Bad input: clear errors.
    for (body, want) in [
        (
            json!({"provider": "custom_api", "name": "x", "api_key": KEY}),
            "base_url",
        ),
        (
            json!({"provider": "custom_api", "name": "x", "base_url": "file:///etc/passwd", "api_key": KEY}),
            "http",
        ),
        (
            json!({"provider": "nope", "api_key": KEY}),
            "unknown provider",
        ),
        (json!({"provider": "openai", "api_key": ""}), "api_key"),
        (
            json!({"provider": "openai", "api_key": KEY, "access_policy": {"allowed_endpoints": ["v1"]}}),
            "endpoint pattern",
        ),
        (json!({"provider": "github", "api_key": KEY}), "OAuth"),
    ] {
        let (st, v) = create(body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{body}: {v}");
        assert!(!v.to_string().contains(KEY));
    }
    // The default: no address outside the public internet gets a credential.
    drop(s);
    let s = TestServer::start_with(&["--provider", &format!("anthropic.base_url={up}")]).unwrap();
    let api = Api::new(&s);
    api.create("c-2").await;
    let (st, _) = api
        .json(Method::POST, "/v1/oauth/connections/api_key", Some(json!({"provider": "anthropic", "api_key": KEY, "access_policy": {"allow_all": true}})))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let n = seen.lock().unwrap().calls.len();
    let (code, v) = call(
        &api,
        "c-2",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not allowed"),
        "{v}"
    );
    assert_eq!(seen.lock().unwrap().calls.len(), n);
    // Nor by a name that resolves there (checked on the address connected to).
    drop(s);
    let port = up.rsplit(':').next().unwrap();
    let s = TestServer::start_with(&[
        "--provider",
        &format!("anthropic.base_url=http://localhost:{port}"),
    ])
    .unwrap();
    let api = Api::new(&s);
    api.create("c-3").await;
    let (st, _) = api
        .json(Method::POST, "/v1/oauth/connections/api_key", Some(json!({"provider": "anthropic", "api_key": KEY, "access_policy": {"allow_all": true}})))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (code, v) = call(
        &api,
        "c-3",
        "$SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models",
    )
    .await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no address the gateway may connect to"),
        "{v}"
    );
    assert_eq!(seen.lock().unwrap().calls.len(), n);
}

#[tokio::test]
async fn managed_connectors_use_the_operators_key_for_every_org_that_provisions_them() {
    let (up, seen) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("openrouter.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let managed = format!("openrouter={}", key_file.display());
    let base = format!("openrouter.base_url={up}/or");
    let s = server(&up, &["--provider", &base, "--managed-connector", &managed]);
    let api = Api::new(&s);
    api.create("m").await;
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/connections/provision",
            Some(json!({"provider": "openrouter", "access_policy": {"allow_all": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let c = &v["connection"];
    assert_eq!(
        (&c["connection_type"], &c["scopes"], &c["user_id"]),
        (&json!("provisioned"), &Value::Null, &Value::Null)
    );
    let (code, v) = call(
        &api,
        "m",
        "$SPRITES_GATEWAY_URL/v1/gateway/openrouter/api/v1/chat/completions -d '{}'",
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["key_seen"], true);
    assert_eq!(
        seen.lock()
            .unwrap()
            .calls
            .last()
            .unwrap()
            .3
            .get("authorization")
            .map(String::as_str),
        Some(format!("Bearer {KEY}").as_str())
    );
    // A provider the operator does not manage cannot be provisioned.
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/connections/provision",
            Some(json!({"provider": "openai"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(!s.log().contains(KEY));
}

#[tokio::test]
async fn oauth_connections_are_made_by_the_flow_and_refreshed_with_rotation() {
    let (up, seen) = upstream().await;
    let s = server(&up, &[]);
    let api = Api::new(&s);
    api.create("gh").await;
    let (st, v) = api
        .json(
            Method::GET,
            "/v1/oauth/github/authorize?scopes=repo,read:user",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let url = v["authorize_url"].as_str().unwrap();
    let state = v["state"].as_str().unwrap().to_string();
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("client_id=test-client"),
        "{url}"
    );
    // The "browser": the provider redirects to our callback with a code.
    let nofollow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = nofollow.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(loc.path(), "/v1/oauth/github/callback");
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/github/callback",
            Some(json!({"code": code, "state": state, "access_policy": {"allow_all": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let c = &v["connection"];
    assert_eq!(c["connection_type"], "oauth");
    assert_eq!(c["scopes"], "repo,read:user");
    assert!(c["token_expires_at"].is_string());
    for t in seen.lock().unwrap().issued.clone() {
        assert!(!v.to_string().contains(&format!("\"{t}\"")), "{v}");
    }
    // The state and code are single use.
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/github/callback",
            Some(json!({"code": code, "state": state})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("failed to exchange authorization code"),
        "{v}"
    );

    // The browser form of the callback makes a connection too.
    let (_, v) = api
        .json(Method::GET, "/v1/oauth/github/authorize", None)
        .await;
    let r = nofollow
        .get(v["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let page = reqwest::get(&loc).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Connected"));
    let (_, v) = api
        .json(Method::GET, "/v1/oauth/connections?provider=github", None)
        .await;
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let id = conns[0]["id"].as_str().unwrap().to_string();
    let second = conns[1]["id"].as_str().unwrap().to_string();
    let r = api
        .req(Method::DELETE, &format!("/v1/oauth/connections/{second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // The sprite calls the API with the grant's token.
    let (code, v) = call(&api, "gh", "$SPRITES_GATEWAY_URL/v1/gateway/github/user").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["token_ok"], true);
    // Revoked upstream: one 401, a refresh (rotating the refresh token), the call retried.
    seen.lock().unwrap().access.clear();
    let (code, v) = call(
        &api,
        "gh",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/github/{id}/user"),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(seen.lock().unwrap().refreshes.len(), 1);
    // Again, now handing out tokens that expire in 5 s: the next call after finds its token
    // about to expire and refreshes before using it, with the rotated refresh token.
    seen.lock().unwrap().expires_in = 5;
    seen.lock().unwrap().access.clear();
    let (code, _) = call(&api, "gh", "$SPRITES_GATEWAY_URL/v1/gateway/github/user").await;
    assert_eq!(code, 200);
    assert_eq!(seen.lock().unwrap().refreshes.len(), 2);
    let (code, _) = call(&api, "gh", "$SPRITES_GATEWAY_URL/v1/gateway/github/user").await;
    assert_eq!(code, 200);
    let r = seen.lock().unwrap().refreshes.clone();
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(
        r[1] != r[0] && r[2] != r[1],
        "each refresh used the newest refresh token: {r:?}"
    );
    let issued = seen.lock().unwrap().issued.clone();
    for f in ["state.db", "state.db-wal"] {
        for t in issued.iter().map(String::as_str).chain(["test-secret"]) {
            assert!(!file_has(&s.data_dir.join(f), t), "{f} holds {t}");
        }
    }
}

#[tokio::test]
async fn rotating_the_key_keeps_every_connector_working() {
    let (up, _seen) = upstream().await;
    let s = server(&up, &[]);
    let api = Api::new(&s);
    api.create("r").await;
    let mut ids = Vec::new();
    for p in ["anthropic", "openai"] {
        let (st, v) = api
            .json(
                Method::POST,
                "/v1/oauth/connections/api_key",
                Some(json!({"provider": p, "api_key": KEY, "access_policy": {"allow_all": true}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        ids.push(v["connection"]["id"].as_str().unwrap().to_string());
    }
    let key_file = s.data_dir.join("secret.key");
    let old = std::fs::read_to_string(&key_file).unwrap();
    let o = std::process::Command::new(sprites_testing::bin_dir().join("spritesd"))
        .args(["secrets", "rotate-key", "--data-dir"])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sealed 2 credential(s)"));
    let new = std::fs::read_to_string(&key_file).unwrap();
    let keys = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&new).len(), 1);
    assert!(!keys(&old).contains(&keys(&new)[0]));
    // The running server opens the re-sealed credentials and seals new ones under the new key.
    for (p, id) in ["anthropic", "openai"].iter().zip(&ids) {
        let (code, v) = call(
            &api,
            "r",
            &format!("$SPRITES_GATEWAY_URL/v1/gateway/{p}/{id}/x"),
        )
        .await;
        assert_eq!(code, 200, "{p}: {v}");
        assert_eq!(v["key_seen"], true);
    }
    let (st, _) = api
        .json(
            Method::PATCH,
            &format!("/v1/oauth/connections/{}", ids[0]),
            Some(json!({"api_key": "sk-rotated-2"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (code, v) = call(
        &api,
        "r",
        &format!("$SPRITES_GATEWAY_URL/v1/gateway/anthropic/{}/x", ids[0]),
    )
    .await;
    assert_eq!(
        (code, &v["key_seen"]),
        (200, &json!(false)),
        "the new key replaced the old one"
    );
}
