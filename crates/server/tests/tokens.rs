//! Org tokens minted, listed and revoked through the API (the Go SDK's CreateToken path),
//! and the sprite health check (the JS SDK's checkSprite).

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn admin_tokens_mint_list_and_revoke_tokens() {
    let s = TestServer::start().unwrap();
    let admin = Api::new(&s);
    let slug = s.token.split('/').next().unwrap().to_string();
    let path = format!("/v1/organizations/{slug}/tokens");

    let (st, v) = admin
        .json(Method::POST, &path, Some(json!({"description": "ci"})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let minted = v["token"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["admin"], false);
    // The new token works for sprites, but may not manage tokens.
    let ci = Api::with_token(&s, &minted);
    let (st, _) = ci.json(Method::GET, "/v1/sprites", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = ci.json(Method::POST, &path, Some(json!({}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Listed without secrets.
    let (_, v) = admin.json(Method::GET, &path, None).await;
    let text = v.to_string();
    assert!(
        text.contains(&id)
            && text.contains("\"ci\"")
            && !text.contains(minted.rsplit('/').next().unwrap()),
        "{v}"
    );
    // Another org's path is not found; the last admin token cannot be revoked.
    let (st, _) = admin
        .json(Method::GET, "/v1/organizations/someone-else/tokens", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let admin_id = s.token.split('/').nth(2).unwrap();
    let r = admin
        .req(Method::DELETE, &format!("{path}/{admin_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Revoked: refused at once.
    let r = admin
        .req(Method::DELETE, &format!("{path}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, _) = ci.json(Method::GET, "/v1/sprites", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let r = admin
        .req(Method::DELETE, &format!("{path}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (st, _) = admin
        .json(Method::POST, &path, Some(json!({"description": "a\nb"})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn check_says_whether_a_sprite_answers() {
    let s = TestServer::start_with(&["--warm-after", "1h"]).unwrap();
    let api = Api::new(&s);
    api.create("chk").await;
    let (st, v) = api.json(Method::GET, "/v1/sprites/chk/check", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["sprite_name"].as_str()),
        (Some("healthy"), Some("chk"))
    );
    assert!(v["reason"].is_null() && v["elapsed"].is_u64() && v["checked_at"].is_string());
    api.json(
        Method::POST,
        "/v1/sprites/chk/sleep",
        Some(json!({"state": "cold"})),
    )
    .await;
    let (_, v) = api.json(Method::GET, "/v1/sprites/chk/check", None).await;
    assert_eq!(v["status"], "hibernated");
    let (st, _) = api.json(Method::GET, "/v1/sprites/none/check", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
