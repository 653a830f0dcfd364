//! Checkpoints in an S3-compatible object store: a real S3 server (`s3s-fs`, installed by
//! `scripts/setup.sh`) on a local port, spoken to by spritesd through `object_store`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};

struct S3 {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return p.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/root/.cargo/bin", "/usr/local/bin"])
    {
        let p = std::path::Path::new(dir).join("s3s-fs");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "s3s-fs not found: run scripts/setup.sh or \
         `cargo install s3s-fs@0.14.1 --locked --features binary`"
    );
}

fn start_s3() -> S3 {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("sprites-ck")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(s3s_bin())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "spritesAK", "--secret-key", "spritesSECRET"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    S3 { child, root, port }
}

fn objects(s3: &S3, under: &str) -> usize {
    fn count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&s3.root.path().join("sprites-ck").join(under))
}

#[tokio::test]
async fn checkpoints_in_s3() {
    let s3 = start_s3();
    // This test binary runs only this test, so the environment is ours to set; spritesd
    // inherits it, as a user would configure it.
    std::env::set_var("AWS_ACCESS_KEY_ID", "spritesAK");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "spritesSECRET");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT", format!("http://127.0.0.1:{}", s3.port));
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    // The data dir on XFS: the disk is cloned while still and uploaded from the clone with
    // the sprite running (a remote store's uploads take network time).
    let vol = sprites_testing::XfsVolume::new(40).unwrap();
    let s = TestServer::start_in(vol.path(), &["--object-store", "s3://sprites-ck/host1"]).unwrap();
    let api = Api::new(&s);
    api.create("s3ck").await;
    api.sh(
        "s3ck",
        "echo in-s3 > ~/f && head -c 3M /dev/urandom > ~/blob",
    )
    .await;

    let r = api
        .req(Method::POST, "/v1/sprites/s3ck/checkpoint")
        .json(&serde_json::json!({"comment": "s3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Checkpoint v0 created successfully"),
        "{text}\n{}",
        s.log()
    );
    let chunks = objects(&s3, "host1/chunks");
    assert!(chunks >= 3, "chunks are in the S3 bucket: {chunks}");
    assert_eq!(objects(&s3, "host1/manifests"), 1);
    assert!(
        !s.data_dir.join("objects").exists(),
        "nothing stored locally"
    );

    api.sh("s3ck", "rm ~/f ~/blob && echo after > ~/g").await;
    let r = api
        .req(Method::POST, "/v1/sprites/s3ck/checkpoints/v0/restore")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("Restore from v0 complete"), "{text}");
    let o = api
        .sh(
            "s3ck",
            "cat ~/f; stat -c %s ~/blob; ls ~/g 2>/dev/null | wc -l",
        )
        .await;
    assert_eq!(o.stdout, "in-s3\n3145728\n0\n", "{o:?}");

    // A restarted server finds its checkpoints (and chunks) in the bucket.
    let mut s = s;
    s.restart().unwrap();
    let api = Api::new(&s);
    let r = api
        .req(Method::POST, "/v1/sprites/s3ck/checkpoint")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Checkpoint v1 created successfully"),
        "{text}"
    );
    // Chunks already in the bucket are not uploaded again: only what changed since (logs,
    // the journal of the boot after the restore) is new.
    let stored: f64 = text
        .split("stored ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(stored < 20.0, "{text}");
    assert!(text.contains("from a clone"), "{text}");

    // Deleting the sprite empties the bucket of its data.
    let (st, _) = api.json(Method::DELETE, "/v1/sprites/s3ck", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(objects(&s3, "host1/chunks"), 0);
    assert_eq!(objects(&s3, "host1/manifests"), 0);
}
