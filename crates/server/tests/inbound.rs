//! Inbound traffic: sprite URLs (auth modes, http_port services, wake on request), the TCP
//! proxy through the CLI and the SDK, port notifications.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn url_client(s: &TestServer, host: &str) -> reqwest::Client {
    let addr: std::net::SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    reqwest::Client::builder()
        .resolve(host, addr)
        .build()
        .unwrap()
}

async fn start_web(api: &Api, sprite: &str, port: u16, body: &str) {
    api.exec(sprite, &["bash", "-c", &format!("mkdir -p /tmp/w{port} && echo {body} > /tmp/w{port}/index.html && setsid python3 -m http.server {port} --directory /tmp/w{port} >/dev/null 2>&1 < /dev/null &")]).await;
    wait_listening(api, sprite, port).await;
}

/// Waits until something listens on `port` inside `sprite`.
async fn wait_listening(api: &Api, sprite: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api
        .exec(
            sprite,
            &[
                "python3",
                "-c",
                &format!("import socket; socket.create_connection(('127.0.0.1',{port}),timeout=1)"),
            ],
        )
        .await
        .code
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "web server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A web app on port 8080 that answers with its name and the request's headers.
async fn start_header_echo(api: &Api, sprite: &str) {
    let app = format!(
        r#"import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("{sprite}\n" + str(self.headers)).encode()
        self.send_response(200)
        self.send_header("Set-Cookie", "app=1; Domain=sprites.localhost; Path=/")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#
    );
    let o = api
        .exec(
            sprite,
            &[
                "bash",
                "-c",
                &format!("cat > /tmp/echo.py <<'EOF'\n{app}EOF\nsetsid python3 /tmp/echo.py >/dev/null 2>&1 < /dev/null &"),
            ],
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_listening(api, sprite, 8080).await;
}

/// Attacks found by a hostile tenant: an org whose slug extends another's (`own-personal`)
/// must not answer for the other org's URLs, and no mode hands an app our credentials.
#[tokio::test]
async fn sprite_urls_cannot_be_taken_and_never_carry_our_credentials() {
    let s = TestServer::start().unwrap();
    let victim = Api::new(&s);
    let attacker_token = s.create_token("own-personal").unwrap();
    let attacker = Api::with_token(&s, &attacker_token);
    let port = s.url.rsplit(':').next().unwrap().to_string();
    for (api, name) in [(&victim, "hx-col-own"), (&attacker, "hx-col")] {
        api.create(name).await;
        let (st, _) = api
            .json(
                Method::PUT,
                &format!("/v1/sprites/{name}"),
                Some(json!({"url_settings": {"auth": "public"}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        start_header_echo(api, name).await;
    }
    let get = |label: String, auth: Option<String>| {
        let host = format!("{label}.sprites.localhost");
        let c = url_client(&s, &host);
        let url = format!("http://{host}:{port}/");
        async move {
            let mut r = c
                .get(url)
                .header("Cookie", "app=1; sprites_session=secret-cookie");
            if let Some(t) = auth {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            let cookie = r
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status(), cookie, r.text().await.unwrap())
        }
    };
    // The URL the API hands out reaches exactly the victim's sprite.
    let (_, v) = victim
        .json(Method::GET, "/v1/sprites/hx-col-own", None)
        .await;
    let url = v["url"].as_str().unwrap();
    let label = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let (st, set_cookie, body) = get(label, Some(s.token.clone())).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.starts_with("hx-col-own\n"), "{body}");
    // A public app sees neither the caller's token nor our cookies; its own cookie stays.
    assert!(
        !body.contains(&s.token),
        "the token reached the app: {body}"
    );
    assert!(
        !body.to_ascii_lowercase().contains("authorization"),
        "{body}"
    );
    assert!(!body.contains("secret-cookie"), "{body}");
    assert!(body.contains("app=1"), "{body}");
    // ...and cannot set a cookie for every sprite under the domain.
    assert_eq!(set_cookie.as_deref(), Some("app=1; Path=/"));

    // The old `<name>-<slug>` label matches both sprites: it answers for neither (before
    // canonical labels, it answered for the attacker's `hx-col`).
    let (st, _, body) = get("hx-col-own-personal".into(), Some(s.token.clone())).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // An old label only one sprite matches keeps working.
    attacker.create("solo").await;
    start_header_echo(&attacker, "solo").await;
    let (st, _, body) = get("solo-own-personal".into(), Some(attacker_token.clone())).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.starts_with("solo\n"), "{body}");
    assert!(!body.contains(&attacker_token), "{body}");
}

#[tokio::test]
async fn sprite_urls_with_auth_modes_and_http_port_services() {
    let s = TestServer::start_with(&[
        "--warm-after",
        "500ms",
        "--cold-after",
        "1500ms",
        "--idle-tick",
        "100ms",
    ])
    .unwrap();
    let api = Api::new(&s);
    let v = api.create("site").await;
    let url = v["url"].as_str().unwrap().to_string();
    let host = url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let org_id = s.token.split('/').nth(1).unwrap();
    assert_eq!(host, format!("site-{org_id}.sprites.localhost"));
    let c = url_client(&s, &host);
    start_web(&api, "site", 8080, "from-8080").await;

    // auth: sprite (default) needs an org token, and the token never reaches the app.
    let r = c.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    let other = s.create_token("acme").unwrap();
    let r = c
        .get(format!("{url}/"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "another org's token is refused"
    );
    let r = c
        .get(format!("{url}/"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "from-8080\n");
    // public: no token needed.
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/sprites/site",
            Some(json!({"url_settings": {"auth": "public"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = c.get(format!("{url}/index.html")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::OK, "from-8080\n".to_string())
    );
    let r = url_client(&s, "nope-personal.sprites.localhost")
        .get(format!(
            "http://nope-personal.sprites.localhost:{}/",
            s.url.rsplit(':').next().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // An http_port service takes the URL, and a request to a cold sprite boots it and its service.
    let r = api
        .req(Method::PUT, "/v1/sprites/site/services/web?duration=0s")
        .json(&json!({"cmd": "bash", "args": ["-c", "mkdir -p /tmp/s && echo from-service > /tmp/s/index.html && exec python3 -m http.server 9000 --directory /tmp/s"], "http_port": 9000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.text().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = api.json(Method::GET, "/v1/sprites/site", None).await;
        if v["status"] == "cold" {
            break;
        }
        assert!(Instant::now() < deadline, "never went cold: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::OK, "from-service\n".to_string()),
        "the URL woke the sprite"
    );
}

#[tokio::test]
async fn tcp_proxy_through_cli_sdk_and_stdio() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("px").await;
    start_web(&api, "px", 8080, "proxied").await;
    // SDK
    let client = sprites::Client::new(&s.token).base_url(&s.url);
    let sp = client.sprite("px");
    let sess = sp.proxy_port(0, 8080).await.unwrap();
    let local = sess.local_addr();
    let body = reqwest::get(format!("http://{local}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "proxied\n");
    sess.close();
    sess.wait().await;
    assert!(
        std::net::TcpStream::connect(local).is_err(),
        "closed session stops listening"
    );
    let err = sp.proxy_socket("localhost", 9).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    let both = sp
        .proxy_ports(&[
            sprites::PortMapping {
                local_port: 0,
                remote_port: 8080,
                remote_host: None,
            },
            sprites::PortMapping {
                local_port: 0,
                remote_port: 8080,
                remote_host: Some("10.0.0.1".into()),
            },
        ])
        .await
        .unwrap();
    for p in &both {
        assert_eq!(
            reqwest::get(format!("http://{}/", p.local_addr()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "proxied\n"
        );
        p.close();
    }

    // CLI: `sprite proxy LOCAL:REMOTE`.
    assert!(s
        .run_cli(&["auth", "setup", "--token", &s.token])
        .unwrap()
        .status
        .success());
    let port = {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let mut child = s
        .cli()
        .args(["proxy", "-s", "px", &format!("{port}:8080")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/")).await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "sprite proxy never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body, "proxied\n");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    );
    assert!(child.wait().unwrap().success());

    // CLI: `-W host:port` relays stdio (what ssh's ProxyCommand needs).
    let mut w = s
        .cli()
        .args(["proxy", "-s", "px", "-W", "localhost:8080"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    w.stdin
        .take()
        .unwrap()
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    w.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") && out.ends_with("proxied\n"),
        "{out}"
    );
    let _ = w.wait();
    let _ = Command::new("true").status();
}

/// A real database protocol through `sprite proxy`: redis-server in the sprite, the host's
/// redis-cli on the local end.
#[tokio::test]
async fn redis_cli_through_sprite_proxy() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("db").await;
    let o = api
        .sh(
            "db",
            "redis-server --port 6379 --daemonize yes --save '' --appendonly no >/dev/null && sleep 0.3 && redis-cli ping",
        )
        .await;
    assert_eq!(o.stdout, "PONG\n", "{o:?}");
    assert!(s
        .run_cli(&["auth", "setup", "--token", &s.token])
        .unwrap()
        .status
        .success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = s
        .cli()
        .args(["proxy", "-s", "db", &format!("{port}:6379")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = |args: &[&str]| {
        let o = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (install redis-tools)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis(&["ping"]) != "PONG\n" {
        assert!(Instant::now() < deadline, "no PONG through the proxy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis(&["set", "greeting", "hello from the host"]), "OK\n");
    // The value really lives in the sprite's server.
    let o = api.sh("db", "redis-cli get greeting").await;
    assert_eq!(o.stdout, "hello from the host\n");
    // A 1 MiB value (the last argument read from stdin with -x).
    let mut c = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-x",
            "set",
            "big",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(&vec![b'x'; 1 << 20])
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    assert_eq!(redis(&["strlen", "big"]), "1048576\n");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    );
    assert!(child.wait().unwrap().success());
}

/// The WebSocket flavour every official SDK uses (spec §5): handshake, status, binary relay;
/// the sprite's localhost (dialed by spritesd) and another address (through the agent) alike,
/// and errors as a JSON status then a close.
#[tokio::test]
async fn websocket_proxy_protocol() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("wsp").await;
    start_web(&api, "wsp", 8080, "over-ws").await;
    let open = |init: serde_json::Value| {
        let url = format!("{}/v1/sprites/wsp/proxy", s.url.replacen("http", "ws", 1));
        let token = s.token.clone();
        async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            ws.send(Message::Text(init.to_string().into()))
                .await
                .unwrap();
            let status = match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    serde_json::from_str::<serde_json::Value>(&t).unwrap()
                }
                other => panic!("no status: {other:?}"),
            };
            (ws, status)
        }
    };
    for host in ["localhost", "10.0.0.1"] {
        let (mut ws, status) = open(serde_json::json!({"host": host, "port": 8080})).await;
        assert_eq!(status["status"], "connected", "{host}: {status}");
        assert_eq!(status["target"], format!("{host}:8080"));
        ws.send(Message::Binary(
            b"GET /index.html HTTP/1.0\r\n\r\n".to_vec().into(),
        ))
        .await
        .unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => got.extend_from_slice(&b),
                Message::Close(_) => break,
                _ => {}
            }
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.0 200") && got.ends_with("over-ws\n"),
            "{host}: {got}"
        );
    }
    // Nothing listens: a JSON error, then close 1011; the same through the agent.
    for host in ["localhost", "10.0.0.1"] {
        let (mut ws, status) = open(serde_json::json!({"host": host, "port": 9})).await;
        assert_eq!(status["status"], "error", "{host}: {status}");
        assert!(
            status["error"].as_str().unwrap().contains("refused"),
            "{host}: {status}"
        );
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1011),
            other => panic!("{host}: expected a close, got {other:?}"),
        }
    }
    let (_, status) = open(serde_json::json!({"host": "localhost", "port": 0})).await;
    assert_eq!(status["status"], "error", "{status}");
    // An unknown sprite is a plain 404 before any upgrade.
    let mut req = format!("{}/v1/sprites/nope/proxy", s.url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
}
