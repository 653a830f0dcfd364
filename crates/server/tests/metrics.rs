//! `/metrics` on its own listener: the figures follow what happens (sprites by state, wakes
//! and their time, requests by route template), in Prometheus' text format, and the public
//! API does not serve them.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_follow_sprites_wakes_and_requests() {
    let s = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]).unwrap();
    let api = Api::new(&s);
    let addr = std::fs::read_to_string(s.data_dir.join("spritesd.metrics-addr")).unwrap();
    let scrape = || async {
        let r = reqwest::get(format!("http://{}/metrics", addr.trim()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        r.text().await.unwrap()
    };
    let before = scrape().await;
    assert!(before.trim_end().ends_with("# EOF"));
    assert_eq!(
        value(&before, "sprites_sprites{state=\"running\"}"),
        Some(0.0)
    );

    api.create("m1").await;
    api.create("m2").await;
    assert_eq!(api.exec("m1", &["true"]).await.code, Some(0));
    // m2 goes cold, m1 warm and then is woken by an exec.
    for (name, state) in [("m2", "cold"), ("m1", "warm")] {
        let r = api
            .req(Method::POST, &format!("/v1/sprites/{name}/sleep"))
            .json(&serde_json::json!({ "state": state }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    let mid = scrape().await;
    assert_eq!(
        value(&mid, "sprites_sprites{state=\"warm\"}"),
        Some(1.0),
        "{mid}"
    );
    assert_eq!(
        value(&mid, "sprites_sprites{state=\"cold\"}"),
        Some(1.0),
        "{mid}"
    );
    assert_eq!(api.exec("m1", &["true"]).await.code, Some(0));

    let after = scrape().await;
    assert_eq!(
        value(&after, "sprites_sprites{state=\"running\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(&after, "sprites_wakes_total{from=\"warm\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        value(&after, "sprites_wake_duration_seconds_count{from=\"warm\"}"),
        Some(1.0)
    );
    let exec_route = "sprites_http_requests_total{route=\"/v1/sprites/{name}/exec\",method=\"POST\",code=\"2xx\"}";
    assert_eq!(value(&after, exec_route), Some(2.0), "{after}");
    assert_eq!(
        value(
            &after,
            "sprites_http_requests_total{route=\"/v1/sprites\",method=\"POST\",code=\"2xx\"}"
        ),
        Some(2.0)
    );
    // A refused request is counted by its class, and no sprite name is ever a label.
    let r = api
        .req(Method::GET, "/v1/sprites/nope-404")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let last = scrape().await;
    assert_eq!(
        value(
            &last,
            "sprites_http_requests_total{route=\"/v1/sprites/{name}\",method=\"GET\",code=\"4xx\"}"
        ),
        Some(1.0),
        "{last}"
    );
    assert!(!last.contains("m1") && !last.contains("nope-404"));
    // Not on the public API.
    let r = reqwest::get(format!("{}/metrics", s.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
