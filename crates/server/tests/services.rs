//! Services (spec §8): the public API and `sprite-env` inside, restarts, boot order, logs.

mod common;

use std::time::{Duration, Instant};

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

async fn svc(api: &Api, sprite: &str, name: &str) -> Value {
    let (st, v) = api
        .json(
            Method::GET,
            &format!("/v1/sprites/{sprite}/services/{name}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn service_api_lifecycle() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("svc").await;
    let r = api
        .req(Method::PUT, "/v1/sprites/svc/services/web?duration=1s")
        .json(&json!({"cmd": "python3", "args": ["-u", "-c", "import time\nprint('hello from web', flush=True)\nwhile True: time.sleep(1)"], "http_port": 8080, "env": {"X": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let events = ndjson(&r.text().await.unwrap());
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"started"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == "hello from web\n"),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "complete");
    assert_eq!(
        last["log_files"]["combined"],
        "/.sprite/logs/services/web.log"
    );
    assert!(last["timestamp"].is_i64());

    let (st, list) = api
        .json(Method::GET, "/v1/sprites/svc/services", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(list.is_array(), "a bare array: {list}");
    let web = svc(&api, "svc", "web").await;
    assert_eq!(web["state"]["status"], "running");
    assert!(web["state"]["pid"].is_u64());
    assert!(web["args"].is_array() && web["needs"].is_array());
    assert_eq!(web["http_port"], 8080);

    // Only one service may own the URL port.
    let r = api
        .req(Method::PUT, "/v1/sprites/svc/services/other")
        .json(&json!({"cmd": "sleep", "args": ["100"], "http_port": 9000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = api
        .req(Method::PUT, "/v1/sprites/svc/services/bad")
        .json(&json!({"args": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = api
        .req(Method::POST, "/v1/sprites/svc/services/web/stop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let types: Vec<String> = ndjson(&r.text().await.unwrap())
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        types.contains(&"stopping".to_string()) && types.contains(&"stopped".to_string()),
        "{types:?}"
    );
    assert_eq!(types.last().map(String::as_str), Some("complete"));
    assert_eq!(svc(&api, "svc", "web").await["state"]["status"], "stopped");
    let r = api
        .req(Method::POST, "/v1/sprites/svc/services/web/stop")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "stop of a stopped service"
    );
    let r = api
        .req(
            Method::POST,
            "/v1/sprites/svc/services/web/start?duration=500ms",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.text().await;
    assert_eq!(svc(&api, "svc", "web").await["state"]["status"], "running");

    let r = api
        .req(Method::POST, "/v1/sprites/svc/services/signal")
        .json(&json!({"name": "web", "signal": "HUP"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = api
        .req(Method::POST, "/v1/sprites/svc/services/signal")
        .json(&json!({"name": "web", "signal": "BOGUS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = api
        .req(Method::GET, "/v1/sprites/svc/services/web/logs?lines=5")
        .send()
        .await
        .unwrap();
    let logs = ndjson(&r.text().await.unwrap());
    assert!(
        logs.iter().any(|e| e["data"] == "hello from web\n"),
        "{logs:?}"
    );
    let o = api
        .exec("svc", &["cat", "/.sprite/logs/services/web.log"])
        .await;
    assert!(o.stdout.contains("[stdout] hello from web"), "{o:?}");

    let r = api
        .req(Method::DELETE, "/v1/sprites/svc/services/web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, _) = api
        .json(Method::GET, "/v1/sprites/svc/services/web", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        api.exec("svc", &["pgrep", "-c", "-f", "hello from web"])
            .await
            .stdout,
        "0\n"
    );
}

#[tokio::test]
async fn crashes_restart_and_services_come_back_after_boot() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("boot").await;
    // `needs` order: app needs db; both come back after the sprite restarts.
    for (name, cmd, needs) in [
        (
            "db",
            "echo db $(date +%s%N) >> /tmp/order; exec sleep 1000",
            vec![],
        ),
        (
            "app",
            "echo app $(date +%s%N) >> /tmp/order; exec sleep 1000",
            vec!["db"],
        ),
    ] {
        let r = api
            .req(
                Method::PUT,
                &format!("/v1/sprites/boot/services/{name}?duration=0s"),
            )
            .json(&json!({"cmd": "bash", "args": ["-c", cmd], "needs": needs}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let _ = r.text().await;
    }
    // A crashing service is restarted with a count.
    let r = api
        .req(Method::PUT, "/v1/sprites/boot/services/crashy?duration=0s")
        .json(&json!({"cmd": "sh", "args": ["-c", "exit 3"]}))
        .send()
        .await
        .unwrap();
    let _ = r.text().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = svc(&api, "boot", "crashy").await;
        if v["state"]["restart_count"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.exec("boot", &["rm", "-f", "/tmp/order"]).await;
    let r = api
        .req(Method::POST, "/v1/sprites/boot/restart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (db, app) = (
            svc(&api, "boot", "db").await,
            svc(&api, "boot", "app").await,
        );
        // "running" comes as soon as a service is spawned, before its first line runs.
        let written = api.exec("boot", &["cat", "/tmp/order"]).await.stdout;
        if db["state"]["status"] == "running"
            && app["state"]["status"] == "running"
            && written.lines().count() == 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "services not back after boot: {db} {app} {written:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = api.exec("boot", &["cat", "/tmp/order"]).await;
    let mut rows: Vec<(u128, &str)> = o
        .stdout
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap();
            (f.next().unwrap().parse().unwrap(), name)
        })
        .collect();
    rows.sort();
    let order: Vec<&str> = rows.iter().map(|r| r.1).collect();
    assert_eq!(order, ["db", "app"], "needs order on boot: {o:?}");
}

#[tokio::test]
async fn sprite_env_inside_the_sprite() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("inside").await;
    let o = api
        .sh(
            "inside",
            "sprite-env services create tick --cmd sh --args -c,'echo tick; sleep 1000'",
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("tick"), "{o:?}");
    let o = api.sh("inside", "sprite-env services list").await;
    assert!(o.stdout.starts_with("tick\trunning"), "{o:?}");
    let o = api
        .sh(
            "inside",
            "sprite-env services stop tick && sprite-env services list",
        )
        .await;
    assert!(o.stdout.contains("tick\tstopped"), "{o:?}");
    let o = api.sh("inside", "sprite-env services logs tick").await;
    assert!(o.stdout.contains("tick"), "{o:?}");
    let o = api
        .sh(
            "inside",
            "sprite-env curl -X PUT -d '{\"expire\":60}' /v1/tasks/x && sprite-env curl /v1/tasks",
        )
        .await;
    assert!(o.stdout.contains("\"name\":\"x\""), "{o:?}");
    let o = api.sh("inside", "sprite-env services delete tick && sprite-env services list | wc -l && sprite-env services start nope").await;
    assert!(o.stdout.starts_with("0\n"), "{o:?}");
    assert_ne!(o.code, Some(0));
    assert!(o.stderr.contains("not found"), "{o:?}");
    assert_eq!(
        api.exec("inside", &["cat", "/.sprite/version.txt"])
            .await
            .stdout
            .trim(),
        env!("CARGO_PKG_VERSION")
    );
}
