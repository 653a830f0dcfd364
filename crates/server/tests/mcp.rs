//! The remote MCP server and its OAuth server, spoken on the wire as a client does: discovery,
//! registration, the consent form as a script submits it, PKCE, tokens and refresh; then
//! both protocol revisions, the tools, a restricted grant's refusals, and bad input.

mod common;

use base64::Engine;
use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

fn nofollow() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An OAuth client of the test's own.
struct Client {
    base: String,
    id: String,
    /// The name the consent page shows, HTML-escaped.
    name: String,
    redirect: String,
    http: reqwest::Client,
}

fn pkce() -> (String, String) {
    let verifier = format!("v{}", "x9".repeat(30));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The hidden fields of the consent form.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|s| {
            let name = s
                .split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let value = s
                .split("value=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let unescape = |v: &str| {
                v.replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&")
            };
            (name.to_string(), unescape(value))
        })
        .collect()
}

impl Client {
    async fn register(s: &TestServer) -> Self {
        let http = nofollow();
        let redirect = "http://127.0.0.1:33333/callback".to_string();
        let r = http
            .post(format!("{}/oauth/register", s.url))
            .json(&json!({"client_name": "Test <Agent>", "redirect_uris": [redirect], "token_endpoint_auth_method": "none"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        Client {
            base: s.url.clone(),
            id: v["client_id"].as_str().unwrap().to_string(),
            name: "Test &lt;Agent&gt;".into(),
            redirect,
            http,
        }
    }

    fn authorize_url(&self, challenge: &str, redirect: &str, resource: &str) -> String {
        let mut u = url::Url::parse(&format!("{}/oauth/authorize", self.base)).unwrap();
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.id)
            .append_pair("redirect_uri", redirect)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "st-42")
            .append_pair("resource", resource)
            .append_pair("scope", "sprites");
        u.to_string()
    }

    /// Shows the consent page and submits it; the redirect's query.
    async fn consent(&self, challenge: &str, form: &[(&str, &str)]) -> Vec<(String, String)> {
        // A loopback redirect may use another port than the one registered.
        let redirect = self.redirect.replace("33333", "44444");
        let page = self
            .http
            .get(self.authorize_url(challenge, &redirect, &format!("{}/mcp", self.base)))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(
            html.contains(&self.name) && html.contains("name=\"token\""),
            "{html}"
        );
        let mut fields = hidden_fields(&html);
        fields.extend(form.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let r = self
            .http
            .post(format!("{}/oauth/authorize", self.base))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND, "{:?}", r.text().await);
        let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert!(loc.as_str().starts_with(&redirect), "{loc}");
        loc.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// The whole flow; (access, refresh).
    async fn sign_in(&self, token: &str, form: &[(&str, &str)]) -> (String, String) {
        let (verifier, challenge) = pkce();
        let mut f = vec![("token", token), ("decision", "approve")];
        f.extend_from_slice(form);
        let q = self.consent(&challenge, &f).await;
        let get = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        assert_eq!(get("state").as_deref(), Some("st-42"));
        assert_eq!(get("iss").as_deref(), Some(self.base.as_str()));
        let code = get("code").expect("a code");
        let redirect = self.redirect.replace("33333", "44444");
        let (st, v) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", &self.id),
                ("redirect_uri", &redirect),
                ("code_verifier", &verifier),
                ("resource", &format!("{}/mcp", self.base)),
            ])
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        // The code is single use.
        let (st, _) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("client_id", &self.id),
                ("redirect_uri", &redirect),
                ("code_verifier", &verifier),
            ])
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        (
            v["access_token"].as_str().unwrap().to_string(),
            v["refresh_token"].as_str().unwrap().to_string(),
        )
    }
}

/// An MCP client on the wire, either revision.
struct Mcp {
    url: String,
    token: String,
    session: Option<String>,
    modern: bool,
    http: reqwest::Client,
    id: u64,
}

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";

impl Mcp {
    async fn connect(s: &TestServer, token: &str, modern: bool) -> Self {
        let mut m = Mcp {
            url: format!("{}/mcp", s.url),
            token: token.to_string(),
            session: None,
            modern,
            http: reqwest::Client::new(),
            id: 0,
        };
        if modern {
            let (st, v) = m.rpc("server/discover", json!({})).await;
            assert_eq!(st, 200, "{v}");
            assert!(
                v["result"]["supportedVersions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(MODERN)),
                "{v}"
            );
        } else {
            let (st, v) = m
                .rpc("initialize", json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
                .await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["result"]["protocolVersion"], LEGACY);
            let (st, _) = m
                .send(
                    json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                    "notifications/initialized",
                    None,
                )
                .await;
            assert_eq!(st, 202);
        }
        m
    }

    async fn send(&mut self, body: Value, method: &str, name: Option<&str>) -> (u16, Value) {
        let mut r = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if self.modern {
            r = r
                .header("mcp-protocol-version", MODERN)
                .header("mcp-method", method);
            if let Some(n) = name {
                r = r.header("mcp-name", n);
            }
        } else if let Some(s) = &self.session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", LEGACY);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        let text = resp.text().await.unwrap();
        // JSON, or SSE whose last data line is the answer.
        let json = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .rfind(|l| !l.trim().is_empty())
            .map(str::to_string)
            .unwrap_or(text);
        (st, serde_json::from_str(&json).unwrap_or(Value::Null))
    }

    async fn rpc(&mut self, method: &str, mut params: Value) -> (u16, Value) {
        self.id += 1;
        let name = params["name"].as_str().map(str::to_string);
        if self.modern {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            });
        }
        let body = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        self.send(body, method, name.as_deref()).await
    }

    /// A tool call: (isError, structured content or text).
    async fn call(&mut self, name: &str, args: Value) -> (bool, Value) {
        let (st, v) = self
            .rpc("tools/call", json!({"name": name, "arguments": args}))
            .await;
        assert_eq!(st, 200, "{name}: {v}");
        let r = &v["result"];
        assert!(r.is_object(), "{name}: {v}");
        let text = r["content"][0]["text"].as_str().unwrap_or("").to_string();
        (
            r["isError"] == true,
            r.get("structuredContent")
                .cloned()
                .unwrap_or(Value::String(text)),
        )
    }
}

#[tokio::test]
async fn an_oauth_client_signs_in_and_drives_sprites_within_its_restricted_grant() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("dev").await;
    let http = reqwest::Client::new();

    // Discovery: 401 names the metadata, which names the authorization server.
    let r = http
        .post(format!("{}/mcp", s.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            s.url
        )),
        "{www}"
    );
    let prm: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            s.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], format!("{}/mcp", s.url));
    let asm: Value = http
        .get(format!("{}/.well-known/oauth-authorization-server", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], prm["authorization_servers"][0]);
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));

    let c = Client::register(&s).await;
    let (access, refresh) = c
        .sign_in(
            &s.token,
            &[
                ("mode", "restricted"),
                ("prefix", "mcp-"),
                ("max_sprites", "2"),
            ],
        )
        .await;

    for modern in [true, false] {
        let mut m = Mcp::connect(&s, &access, modern).await;
        let (_, v) = m.rpc("tools/list", json!({})).await;
        let tools = v["result"]["tools"].as_array().unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(
            &names[..4],
            ["list_sprites", "create_sprite", "destroy_sprite", "exec"]
        );
        for t in tools {
            let a = &t["annotations"];
            assert!(
                t["inputSchema"]["type"] == "object"
                    && t["outputSchema"].is_object()
                    && t["title"].is_string(),
                "{t}"
            );
            assert!(
                a["readOnlyHint"].is_boolean()
                    && a["destructiveHint"].is_boolean()
                    && a["idempotentHint"].is_boolean()
                    && a["openWorldHint"].is_boolean(),
                "{t}"
            );
        }
        let ro = |n: &str| {
            tools.iter().find(|t| t["name"] == n).unwrap()["annotations"]["readOnlyHint"] == true
        };
        assert!(ro("list_sprites") && ro("read_file") && !ro("destroy_sprite") && !ro("exec"));
        let _ = names;
    }

    let mut m = Mcp::connect(&s, &access, true).await;
    // Outside the prefix: nothing there.
    let (_, v) = m.call("list_sprites", json!({})).await;
    assert_eq!(v["sprites"], json!([]));
    let (err, v) = m
        .call("exec", json!({"sprite": "dev", "command": "true"}))
        .await;
    assert!(err && v.as_str().unwrap().contains("not found"), "{v}");
    let (err, v) = m.call("create_sprite", json!({"name": "other"})).await;
    assert!(err && v.as_str().unwrap().contains("mcp-"), "{v}");
    // Inside: create, work, and the cap.
    let (err, v) = m
        .call(
            "create_sprite",
            json!({"name": "mcp-one", "labels": ["agent"]}),
        )
        .await;
    assert!(!err, "{v}");
    assert_eq!(v["sprite"]["name"], "mcp-one");
    let (err, _) = m.call("create_sprite", json!({"name": "mcp-two"})).await;
    assert!(!err);
    let (err, v) = m.call("create_sprite", json!({"name": "mcp-three"})).await;
    assert!(err && v.as_str().unwrap().contains("at most 2"), "{v}");
    let (_, v) = m.call("list_sprites", json!({})).await;
    let listed: Vec<&str> = v["sprites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["mcp-one", "mcp-two"]);

    let (err, v) = m.call("exec", json!({"sprite": "mcp-one", "command": "echo out; echo err >&2; echo $FOO; pwd; exit 3", "env": {"FOO": "bar"}, "dir": "/tmp"})).await;
    assert!(!err, "{v}");
    assert_eq!(
        (
            v["stdout"].as_str().unwrap(),
            v["stderr"].as_str().unwrap(),
            v["exit_code"].as_u64()
        ),
        ("out\nbar\n/tmp\n", "err\n", Some(3))
    );
    let (_, v) = m
        .call(
            "exec",
            json!({"sprite": "mcp-one", "command": ["cat"], "stdin": "piped"}),
        )
        .await;
    assert_eq!(v["stdout"], "piped");
    let (_, v) = m
        .call(
            "exec",
            json!({"sprite": "mcp-one", "command": "head -c 200000 /dev/zero | tr '\\0' a"}),
        )
        .await;
    assert_eq!(
        (
            v["stdout"].as_str().unwrap().len(),
            v["stdout_bytes"].as_u64()
        ),
        (64 * 1024, Some(200_000))
    );
    let (_, v) = m
        .call(
            "exec",
            json!({"sprite": "mcp-one", "command": "echo early; sleep 30", "timeout_s": 2}),
        )
        .await;
    assert_eq!(
        (v["timed_out"].as_bool(), v["stdout"].as_str()),
        (Some(true), Some("early\n")),
        "{v}"
    );
    let (_, v) = m.call("list_sessions", json!({"sprite": "mcp-one"})).await;
    assert!(
        v.to_string().contains("sleep 30"),
        "the timed-out command goes on as a session: {v}"
    );
    let sessions = v["sessions"]["sessions"].as_array().unwrap();
    let sid = sessions
        .iter()
        .find(|x| x.to_string().contains("sleep 30"))
        .unwrap()["id"]
        .to_string();
    let sid = sid.trim_matches('"');
    let (err, v) = m
        .call(
            "read_session",
            json!({"sprite": "mcp-one", "id": sid, "offset": 0}),
        )
        .await;
    assert!(!err, "{v}");
    assert!(
        v["output"].to_string().contains("early") && v["exited"] == false,
        "{v}"
    );
    let next = v["next_offset"].as_u64().unwrap();
    let (_, v) = m
        .call(
            "read_session",
            json!({"sprite": "mcp-one", "id": sid, "offset": next}),
        )
        .await;
    assert_eq!(v["output"], json!([]), "{v}");

    let (err, _) = m
        .call(
            "write_file",
            json!({"sprite": "mcp-one", "path": "/home/sprite/notes/a.txt", "content": "kept"}),
        )
        .await;
    assert!(!err);
    let (_, v) = m
        .call(
            "read_file",
            json!({"sprite": "mcp-one", "path": "/home/sprite/notes/a.txt"}),
        )
        .await;
    assert_eq!(v["content"], "kept");
    let (_, v) = m
        .call(
            "list_dir",
            json!({"sprite": "mcp-one", "path": "/home/sprite/notes"}),
        )
        .await;
    assert!(v.to_string().contains("a.txt"), "{v}");

    let (err, v) = m
        .call(
            "create_checkpoint",
            json!({"sprite": "mcp-one", "comment": "before"}),
        )
        .await;
    assert!(!err, "{v}");
    let (_, v) = m
        .call("list_checkpoints", json!({"sprite": "mcp-one"}))
        .await;
    let id = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["comment"] == "before")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    m.call(
        "write_file",
        json!({"sprite": "mcp-one", "path": "/home/sprite/notes/a.txt", "content": "changed"}),
    )
    .await;
    let (err, v) = m
        .call("restore_checkpoint", json!({"sprite": "mcp-one", "id": id}))
        .await;
    assert!(!err, "{v}");
    let (_, v) = m
        .call(
            "read_file",
            json!({"sprite": "mcp-one", "path": "/home/sprite/notes/a.txt"}),
        )
        .await;
    assert_eq!(v["content"], "kept");

    let (err, v) = m.call("set_network_policy", json!({"sprite": "mcp-one", "rules": [{"domain": "blocked.example", "action": "deny"}]})).await;
    assert!(!err, "{v}");
    let (_, v) = m
        .call("get_network_policy", json!({"sprite": "mcp-one"}))
        .await;
    assert!(v.to_string().contains("blocked.example"), "{v}");

    let (err, v) = m.call("create_service", json!({"sprite": "mcp-one", "name": "tick", "cmd": "bash", "args": ["-c", "while true; do echo tick; sleep 1; done"]})).await;
    assert!(!err, "{v}");
    m.call(
        "start_service",
        json!({"sprite": "mcp-one", "name": "tick"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, v) = m
        .call("service_logs", json!({"sprite": "mcp-one", "name": "tick"}))
        .await;
    assert!(v["logs"].as_str().unwrap().contains("tick"), "{v}");
    let (_, v) = m.call("list_services", json!({"sprite": "mcp-one"})).await;
    assert!(v.to_string().contains("tick"), "{v}");
    let (err, _) = m
        .call("stop_service", json!({"sprite": "mcp-one", "name": "tick"}))
        .await;
    assert!(!err);

    // A protocol problem is a JSON-RPC error; a failure inside a tool is isError.
    let (_, v) = m
        .rpc(
            "tools/call",
            json!({"name": "exec", "arguments": {"sprite": "mcp-one"}}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let (err, _) = m
        .call("get_checkpoint", json!({"sprite": "mcp-one", "id": "v99"}))
        .await;
    assert!(err);
    let (err, _) = m.call("destroy_sprite", json!({"name": "mcp-two"})).await;
    assert!(!err);
    let (err, v) = m.call("destroy_sprite", json!({"name": "dev"})).await;
    assert!(err && v.as_str().unwrap().contains("not found"));
    let (st, _) = api.json(Method::GET, "/v1/sprites/dev", None).await;
    assert_eq!(st, StatusCode::OK, "dev is untouched");

    // Refresh rotates; a reused refresh token revokes the grant.
    let (st, v) = c
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &c.id),
        ])
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let access2 = v["access_token"].as_str().unwrap().to_string();
    assert_ne!(access2, access);
    let mut m2 = Mcp::connect(&s, &access2, true).await;
    let (err, _) = m2.call("list_sprites", json!({})).await;
    assert!(!err);
    let (st, v) = c
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &c.id),
        ])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let r = http
        .post(format!("{}/mcp", s.url))
        .bearer_auth(&access2)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked grant's tokens stop working"
    );

    // An MCP token is not an API token.
    let r = http
        .get(format!("{}/v1/sprites", s.url))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grants_are_listed_and_revoked_and_bad_requests_are_refused() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let http = nofollow();
    let c = Client::register(&s).await;

    // Full access; the grant shows in the org's list and revoking it stops its token.
    let (access, _) = c.sign_in(&s.token, &[("mode", "full")]).await;
    let mut m = Mcp::connect(&s, &access, false).await;
    let (err, _) = m.call("create_sprite", json!({"name": "anything"})).await;
    assert!(!err);
    let (_, v) = api.json(Method::GET, "/v1/mcp/grants", None).await;
    let g = &v["grants"][0];
    assert_eq!(
        (g["mode"].as_str(), g["client_name"].as_str()),
        (Some("full"), Some("Test <Agent>"))
    );
    assert!(g["last_used_at"].is_string(), "{v}");
    let other = s.create_token("other-org").unwrap();
    let other_api = Api::with_token(&s, &other);
    let (_, v2) = other_api.json(Method::GET, "/v1/mcp/grants", None).await;
    assert_eq!(v2["grants"], json!([]), "another org sees none");
    let gid = g["id"].as_str().unwrap();
    let r = other_api
        .req(Method::DELETE, &format!("/v1/mcp/grants/{gid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = api
        .req(Method::DELETE, &format!("/v1/mcp/grants/{gid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .post(format!("{}/mcp", s.url))
        .bearer_auth(&access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A token for a client without OAuth, restricted; an org token gives full access.
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/mcp/grants",
            Some(json!({"mode": "restricted", "prefix": "bot-", "max_sprites": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let mut m = Mcp::connect(&s, v["access_token"].as_str().unwrap(), true).await;
    let (err, v) = m.call("list_sprites", json!({})).await;
    assert!(!err && v["sprites"] == json!([]), "{v}");
    let mut m = Mcp::connect(&s, &s.token, true).await;
    let (_, v) = m.call("list_sprites", json!({})).await;
    assert_eq!(v["sprites"][0]["name"], "anything");

    // Bad authorization requests.
    let (verifier, challenge) = pkce();
    let page = http
        .get(c.authorize_url(
            &challenge,
            "http://127.0.0.1:1/elsewhere",
            &format!("{}/mcp", s.url),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        StatusCode::BAD_REQUEST,
        "an unregistered redirect is never redirected to"
    );
    let r = http
        .get(c.authorize_url(&challenge, &c.redirect, "https://evil.example/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.contains("error=invalid_target") && loc.contains("state=st-42"),
        "{loc}"
    );
    let no_pkce = c.authorize_url("short", &c.redirect, &format!("{}/mcp", s.url));
    let r = http.get(no_pkce).send().await.unwrap();
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("error=invalid_request"));
    // Deny.
    let q = c
        .consent(&challenge, &[("token", &s.token), ("decision", "deny")])
        .await;
    assert!(
        q.iter().any(|(k, v)| k == "error" && v == "access_denied"),
        "{q:?}"
    );
    // A wrong verifier, and a forged form.
    let q = c
        .consent(
            &challenge,
            &[
                ("token", &s.token),
                ("decision", "approve"),
                ("mode", "full"),
            ],
        )
        .await;
    let code = q.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    let redirect = c.redirect.replace("33333", "44444");
    let (st, v) = c
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &c.id),
            ("redirect_uri", &redirect),
            ("code_verifier", &format!("{verifier}x")),
        ])
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let r = http
        .post(format!("{}/oauth/authorize", s.url))
        .form(&[
            ("client_id", c.id.as_str()),
            ("redirect_uri", c.redirect.as_str()),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("token", s.token.as_str()),
            ("decision", "approve"),
            ("mode", "full"),
            ("expires", "99999999999999"),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .post(format!("{}/oauth/register", s.url))
        .json(&json!({"redirect_uris": ["http://evil.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (st, _) = c.token(&[("grant_type", "password")]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Bad JSON-RPC: malformed, oversized, a batch; and a foreign Origin.
    let post = |body: Vec<u8>| {
        http.post(format!("{}/mcp", s.url))
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list")
            .body(body)
            .send()
    };
    let st = post(b"{not json".to_vec()).await.unwrap().status();
    assert!(st.is_client_error(), "{st}");
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{{\"x\":\"{}\"}}}}",
        "a".repeat(5 << 20)
    );
    // 413, or the connection closed while the rest of the body was still being sent.
    match post(big.into_bytes()).await {
        Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]);
    let st = post(batch.to_string().into_bytes()).await.unwrap().status();
    assert!(st.is_client_error(), "{st}");
    let r = http
        .post(format!("{}/mcp", s.url))
        .bearer_auth(&s.token)
        .header("origin", "https://evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_client_named_by_its_metadata_document_signs_in_and_the_fetch_is_guarded() {
    // The client's metadata document, served by the test (plain HTTP on loopback, which only
    // a server started with --mcp-metadata-allow-private fetches).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doc_url = format!("http://{}/oauth/client.json", l.local_addr().unwrap());
    let doc = json!({"client_id": doc_url, "client_name": "Metadata Client", "redirect_uris": ["http://127.0.0.1:35555/cb"]});
    let app = axum::Router::new().route(
        "/oauth/client.json",
        axum::routing::get(move || {
            let d = doc.clone();
            async move { axum::Json(d) }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let s = TestServer::start_with(&["--mcp-metadata-allow-private"]).unwrap();
    let asm: Value = reqwest::get(format!("{}/.well-known/oauth-authorization-server", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["client_id_metadata_document_supported"], true);
    let c = Client {
        base: s.url.clone(),
        id: doc_url.clone(),
        name: "Metadata Client".into(),
        redirect: "http://127.0.0.1:35555/cb".into(),
        http: nofollow(),
    };
    let page = c
        .http
        .get(c.authorize_url(&pkce().1, &c.redirect, &format!("{}/mcp", s.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Metadata Client"));
    let (access, _) = c.sign_in(&s.token, &[("mode", "full")]).await;
    let mut m = Mcp::connect(&s, &access, true).await;
    let (err, _) = m.call("list_sprites", json!({})).await;
    assert!(!err);

    // By default a metadata document must be HTTPS on a public address.
    let s2 = TestServer::start().unwrap();
    let c2 = Client {
        base: s2.url.clone(),
        ..c
    };
    let page = c2
        .http
        .get(c2.authorize_url(&pkce().1, &c2.redirect, &format!("{}/mcp", s2.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("HTTPS"));
    let local = c2
        .authorize_url(&pkce().1, &c2.redirect, &format!("{}/mcp", s2.url))
        .replace(&urlenc(&doc_url), &urlenc("https://127.0.0.1:1/x.json"));
    let page = c2.http.get(local).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("not a public address"));
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
