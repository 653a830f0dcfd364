//! The storage pool: on a data dir without reflinks, spritesd makes a file-backed XFS pool,
//! keeps sprite disks and checkpoint chunks there (so checkpoints track changes), mounts it
//! again at every start (also after kill -9), and moves an existing data dir into it with
//! nothing lost.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn fs_type(p: &std::path::Path) -> String {
    let o = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn umount(s: &TestServer) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(s.data_dir.join("pool"))
        .status();
}

#[tokio::test]
async fn a_data_dir_without_reflinks_gets_a_pool_and_moves_into_it() {
    let probe = tempfile::tempdir().unwrap();
    if sprites_storage::tracking::supported(probe.path()) {
        eprintln!("skipping: /tmp has reflinks, no pool is made there");
        return;
    }
    // A data dir in the old layout first: a sprite with a file and a checkpoint.
    let mut s = TestServer::start_with(&["--storage-pool", "none"]).unwrap();
    let api = Api::new(&s);
    api.create("keep").await;
    api.sh("keep", "echo before-pool > ~/f").await;
    let r = api
        .req(Method::POST, "/v1/sprites/keep/checkpoint")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("complete"));
    assert!(s.data_dir.join("sprites").exists() && !s.data_dir.join("pool.xfs").exists());
    // Stopped, so it can move.
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites/keep/sleep",
            Some(json!({"state": "cold"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    s.terminate().unwrap();

    // The default: a pool is made, and the data moves in.
    let mut s = s.with_extra(&["--storage-pool", "auto", "--storage-pool-gb", "20"]);
    s.restart().unwrap();
    let log = s.log();
    assert!(log.contains("made a reflink storage pool"), "{log}");
    assert!(
        log.contains("moved sprite disks and checkpoints into the storage pool"),
        "{log}"
    );
    assert!(
        log.contains("checkpoints track changes by reflink"),
        "{log}"
    );
    assert_eq!(fs_type(&s.data_dir.join("pool")), "xfs");
    assert!(!s.data_dir.join("sprites").exists() && s.data_dir.join("pool/sprites").exists());
    let api = Api::new(&s);
    assert_eq!(api.sh("keep", "cat ~/f").await.stdout, "before-pool\n");
    let (_, v) = api
        .json(Method::GET, "/v1/sprites/keep/checkpoints", None)
        .await;
    let id = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] != "Current")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.sh("keep", "echo after > ~/f").await;
    let r = api
        .req(
            Method::POST,
            &format!("/v1/sprites/keep/checkpoints/{id}/restore"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("complete"));
    assert_eq!(
        api.sh("keep", "cat ~/f").await.stdout,
        "before-pool\n",
        "the moved checkpoint restores"
    );

    // Forks in the pool: from now (one reflink clone of the fresh snapshot) and from the
    // older checkpoint (chunk by chunk); each sees its own state.
    api.sh("keep", "echo now > ~/f && sync").await;
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "fork-now", "source": {"sprite": "keep"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(api.sh("fork-now", "cat ~/f").await.stdout, "now\n");
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites",
            Some(json!({"name": "fork-old", "source": {"sprite": "keep", "checkpoint": id}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(api.sh("fork-old", "cat ~/f").await.stdout, "before-pool\n");
    api.sh("fork-now", "echo mine > ~/f").await;
    assert_eq!(api.sh("keep", "cat ~/f").await.stdout, "now\n");

    // kill -9, restart: the pool (still mounted) is used again, nothing lost.
    api.sh("keep", "echo durable > ~/g && sync").await;
    s.kill9();
    s.restart().unwrap();
    let api = Api::new(&s);
    assert_eq!(api.sh("keep", "cat ~/g").await.stdout, "durable\n");
    // Even with --storage-pool none, a pool that exists holds the data and is used.
    s.terminate().unwrap();
    let mut s = s.with_extra(&["--storage-pool", "none"]);
    s.restart().unwrap();
    let api = Api::new(&s);
    assert_eq!(api.sh("keep", "cat ~/g").await.stdout, "durable\n");
    drop(api);
    s.terminate().unwrap();
    umount(&s);
}
