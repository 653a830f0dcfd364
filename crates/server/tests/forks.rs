//! Sprites made from other sprites (forks of a checkpoint or of the sprite as it is now),
//! org templates that outlive their source, and sleeping on request.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn checkpoint(api: &Api, name: &str, comment: &str) -> String {
    let r = api
        .req(Method::POST, &format!("/v1/sprites/{name}/checkpoint"))
        .json(&json!({"comment": comment}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let id = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() > 1 && w.starts_with('v') && w[1..].bytes().all(|b| b.is_ascii_digit()))
        .expect("a checkpoint id")
        .to_string();
    assert!(text.contains("complete"), "{text}");
    id
}

#[tokio::test]
async fn forks_start_from_a_checkpoint_or_from_now_and_are_independent() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("a").await;
    api.sh("a", "echo one > ~/f").await;
    let v = checkpoint(&api, "a", "one").await;
    api.sh("a", "echo two > ~/f").await;

    // From the checkpoint: the file as it was then.
    let (st, b) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "b", "source": {"sprite": "a", "checkpoint": v}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(api.sh("b", "cat ~/f").await.stdout, "one\n");
    // From now: the file as it is, and no checkpoint is left behind in the source.
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "c", "source": {"sprite": "a"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(api.sh("c", "cat ~/f").await.stdout, "two\n");
    let (_, list) = api
        .json(Method::GET, "/v1/sprites/a/checkpoints", None)
        .await;
    assert!(!list.to_string().contains("snapshot for a fork"), "{list}");

    // Independent both ways; its own identity.
    api.sh("c", "echo from-c > ~/f").await;
    api.sh("a", "echo from-a > ~/g").await;
    assert_eq!(api.sh("a", "cat ~/f").await.stdout, "two\n");
    assert_eq!(
        api.sh("c", "cat ~/g 2>/dev/null || echo none").await.stdout,
        "none\n"
    );
    assert_eq!(api.sh("c", "hostname").await.stdout, "c\n");
    assert_ne!(b["id"], json!(null));

    // A consistent fork of a sprite being written to: the fork's file is a whole prefix.
    api.sh("a", "(i=0; while [ $i -lt 100000 ]; do echo line-$i; i=$((i+1)); done > ~/stream) >/dev/null 2>&1 &").await;
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "d", "source": {"sprite": "a"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let o = api.sh("d", "test -f ~/stream && awk '{ if ($0 != \"line-\" NR-1) { bad=1 } } END { print (bad ? \"torn\" : \"ok\") }' ~/stream").await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");

    // Bad sources are clear errors and leave no sprite.
    for (body, want) in [
        (
            json!({"name": "e", "source": {"sprite": "nope"}}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"name": "e", "source": {"sprite": "a", "checkpoint": "v99"}}),
            StatusCode::NOT_FOUND,
        ),
        (json!({"name": "e", "source": {}}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "e", "source": {"template": "none"}}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (st, v) = api
            .json(Method::POST, "/v1/sprites", Some(body.clone()))
            .await;
        assert_eq!(st, want, "{body}: {v}");
    }
    let (st, _) = api.json(Method::GET, "/v1/sprites/e", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Another org cannot fork a sprite of this one.
    let other = Api::with_token(&s, &s.create_token("other").unwrap());
    let (st, _) = other
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "x", "source": {"sprite": "a"}})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn templates_outlive_their_source() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("golden").await;
    api.sh("golden", "mkdir -p ~/env && echo ready > ~/env/marker")
        .await;
    let (st, t) = api
        .json(
            Method::PUT,
            "/v1/templates/python-ml",
            Some(json!({"sprite": "golden"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(
        (t["name"].as_str(), t["source_sprite"].as_str()),
        (Some("python-ml"), Some("golden"))
    );
    let (_, l) = api.json(Method::GET, "/v1/templates", None).await;
    assert_eq!(l["templates"][0]["name"], "python-ml");

    // The source goes; the template still stamps out sprites.
    let r = api
        .req(Method::DELETE, "/v1/sprites/golden")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for n in ["w1", "w2"] {
        let (st, v) = api
            .json(
                Method::POST,
                "/v1/sprites",
                Some(json!({"name": n, "source": {"template": "python-ml"}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(api.sh(n, "cat ~/env/marker").await.stdout, "ready\n");
    }
    // Replaced from another sprite's checkpoint, then deleted.
    api.sh("w1", "echo v2 > ~/env/marker").await;
    let v = checkpoint(&api, "w1", "v2").await;
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/templates/python-ml",
            Some(json!({"sprite": "w1", "checkpoint": v})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "w3", "source": {"template": "python-ml"}})),
        )
        .await;
    assert_eq!(v["name"], "w3");
    assert_eq!(api.sh("w3", "cat ~/env/marker").await.stdout, "v2\n");
    // A restart keeps templates (their chunks are not pruned).
    let mut s = s;
    s.restart().unwrap();
    let api = Api::new(&s);
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "w4", "source": {"template": "python-ml"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(api.sh("w4", "cat ~/env/marker").await.stdout, "v2\n");
    let r = api
        .req(Method::DELETE, "/v1/templates/python-ml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = api
        .req(Method::DELETE, "/v1/templates/python-ml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (st, _) = api
        .json(
            Method::PUT,
            "/v1/templates/Bad Name",
            Some(json!({"sprite": "w1"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_sprite_sleeps_when_asked() {
    let s = TestServer::start_with(&["--warm-after", "1h", "--cold-after", "1h"]).unwrap();
    let api = Api::new(&s);
    api.create("z").await;
    api.sh("z", "echo kept > ~/f").await;
    let (st, v) = api
        .json(Method::POST, "/v1/sprites/z/sleep", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "warm");
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites/z/sleep",
            Some(json!({"state": "cold"})),
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("cold")),
        "{v}"
    );
    // The next request wakes it, disk intact.
    assert_eq!(api.sh("z", "cat ~/f").await.stdout, "kept\n");
    // Busy with an open session: refused unless forced.
    let busy = {
        let api = Api::new(&s);
        tokio::spawn(async move { api.sh("z", "sleep 5").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (st, v) = api
        .json(Method::POST, "/v1/sprites/z/sleep", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites/z/sleep",
            Some(json!({"state": "cold", "force": true})),
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("cold")),
        "{v}"
    );
    let _ = busy.await;
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites/z/sleep",
            Some(json!({"state": "deep"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_sprite_has_its_own_idle_times() {
    let s = TestServer::start_with(&[
        "--warm-after",
        "1h",
        "--cold-after",
        "1h",
        "--idle-tick",
        "200ms",
    ])
    .unwrap();
    let api = Api::new(&s);
    api.create("nap").await;
    api.create("awake").await;
    let (st, v) = api
        .json(
            Method::PUT,
            "/v1/sprites/nap",
            Some(json!({"idle": {"warm_after": "1s", "cold_after": "2s"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["idle"], json!({"warm_after": "1s", "cold_after": "2s"}));
    let status = |v: serde_json::Value| v["status"].as_str().unwrap_or("").to_string();
    let mut seen = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (_, v) = api.json(Method::GET, "/v1/sprites/nap", None).await;
        let st = status(v);
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == "cold" {
            break;
        }
    }
    assert!(
        seen.contains(&"warm".to_string()) && seen.last().map(String::as_str) == Some("cold"),
        "{seen:?}"
    );
    let (_, v) = api.json(Method::GET, "/v1/sprites/awake", None).await;
    assert_eq!(
        status(v),
        "running",
        "the server's 1h applies to the others"
    );
    // Survives a restart; null goes back to the server's.
    let mut s = s;
    s.restart().unwrap();
    let api = Api::new(&s);
    let (_, v) = api.json(Method::GET, "/v1/sprites/nap", None).await;
    assert_eq!(v["idle"]["warm_after"], "1s");
    let (st, v) = api
        .json(Method::PUT, "/v1/sprites/nap", Some(json!({"idle": null})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v.get("idle").is_none(), "{v}");
    for bad in [
        json!({"warm_after": "0s"}),
        json!({"cold_after": "30d"}),
        json!({"warm_after": "soon"}),
    ] {
        let (st, v) = api
            .json(Method::PUT, "/v1/sprites/nap", Some(json!({"idle": bad})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
}

#[tokio::test]
async fn kill_9_during_a_fork_leaves_no_half_sprite() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("big").await;
    api.sh(
        "big",
        "head -c 400M /dev/urandom > ~/blob && md5sum ~/blob | cut -c1-32 > ~/sum && sync",
    )
    .await;
    let want = api.sh("big", "cat ~/sum").await.stdout;
    // Without a pool the fork copies 400 MiB: long enough to be cut short.
    let api2 = Api::new(&s);
    let fork = tokio::spawn(async move {
        api2.json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "half", "source": {"sprite": "big"}})),
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let mut s = s;
    s.kill9();
    let _ = fork.await;
    s.restart().unwrap();
    let api = Api::new(&s);
    let (st, _) = api.json(Method::GET, "/v1/sprites/half", None).await;
    if st == StatusCode::OK {
        // It finished before the kill: then it is whole.
        assert_eq!(
            api.sh("half", "md5sum ~/blob | cut -c1-32").await.stdout,
            want
        );
    } else {
        assert_eq!(st, StatusCode::NOT_FOUND);
        // No directory without a record is left, and the name is free again.
        let (_, list) = api.json(Method::GET, "/v1/sprites", None).await;
        let records = list["sprites"].as_array().unwrap().len();
        let dirs = std::fs::read_dir(s.data_dir.join("sprites"))
            .unwrap()
            .count();
        assert_eq!(dirs, records, "leftover sprite directories");
        let (st, v) = api
            .json(
                Method::POST,
                "/v1/sprites",
                Some(json!({"name": "half", "source": {"sprite": "big"}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(
            api.sh("half", "md5sum ~/blob | cut -c1-32").await.stdout,
            want
        );
    }
    // The source is untouched either way.
    assert_eq!(
        api.sh("big", "md5sum ~/blob | cut -c1-32").await.stdout,
        want
    );
}
