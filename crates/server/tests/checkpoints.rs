//! Checkpoints (§6): create, list, restore, delete against real disks and a real object store;
//! crash safety under `kill -9` of the server.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Runs a create or restore and returns its NDJSON lines (the stream ends after the last).
async fn stream(api: &Api, path: &str, body: Option<Value>) -> Vec<Value> {
    let mut r = api.req(Method::POST, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-ndjson",
        "{path}"
    );
    let text = resp.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn last(lines: &[Value]) -> &Value {
    lines.last().expect("at least one line")
}

/// The MiB figure after `label` in a create's stats line ("read X MiB", "stored X MiB").
fn stat_mib(lines: &[Value], label: &str) -> f64 {
    let l = lines
        .iter()
        .filter_map(|l| l["data"].as_str())
        .find(|d| d.contains("stored"))
        .unwrap_or_else(|| panic!("no stats line in {lines:?}"));
    eprintln!("{l}");
    let after = l.split(label).nth(1).unwrap();
    after.split(' ').next().unwrap().parse().unwrap()
}

/// MiB of new chunks a create reported storing.
fn stored_mib(lines: &[Value]) -> f64 {
    stat_mib(lines, "stored ")
}

/// MiB a create reported reading.
fn read_mib(lines: &[Value]) -> f64 {
    stat_mib(lines, "read ")
}

fn chunk_files(s: &TestServer) -> usize {
    let mut n = 0;
    if let Ok(dirs) = std::fs::read_dir(s.data_dir.join("objects/chunks")) {
        for d in dirs.flatten() {
            n += std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0);
        }
    }
    n
}

#[tokio::test]
async fn create_list_restore_delete() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("ck").await;
    api.sh("ck", "echo one > ~/keep && echo gone-later > ~/old")
        .await;

    let lines = stream(
        &api,
        "/v1/sprites/ck/checkpoint",
        Some(json!({"comment": "first"})),
    )
    .await;
    assert_eq!(lines[0]["type"], "info", "{lines:?}");
    assert_eq!(lines[0]["data"], "Creating checkpoint v0...");
    assert!(lines[0]["time"].is_string());
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    assert_eq!(last(&lines)["data"], "Checkpoint v0 created successfully");

    // Change the disk: delete, add, modify; leave a process running.
    let o = api
        .sh(
            "ck",
            "rm ~/old && echo new > ~/added && echo two >> ~/keep && (setsid sleep 1000 >/dev/null 2>&1 &) && echo ok",
        )
        .await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    // An empty body is accepted (as Elixir sends it).
    let resp = api
        .req(Method::POST, "/v1/sprites/ck/checkpoint")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("Checkpoint v1 created successfully"),
        "{text}"
    );
    // The sprite runs on after a checkpoint, processes included.
    let o = api.sh("ck", "pgrep -c sleep; cat ~/keep").await;
    assert_eq!(o.stdout, "1\none\ntwo\n", "{o:?}");

    let (st, list) = api
        .json(Method::GET, "/v1/sprites/ck/checkpoints", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["Current", "v1", "v0"], "{list}");
    assert_eq!(list[2]["comment"], "first");
    assert_eq!(list[1]["source_id"], "v0");
    assert_eq!(list[1]["history"], json!(["v0"]));
    for c in list.as_array().unwrap() {
        assert!(
            sprites_api::timefmt::parse_millis(c["create_time"].as_str().unwrap()).is_some(),
            "{c}"
        );
    }
    let (st, one) = api
        .json(Method::GET, "/v1/sprites/ck/checkpoints/v0", None)
        .await;
    assert_eq!((st, one["id"].as_str()), (StatusCode::OK, Some("v0")));
    let (st, err) = api
        .json(Method::GET, "/v1/sprites/ck/checkpoints/v9", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{err}");
    assert!(err["error"].is_string(), "{err}");

    // Restore v0: deleted files return, new ones go, processes end.
    let lines = stream(&api, "/v1/sprites/ck/checkpoints/v0/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    assert_eq!(last(&lines)["data"], "Restore from v0 complete");
    let msgs: Vec<&str> = lines.iter().filter_map(|l| l["data"].as_str()).collect();
    assert!(
        msgs.contains(&"Stopping process for restore..."),
        "{msgs:?}"
    );
    let o = api
        .sh(
            "ck",
            "cat ~/keep ~/old; ls ~/added 2>&1; pgrep -c sleep || true",
        )
        .await;
    assert_eq!(
        o.stdout,
        "one\ngone-later\nls: cannot access '/home/sprite/added': No such file or directory\n0\n",
        "{o:?}"
    );
    // The restored disk is writable and the sprite keeps working.
    let o = api.sh("ck", "echo three >> ~/keep && cat ~/keep").await;
    assert_eq!(o.stdout, "one\nthree\n");

    // Errors: unknown checkpoint, the live state, the active checkpoint.
    let r = api
        .req(Method::POST, "/v1/sprites/ck/checkpoints/v7/restore")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (st, _) = api
        .json(Method::DELETE, "/v1/sprites/ck/checkpoints/Current", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = api
        .json(Method::DELETE, "/v1/sprites/ck/checkpoints/v0", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "v0 is the active checkpoint");
    let (st, _) = api
        .json(Method::POST, "/v1/sprites/nope/checkpoint", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Deleting v1 frees the chunks only it used; v0 still restores.
    let before = chunk_files(&s);
    let (st, _) = api
        .json(Method::DELETE, "/v1/sprites/ck/checkpoints/v1", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let after = chunk_files(&s);
    assert!(after < before, "chunks freed: {before} -> {after}");
    let (st, _) = api
        .json(Method::DELETE, "/v1/sprites/ck/checkpoints/v1", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Versions are never reused.
    let lines = stream(&api, "/v1/sprites/ck/checkpoint", Some(json!({}))).await;
    assert_eq!(last(&lines)["data"], "Checkpoint v2 created successfully");

    // Deleting the sprite deletes its checkpoints and every chunk.
    let (st, _) = api.json(Method::DELETE, "/v1/sprites/ck", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(chunk_files(&s), 0);
}

#[tokio::test]
async fn incremental_cost_and_cold_sprites() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("big").await;
    let o = api
        .sh(
            "big",
            "head -c 256M /dev/urandom > ~/blob && sync && echo ok",
        )
        .await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    let lines = stream(&api, "/v1/sprites/big/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let full = stored_mib(&lines);
    assert!(
        full >= 256.0,
        "the first checkpoint stores the data: {full}"
    );

    // 10 MiB changed costs about 10 MiB, not the 256 already stored.
    api.sh("big", "head -c 10M /dev/urandom > ~/delta && sync")
        .await;
    let lines = stream(&api, "/v1/sprites/big/checkpoint", None).await;
    let inc = stored_mib(&lines);
    assert!(
        (10.0..40.0).contains(&inc),
        "incremental: {inc} MiB ({lines:?})"
    );

    // Nothing changed: nothing new stored.
    let lines = stream(&api, "/v1/sprites/big/checkpoint", None).await;
    assert!(stored_mib(&lines) < 5.0, "{lines:?}");

    // A cold sprite is checkpointed from its disk and restored without booting first.
    let r = api
        .req(Method::POST, "/v1/sprites/big/restart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let lines = stream(&api, "/v1/sprites/big/checkpoints/v0/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let o = api
        .sh("big", "ls ~/delta 2>/dev/null; stat -c %s ~/blob")
        .await;
    assert_eq!(o.stdout, "268435456\n", "{o:?}");
}

#[tokio::test]
async fn kill9_mid_checkpoint_and_mid_restore() {
    kill9_cycle(std::path::Path::new("/tmp")).await;
}

/// The same with change tracking (data dir on XFS): a crash between clone, commit and adopt
/// leaves a reference that is either right or ignored.
#[tokio::test]
async fn kill9_with_change_tracking() {
    let vol = sprites_testing::XfsVolume::new(40).unwrap();
    kill9_cycle(vol.path()).await;
}

async fn kill9_cycle(parent: &std::path::Path) {
    let mut s = TestServer::start_in(parent, &[]).unwrap();
    let api = Api::new(&s);
    api.create("crash").await;
    api.sh(
        "crash",
        "head -c 128M /dev/urandom > ~/blob && echo A > ~/mark && sync",
    )
    .await;
    let lines = stream(&api, "/v1/sprites/crash/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete");
    api.sh(
        "crash",
        "head -c 128M /dev/urandom > ~/blob2 && echo B > ~/mark && sync",
    )
    .await;

    // kill -9 while a checkpoint reads the disk (the sprite is frozen then).
    let resp = api
        .req(Method::POST, "/v1/sprites/crash/checkpoint")
        .send()
        .await
        .unwrap();
    let mut resp = resp;
    let _first = resp.chunk().await.unwrap();
    s.kill9();
    drop(resp);
    s.restart().unwrap();
    let api = Api::new(&s);
    // The sprite is not left frozen: it writes, and its disk is whole.
    let o = api
        .sh(
            "crash",
            "echo C >> ~/mark && cat ~/mark && stat -c %s ~/blob2",
        )
        .await;
    assert_eq!(o.stdout, "B\nC\n134217728\n", "{o:?}");
    let lines = stream(&api, "/v1/sprites/crash/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");

    // kill -9 during a restore: the sprite boots with one whole disk, old or new.
    let mut resp = api
        .req(Method::POST, "/v1/sprites/crash/checkpoints/v0/restore")
        .send()
        .await
        .unwrap();
    let _first = resp.chunk().await.unwrap();
    s.kill9();
    drop(resp);
    s.restart().unwrap();
    let api = Api::new(&s);
    let r = api
        .req(Method::POST, "/v1/sprites/crash/exec?cmd=true")
        .send()
        .await
        .unwrap();
    let st = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(st, StatusCode::OK, "{body}\n{}", s.log());
    let o = api.sh("crash", "cat ~/mark; ls ~").await;
    assert!(
        o.stdout == "A\nblob\nmark\n" || o.stdout == "B\nC\nblob\nblob2\nmark\n",
        "old or new disk, never a mix: {o:?}"
    );
    // Either way, restore works again afterwards and leaves no journal behind.
    let lines = stream(&api, "/v1/sprites/crash/checkpoints/v0/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let o = api.sh("crash", "cat ~/mark").await;
    assert_eq!(o.stdout, "A\n");
    // And a checkpoint after all that restores to exactly what it saw.
    api.sh("crash", "echo D >> ~/mark && sync").await;
    let lines = stream(&api, "/v1/sprites/crash/checkpoint", None).await;
    let id = last(&lines)["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    api.sh("crash", "rm ~/mark ~/blob && sync").await;
    let lines = stream(
        &api,
        &format!("/v1/sprites/crash/checkpoints/{id}/restore"),
        None,
    )
    .await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let o = api.sh("crash", "cat ~/mark; stat -c %s ~/blob").await;
    assert_eq!(o.stdout, "A\nD\n134217728\n", "{o:?}");
    let staged: Vec<_> = walk(&s.data_dir.join("sprites"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("restore-journal"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn from_inside_the_sprite() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("inner").await;
    let o = api
        .sh(
            "inner",
            "echo kept > ~/f && sprite-env checkpoints create --comment 'from inside' && sprite-env checkpoints list",
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.contains("Checkpoint v0 created successfully"),
        "{o:?}"
    );
    assert!(
        o.stdout.contains("v0\t") && o.stdout.contains("from inside"),
        "{o:?}"
    );
    // The outside sees it too.
    let (_, list) = api
        .json(Method::GET, "/v1/sprites/inner/checkpoints", None)
        .await;
    assert_eq!(list[1]["comment"], "from inside", "{list}");

    // The host socket behind it is for the sprite's root (the agent) only.
    let o = api
        .sh("inner", "id -un; ls -l /.sprite/host/; curl -s --unix-socket /.sprite/host/api.sock http://h/v1/checkpoints; echo rc=$?")
        .await;
    assert!(o.stdout.starts_with("sprite\n"), "{o:?}");
    assert!(
        o.stdout.contains("rc=7"),
        "the sprite user cannot connect: {o:?}"
    );

    // Restore from inside: the sprite restarts (ending the command that asked), on v0's disk.
    api.sh("inner", "echo changed > ~/f && touch ~/new").await;
    let _ = api
        .req(Method::POST, "/v1/sprites/inner/exec")
        .query(&[
            ("cmd", "sprite-env"),
            ("cmd", "checkpoints"),
            ("cmd", "restore"),
            ("cmd", "v0"),
        ])
        .send()
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = api
            .sh("inner", "cat ~/f; ls ~/new 2>/dev/null | wc -l")
            .await;
        if o.stdout == "kept\n0\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not restored: {o:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, one) = api
        .json(Method::GET, "/v1/sprites/inner/checkpoints/Current", None)
        .await;
    assert_eq!(one["source_id"], "v0", "{one}");
}

/// Polls a shell snippet in the sprite until its output is `want`.
async fn eventually(api: &Api, name: &str, script: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = api.sh(name, script).await;
        if o.stdout == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{script}: wanted {want:?}, got {o:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn recent_checkpoints_are_mounted_read_only() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("views").await;
    api.sh("views", "echo zero > ~/f").await;
    stream(&api, "/v1/sprites/views/checkpoint", None).await;
    api.sh("views", "echo one > ~/f").await;

    // A running sprite sees the new checkpoint appear, with the files as they were.
    eventually(
        &api,
        "views",
        "cat /.sprite/checkpoints/v0/home/sprite/f 2>&1",
        "zero\n",
    )
    .await;
    let o = api
        .sh(
            "views",
            "cat ~/f; ls /.sprite/checkpoints/v0/etc/debian_version; touch /.sprite/checkpoints/v0/home/sprite/x 2>&1 | grep -c 'Read-only'; sudo touch /.sprite/checkpoints/v0/y 2>&1 | grep -c 'Read-only'",
        )
        .await;
    assert_eq!(
        o.stdout, "one\n/.sprite/checkpoints/v0/etc/debian_version\n1\n1\n",
        "base files show through; views are read-only: {o:?}"
    );

    // Only the newest five are kept; a booting sprite mounts them itself.
    for i in 1..=5 {
        api.sh("views", &format!("echo {i} > ~/f")).await;
        stream(&api, "/v1/sprites/views/checkpoint", None).await;
    }
    eventually(
        &api,
        "views",
        "ls /.sprite/checkpoints | tr '\\n' ' '",
        "v1 v2 v3 v4 v5 ",
    )
    .await;
    let r = api
        .req(Method::POST, "/v1/sprites/views/restart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let o = api
        .sh(
            "views",
            "ls /.sprite/checkpoints | tr '\\n' ' '; cat /.sprite/checkpoints/v3/home/sprite/f",
        )
        .await;
    assert_eq!(o.stdout, "v1 v2 v3 v4 v5 3\n", "{o:?}");
}

/// With the data dir on a filesystem with reflinks (XFS here), a checkpoint reads only what
/// changed since the last one, and what it stores restores exactly.
#[tokio::test]
async fn tracked_checkpoints_read_only_what_changed() {
    let vol = sprites_testing::XfsVolume::new(40).unwrap();
    let s = TestServer::start_in(vol.path(), &[]).unwrap();
    let api = Api::new(&s);
    api.create("tr").await;
    let sums = "sha256sum ~/blob ~/delta 2>/dev/null | cut -c1-16 | tr '\\n' ' '";
    let o = api
        .sh(
            "tr",
            &format!("head -c 128M /dev/urandom > ~/blob && sync && {sums}"),
        )
        .await;
    let blob_only = o.stdout.clone();
    assert_eq!(blob_only.len(), 17, "{o:?}");

    let lines = stream(&api, "/v1/sprites/tr/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let first = read_mib(&lines);
    assert!(
        first >= 128.0,
        "no reference yet: the whole disk is read ({first} MiB)"
    );

    let o = api
        .sh(
            "tr",
            &format!("head -c 4M /dev/urandom > ~/delta && sync && {sums}"),
        )
        .await;
    let with_delta = o.stdout.clone();
    assert_eq!(with_delta.len(), 34, "{o:?}");
    let lines = stream(&api, "/v1/sprites/tr/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let second = read_mib(&lines);
    assert!(
        second < 40.0,
        "4 MiB written: only the changed chunks are read, not the {first} MiB disk ({lines:?})"
    );
    let stored = stored_mib(&lines);
    assert!((4.0..40.0).contains(&stored), "{lines:?}");

    // Both restore to exactly what they held, and tracking survives the restores. A restore
    // reads only what moved since the reference too.
    let lines = stream(&api, "/v1/sprites/tr/checkpoints/v0/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let compared: f64 = lines
        .iter()
        .filter_map(|l| l["data"].as_str())
        .find_map(|d| d.split("compared ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restore stats in {lines:?}"));
    assert!(compared < 40.0, "{lines:?}");
    assert_eq!(api.sh("tr", sums).await.stdout, blob_only);
    let lines = stream(&api, "/v1/sprites/tr/checkpoints/v1/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    assert_eq!(api.sh("tr", sums).await.stdout, with_delta);

    api.sh("tr", "echo more > ~/more && sync").await;
    let lines = stream(&api, "/v1/sprites/tr/checkpoint", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    // A restore leaves its result as the reference: only what changed after it is read.
    assert!(read_mib(&lines) < 16.0, "{lines:?}");
    api.sh("tr", "rm ~/more ~/blob && sync").await;
    let lines = stream(&api, "/v1/sprites/tr/checkpoints/v2/restore", None).await;
    assert_eq!(last(&lines)["type"], "complete", "{lines:?}");
    let o = api.sh("tr", &format!("cat ~/more; {sums}")).await;
    assert_eq!(o.stdout, format!("more\n{with_delta}"), "{o:?}");
    drop(s);
}
