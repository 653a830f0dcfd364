//! Sprite CRUD, auth and bad input against a real spritesd (spec §2, §11).

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn crud_round_trip() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    let v = api.create("alpha").await;
    for field in [
        "id",
        "name",
        "organization",
        "status",
        "url",
        "url_settings",
        "created_at",
        "updated_at",
        "labels",
    ] {
        assert!(v.get(field).is_some(), "Sprite JSON lacks {field}: {v}");
    }
    assert_eq!(v["name"], "alpha");
    assert_eq!(v["status"], "running");
    assert_eq!(v["organization"], "personal");
    assert!(v["id"].as_str().unwrap().starts_with("sprite-"));
    for ts in [
        "created_at",
        "updated_at",
        "last_running_at",
        "last_started_at",
    ] {
        let t = v[ts].as_str().unwrap_or_else(|| panic!("{ts} missing"));
        assert!(
            sprites_api::timefmt::parse_millis(t).is_some(),
            "{ts}={t} is not RFC 3339"
        );
    }

    let (st, got) = api.json(Method::GET, "/v1/sprites/alpha", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["id"], v["id"]);

    let (st, upd) = api
        .json(
            Method::PUT,
            "/v1/sprites/alpha",
            Some(json!({"url_settings": {"auth": "public"}, "labels": ["prod", "x"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{upd}");
    assert_eq!(upd["url_settings"]["auth"], "public");
    assert_eq!(upd["labels"], json!(["prod", "x"]));
    let (_, again) = api.json(Method::GET, "/v1/sprites/alpha", None).await;
    assert_eq!(again["labels"], json!(["prod", "x"]), "update is persisted");
    let (st, cleared) = api
        .json(
            Method::PUT,
            "/v1/sprites/alpha",
            Some(json!({"clear_labels": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cleared["labels"], json!([]));

    let resp = api
        .req(Method::DELETE, "/v1/sprites/alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, err) = api.json(Method::GET, "/v1/sprites/alpha", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");
    // The disk and runtime files are gone.
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("sprites"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("run")).unwrap().count(),
        0
    );
    assert!(
        s.sprite_pids().is_empty(),
        "no process of the sprite is left"
    );
}

#[tokio::test]
async fn list_pages_prefix_and_clamp() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    for n in ["web-1", "web-2", "web-3", "db-1"] {
        api.create(n).await;
    }
    let (st, page) = api
        .json(Method::GET, "/v1/sprites?prefix=web-&max_results=2", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let names: Vec<&str> = page["sprites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert_eq!(page["has_more"], true);
    let tok = page["next_continuation_token"].as_str().unwrap();
    let (_, next) = api
        .json(
            Method::GET,
            &format!("/v1/sprites?prefix=web-&max_results=2&continuation_token={tok}"),
            None,
        )
        .await;
    let names: Vec<&str> = next["sprites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-3"]);
    assert_eq!(next["has_more"], false);
    assert!(next["next_continuation_token"].is_null());
    // Go sends 100: clamped, not rejected. Counters top-level and nested.
    let (st, all) = api
        .json(Method::GET, "/v1/sprites?max_results=100", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(all["sprites"].as_array().unwrap().len(), 4);
    assert_eq!(all["running"], 4);
    assert_eq!(all["org"]["running"], 4);
    assert_eq!(all["org"]["name"], "personal");
    let (st, bad) = api
        .json(Method::GET, "/v1/sprites?max_results=lots", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    let (st, _) = api
        .json(Method::GET, "/v1/sprites?continuation_token=%%%", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn auth_on_every_route_and_org_isolation() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("mine").await;
    let anon = reqwest::Client::new();
    for (m, p) in [
        (Method::GET, "/v1/sprites"),
        (Method::POST, "/v1/sprites"),
        (Method::GET, "/v1/sprites/mine"),
        (Method::DELETE, "/v1/sprites/mine"),
        (Method::POST, "/v1/sprites/mine/exec?cmd=true"),
        (Method::GET, "/v1/sprites/mine/control"),
        (Method::GET, "/v1/no-such-route"),
    ] {
        let r = anon
            .request(m.clone(), format!("{}{p}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{m} {p}");
        assert!(r.headers().contains_key("sprite-version"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        let r = anon
            .request(m.clone(), format!("{}{p}", s.url))
            .bearer_auth("personal/x/y/z")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "forged token on {m} {p}"
        );
    }
    // A token with the right ids but a wrong secret.
    let mut parts: Vec<&str> = s.token.split('/').collect();
    parts[3] = "not-the-secret";
    let forged = parts.join("/");
    let (st, _) = Api::with_token(&s, &forged)
        .json(Method::GET, "/v1/sprites", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let other = Api::with_token(&s, &s.create_token("acme").unwrap());
    let (st, _) = other.json(Method::GET, "/v1/sprites/mine", None).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "another org's sprite is invisible"
    );
    let (st, _) = other.json(Method::DELETE, "/v1/sprites/mine", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let r = other
        .req(Method::POST, "/v1/sprites/mine/exec?cmd=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, list) = other.json(Method::GET, "/v1/sprites", None).await;
    assert_eq!(list["sprites"].as_array().unwrap().len(), 0);
    // Names are per org.
    let v = other.create("mine").await;
    assert_eq!(v["organization"], "acme");
    let (_, mine) = api.json(Method::GET, "/v1/sprites/mine", None).await;
    assert_ne!(mine["id"], v["id"]);
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_server_keeps_serving() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("taken").await;
    let (st, e) = api
        .json(Method::POST, "/v1/sprites", Some(json!({"name": "taken"})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    for bad in [
        "",
        "UPPER",
        "under_score",
        "-dash",
        "dash-",
        "dot.ted",
        &"a".repeat(64),
    ] {
        let (st, e) = api
            .json(Method::POST, "/v1/sprites", Some(json!({ "name": bad })))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "name {bad:?}: {e}");
        assert_eq!(e["error"], "invalid_name");
        assert!(e["message"].as_str().unwrap().len() > 10);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"name\":".to_vec()),
        ("not an object", b"[1,2]".to_vec()),
        ("missing name", b"{}".to_vec()),
        ("wrong type", b"{\"name\":5}".to_vec()),
    ];
    for (what, body) in cases {
        let r = api
            .req(Method::POST, "/v1/sprites")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let e: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|_| panic!("{what}: JSON error body"));
        assert_eq!(e["error"], "bad_request", "{what}");
    }
    let big = vec![b'x'; 2 << 20];
    let r = api
        .req(Method::POST, "/v1/sprites")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "payload_too_large");
    let (st, e) = api
        .json(
            Method::PUT,
            "/v1/sprites/taken",
            Some(json!({"url_settings": {"auth": "everyone"}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let (st, e) = api.json(Method::GET, "/v1/sprites/ghost", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], "not_found");
    let r = api
        .req(Method::POST, "/v1/sprites/ghost/exec?cmd=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (st, e) = api.json(Method::PATCH, "/v1/sprites/taken", None).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{e}");
    // The control connection is a WebSocket: a plain GET is a clear 400 in the JSON shape.
    let (st, e) = api
        .json(Method::GET, "/v1/sprites/taken/control", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"], "bad_request");
    let r = api
        .req(Method::POST, "/v1/sprites/taken/exec?cmd=true&tty=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "HTTP exec refuses tty");
    let r = api
        .req(Method::POST, "/v1/sprites/taken/exec?cmd=env&env=NOEQUALS")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Still serving.
    let out = api.exec("taken", &["echo", "still here"]).await;
    assert_eq!(out.stdout, "still here\n");
}
