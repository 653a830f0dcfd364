//! spritesd with `--backend microvm`: sprites are QEMU microVMs (software emulation here), with
//! their own kernel, network policy, checkpoints, and sleep/wake over QMP.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn microvm_sprites_through_the_api() {
    // On XFS, so checkpoints of a disk QEMU writes are tracked by reflink too.
    let vol = sprites_testing::XfsVolume::new(40).unwrap();
    // A provider for the gateway: says whether the connector's key arrived.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_url = format!("http://{}", up.local_addr().unwrap());
    let app = axum::Router::new().fallback(|h: axum::http::HeaderMap| async move {
        if h.get("x-api-key").is_some_and(|v| v == "sk-vm-key") {
            "key arrived"
        } else {
            "no key"
        }
    });
    tokio::spawn(async move { axum::serve(up, app).await.unwrap() });
    let provider = format!("anthropic.base_url={up_url}");
    let s = TestServer::start_in(
        vol.path(),
        &[
            "--gateway-allow-private",
            "--provider",
            &provider,
            "--backend",
            "microvm",
            "--warm-after",
            "2s",
            "--idle-tick",
            "200ms",
        ],
    )
    .unwrap();
    assert!(s.log().contains("microVM sprites"), "{}", s.log());
    let api = Api::new(&s);
    api.create("vm").await;
    let o = api
        .sh(
            "vm",
            "uname -r; id -un; cat /etc/resolv.conf; echo kept > ~/f",
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let host = nix::sys::utsname::uname().unwrap();
    let mut lines = o.stdout.lines();
    let kernel = lines.next().unwrap();
    assert!(
        kernel.contains("cloud-amd64") && kernel != host.release().to_string_lossy(),
        "{o:?}"
    );
    assert_eq!(lines.next(), Some("sprite"));
    assert_eq!(lines.next(), Some("nameserver 10.0.0.2"));

    // The guest reaches the Connectors gateway like any sprite, and never holds the key.
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/oauth/connections/api_key",
            Some(json!({"provider": "anthropic", "api_key": "sk-vm-key", "access_policy": {"allow_all": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let o = api
        .sh("vm", "curl -s $SPRITES_GATEWAY_URL/v1/gateway/anthropic/v1/models; echo; env | grep -c sk-vm-key")
        .await;
    assert_eq!(o.stdout, "key arrived\n0\n", "{o:?}");

    // The network policy applies to the guest as to any sprite: blocked names are refused.
    let (st, _) = api
        .json(
            Method::POST,
            "/v1/sprites/vm/policy/network",
            Some(json!({"rules": [{"domain": "blocked.example", "action": "deny"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let o = api
        .sh(
            "vm",
            "getent hosts blocked.example >/dev/null && echo resolved || echo refused",
        )
        .await;
    assert_eq!(o.stdout, "refused\n", "{o:?}");

    // Checkpoint (the guest freezes its own filesystem) and restore.
    let r = api
        .req(Method::POST, "/v1/sprites/vm/checkpoint")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Checkpoint v0 created successfully"));
    api.sh("vm", "echo changed > ~/f").await;
    let r = api
        .req(Method::POST, "/v1/sprites/vm/checkpoints/v0/restore")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("Restore from v0 complete"));
    assert_eq!(api.sh("vm", "cat ~/f").await.stdout, "kept\n");
    // The next checkpoint reads what moved since v0, not the whole disk.
    api.sh("vm", "head -c 2M /dev/urandom > ~/g && sync").await;
    let r = api
        .req(Method::POST, "/v1/sprites/vm/checkpoint")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let figure = |label: &str, end: char| -> f64 {
        text.split(label)
            .nth(1)
            .and_then(|r| r.split(end).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no stats: {text}"))
    };
    // Boots since v0 and the restore rewrote some (journal, logs), but far from all of it.
    let (read, chunks) = (figure("read ", ' '), figure(" (", ' '));
    assert!(read < chunks / 2.0, "tracked: {text}");
    let r = api
        .req(Method::POST, "/v1/sprites/vm/checkpoints/v0/restore")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("Restore from v0 complete"));
    let o = api
        .sh("vm", "cat ~/f; ls ~/g 2>&1 | grep -c 'No such'")
        .await;
    assert_eq!(o.stdout, "kept\n1\n", "{o:?}");
    // From inside the guest too (over vsock to the server's socket for this sprite).
    let o = api.sh("vm", "sprite-env checkpoints list").await;
    assert!(o.stdout.contains("v0\t"), "{o:?}");

    // Recent checkpoints appear read-only at /.sprite/checkpoints from the next boot.
    api.sh("vm", "echo later > ~/f").await;
    let (_, v) = api.json(Method::GET, "/v1/sprites/vm", None).await;
    let image = s
        .data_dir
        .join("sprites")
        .join(v["id"].as_str().unwrap())
        .join("checkpoints/v0.ext4");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !image.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no view image {}",
            image.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = api
        .req(Method::POST, "/v1/sprites/vm/restart")
        .send()
        .await
        .unwrap();
    let st = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(st, StatusCode::OK, "restart: {body}\n{}", s.log());
    let o = api
        .sh("vm", "cat ~/f /.sprite/checkpoints/v0/home/sprite/f; touch /.sprite/checkpoints/v0/x 2>&1 | grep -c Read-only")
        .await;
    assert_eq!(o.stdout, "later\nkept\n1\n", "{o:?}");

    // Idle: the VM is paused (warm) and an exec wakes it, processes intact.
    api.sh("vm", "(setsid sleep 1000 >/dev/null 2>&1 &); echo started")
        .await;
    // Three sleep/wake cycles: the processes live through each.
    for _ in 0..3 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (_, v) = api.json(Method::GET, "/v1/sprites/vm", None).await;
            if v["status"] == "warm" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never went warm: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(api.sh("vm", "pgrep -c -x sleep").await.stdout, "1\n");
    }

    // Deleting it leaves no QEMU behind.
    let (st, _) = api.json(Method::DELETE, "/v1/sprites/vm", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let data = s.data_dir.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&data) && (c.contains("qemu") || c.contains("vhost-device")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
