//! Malformed client input gets a 4xx in the API's JSON error shape, never a panic, a 503 or
//! plain text (issue 12, items 9 and 13).

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Asserts a `{"error","message"}` body with `status`.
async fn assert_json_error(what: &str, resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status, "{what}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    assert!(ct.starts_with("application/json"), "{what}: {ct} {text:?}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e} {text:?}"));
    assert!(
        v["error"].is_string() && v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    v
}

#[tokio::test]
async fn kill_with_out_of_range_timeouts_is_a_400_and_the_agent_lives_on() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("k").await;
    // A session that lives while its HTTP exec streams (the response is held, never read).
    let _running = api
        .req(Method::POST, "/v1/sprites/k/exec?cmd=sleep&cmd=300")
        .send()
        .await
        .unwrap();
    let (_, list) = api.json(Method::GET, "/v1/sprites/k/exec", None).await;
    let id = list["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["command"] == "sleep 300"))
        .and_then(|x| x["id"].as_str())
        .unwrap_or_else(|| panic!("the sleep session: {list}"))
        .to_string();
    let kill = format!("/v1/sprites/k/exec/{id}/kill");
    for body in [
        r#"{"timeout":1e20}"#,
        r#"{"timeout":-1}"#,
        r#"{"timeout":"NaN"}"#,
        r#"{"timeout":"inf"}"#,
        r#"{"timeout":1.7976931348623157e308}"#,
        r#"{"timeout":"100000000h"}"#,
        r#"{"timeout":"1"#,
    ] {
        let r = api
            .req(Method::POST, &kill)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let v = assert_json_error(body, r, StatusCode::BAD_REQUEST).await;
        assert_eq!(v["error"], "bad_request", "{body}");
    }
    for q in ["1e20", "-1", "NaN", "-inf", "1e400s"] {
        let r = api
            .req(Method::POST, &kill)
            .query(&[("timeout", q)])
            .send()
            .await
            .unwrap();
        assert_json_error(q, r, StatusCode::BAD_REQUEST).await;
    }
    // The agent still answers, and the session is still there to kill properly.
    let out = api.exec("k", &["echo", "alive"]).await;
    assert_eq!(out.stdout, "alive\n");
    let r = api
        .req(Method::POST, &kill)
        .query(&[("signal", "KILL"), ("timeout", "5s")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"exit_code\":137"), "{text}");
}

#[tokio::test]
async fn every_error_is_json() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let raw = |m: Method, path: &str| {
        api.http
            .request(m, format!("{}{path}", s.url))
            .bearer_auth(&s.token)
    };
    // (what, method, path, content type and body, expected status)
    #[rustfmt::skip]
    let cases = [
        ("bad UTF-8 in a path", Method::GET, "/v1/sprites/%C3%28", None, 400),
        ("bad UTF-8, forwarded route", Method::POST, "/v1/sprites/a/exec/%FF/kill", None, 400),
        ("duplicate query key", Method::GET, "/v1/sprites/a/checkpoints?history=1&history=2", None, 400),
        ("bad number in a query", Method::GET, "/v1/sprites?max_results=many", None, 400),
        ("malformed JSON body", Method::POST, "/v1/sprites", Some(("application/json", "{\"name\":")), 400),
        ("wrong content type", Method::POST, "/v1/sprites", Some(("text/plain", "name=a")), 400),
        ("WebSocket route, no upgrade", Method::GET, "/v1/sprites/a/proxy", None, 400),
        ("unknown /v1 route", Method::GET, "/v1/nothing/here", None, 404),
        ("unknown route", Method::GET, "/nothing", None, 404),
        ("wrong method", Method::PATCH, "/v1/sprites", None, 405),
        ("wrong method outside /v1", Method::POST, "/healthz", None, 405),
    ];
    for (what, m, path, body, status) in cases {
        let mut req = raw(m, path);
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        let status = StatusCode::from_u16(status).unwrap();
        assert_json_error(what, req.send().await.unwrap(), status).await;
    }
    // The rewrite keeps axum's headers.
    let r = raw(Method::PUT, "/healthz").send().await.unwrap();
    assert!(r.headers().contains_key("allow"), "405 keeps its Allow");
    assert_json_error("PUT /healthz", r, StatusCode::METHOD_NOT_ALLOWED).await;
}
