//! `--tls-cert/--tls-key`: the API, WebSocket exec and sprite URLs over HTTPS with a real
//! certificate (made here by `openssl`), checked by clients that trust only that certificate.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::TestServer;
use futures::StreamExt;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and a certificate it signed for `localhost` and every sprite URL
/// (`*.sprites.localhost`): (CA, certificate, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            "/CN=sprites test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
    ]
    .concat());
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=DNS:localhost,DNS:*.sprites.localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// A client that trusts only `cert` and finds the hosts in `resolve` there.
fn client_builder(cert: &Path, resolve: &[(&str, SocketAddr)]) -> reqwest::ClientBuilder {
    let pem = std::fs::read(cert).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    for (host, addr) in resolve {
        b = b.resolve(host, *addr);
    }
    b
}

fn client(cert: &Path, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    client_builder(cert, resolve).build().unwrap()
}

/// A server with a fresh certificate: (its certificates' dir, the server, the CA, its
/// address, `https://localhost:<port>`).
fn tls_server() -> (tempfile::TempDir, TestServer, PathBuf, SocketAddr, String) {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_cert(certs.path());
    let s = TestServer::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .unwrap();
    let addr: SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    let base = format!("https://localhost:{}", addr.port());
    (certs, s, ca, addr, base)
}

#[tokio::test]
async fn the_api_websockets_and_sprite_urls_over_https() {
    let (_certs, s, ca, addr, base) = tls_server();
    let c = client(&ca, &[("localhost", addr)]);

    // The API.
    let r = c
        .post(format!("{base}/v1/sprites"))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"name": "tls", "url_settings": {"auth": "public"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with("https://tls-"),
        "sprite URLs say https: {url}"
    );

    // HTTP exec.
    let r = c
        .post(format!(
            "{base}/v1/sprites/tls/exec?cmd=sh&cmd=-c&cmd=echo+over+tls"
        ))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("over tls"),
        "{body:?}"
    );

    // A WebSocket exec through the TLS listener (upgrades work on it).
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!(
        "wss://localhost:{}/v1/sprites/tls/exec?cmd=echo&cmd=ws",
        addr.port()
    )
    .into_client_request()
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let mut out = Vec::new();
    let mut exit = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(b) = m {
            match b[0] {
                1 => out.extend_from_slice(&b[1..]),
                3 => exit = Some(b[1]),
                _ => {}
            }
        }
    }
    assert_eq!((out.as_slice(), exit), (&b"ws\n"[..], Some(0)));

    // The sprite's URL, under the wildcard certificate.
    let host = url
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let r = c
        .post(format!(
            "{base}/v1/sprites/tls/exec?cmd=sh&cmd=-c&cmd={}",
            urlencode("mkdir -p /tmp/w && echo from-app > /tmp/w/index.html && (setsid python3 -m http.server 8080 --directory /tmp/w >/dev/null 2>&1 < /dev/null &) && for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\",8080))' 2>/dev/null && break; sleep 0.1; done")
        ))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let uc = client(&ca, &[(host.as_str(), addr)]);
    let r = uc.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "from-app\n");

    // Plain HTTP to the TLS port gets nowhere, and a client that does not trust the
    // certificate is refused in the handshake.
    let plain = reqwest::Client::new()
        .get(format!("http://localhost:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", addr)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn a_bad_certificate_is_one_clear_error_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _key) = make_cert(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, wrong_key) = make_cert(other.path());
    for (c, k, want) in [
        (
            dir.path().join("missing.pem"),
            wrong_key.clone(),
            "reading the certificate",
        ),
        (cert.clone(), wrong_key, "do not go together"),
    ] {
        let out = Command::new(sprites_testing::bin_dir().join("spritesd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--storage-pool", "none"])
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .arg("--image-dir")
            .arg(sprites_testing::image_dir())
            .arg("--tls-cert")
            .arg(&c)
            .arg("--tls-key")
            .arg(&k)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want:?} in {err}");
    }
}

#[tokio::test]
async fn behind_a_reverse_proxy_sprite_urls_take_the_public_scheme_and_port() {
    let s = TestServer::start_with(&["--public-url", "https://api.sprites.example.com"]).unwrap();
    let api = common::Api::new(&s);
    let v = api.create("rp").await;
    let org = s.token.split('/').nth(1).unwrap();
    assert_eq!(v["url"], format!("https://rp-{org}.sprites.localhost"));
}

/// Over TLS the console's session cookie is `__Host-` prefixed (Secure, `Path=/`, no
/// `Domain`), and only that name signs a browser in: the same id under the plain name, as an
/// app on a sprite URL could plant it for a parent domain, does not.
#[tokio::test]
async fn the_console_cookie_over_tls_is_host_only() {
    let (_certs, s, ca, addr, base) = tls_server();
    let c = client_builder(&ca, &[("localhost", addr)])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .post(format!("{base}/signin"))
        .form(&[("token", s.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-sprites_session="), "{cookie}");
    for attr in ["Path=/;", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="));
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let page = |name: &'static str| {
        c.get(format!("{base}/tokens"))
            .header("cookie", format!("{name}={id}"))
            .send()
    };
    assert_eq!(
        page("__Host-sprites_session").await.unwrap().status(),
        reqwest::StatusCode::OK
    );
    let planted = page("sprites_session").await.unwrap();
    assert_eq!(planted.status(), reqwest::StatusCode::SEE_OTHER);
    assert!(planted.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/signin"));
}
