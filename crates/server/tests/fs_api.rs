//! The filesystem API (spec §9) in a real sprite.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

async fn write(api: &Api, q: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
    let r = api
        .req(Method::PUT, "/v1/sprites/f/fs/write")
        .query(q)
        .body(body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

#[tokio::test]
async fn filesystem_operations_as_the_sprite_user() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("f").await;

    let (st, v) = write(
        &api,
        &[
            ("path", "notes/a.txt"),
            ("workingDir", "/home/sprite"),
            ("mkdirParents", "true"),
            ("mode", "0640"),
        ],
        b"hello fs".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"path": "/home/sprite/notes/a.txt", "size": 8, "mode": "0640"})
    );
    let o = api
        .exec("f", &["stat", "-c", "%U %a %s", "/home/sprite/notes/a.txt"])
        .await;
    assert_eq!(
        o.stdout, "sprite 640 8\n",
        "written as the sprite user with the mode"
    );

    let r = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[("path", "/home/sprite/notes/a.txt")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello fs");
    let r = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[
            ("path", "/home/sprite/notes/a.txt"),
            ("start", "6"),
            ("end", "8"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"fs");

    // list a directory; list a file = stat.
    let (st, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["count"], 1);
    assert_eq!(v["entries"][0]["name"], "a.txt");
    assert_eq!(v["entries"][0]["type"], "file");
    assert_eq!(v["entries"][0]["isDir"], false);
    let (_, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=a.txt&workingDir=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["entries"][0]["size"], 8);
    let (_, v) = api
        .json(
            Method::GET,
            "/v1/sprites/f/fs/list?path=/home/sprite&recursive=true&pattern=*.txt",
            None,
        )
        .await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/home/sprite/notes/a.txt"),
        "{v}"
    );

    // Errors carry errno codes and matching statuses.
    let (st, e) = api
        .json(Method::GET, "/v1/sprites/f/fs/read?path=/nope", None)
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("ENOENT"))
    );
    let (st, e) = write(&api, &[("path", "/etc/evil")], b"x".to_vec()).await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES")),
        "the sprite user cannot write /etc"
    );
    assert_ne!(
        api.exec("f", &["test", "-e", "/etc/evil"]).await.code,
        Some(0),
        "nothing was created"
    );
    let (st, _) = write(
        &api,
        &[("path", "/etc/allowed"), ("asRoot", "true")],
        b"root".to_vec(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        api.exec("f", &["stat", "-c", "%U", "/etc/allowed"])
            .await
            .stdout,
        "root\n"
    );
    let (st, e) = api
        .json(Method::GET, "/v1/sprites/f/fs/read?path=/etc/shadow", None)
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EACCES"))
    );
    let (st, _) = write(&api, &[("path", "/x"), ("mode", "99")], vec![]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // rename, copy, chmod, chown, delete.
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/rename", Some(json!({"source": "notes/a.txt", "dest": "notes/b.txt", "workingDir": "/home/sprite"}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/copy", Some(json!({"source": "/home/sprite/notes", "dest": "/home/sprite/copy", "recursive": true}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["totalBytes"], 8);
    let (st, v) = api
        .json(
            Method::POST,
            "/v1/sprites/f/fs/chmod",
            Some(json!({"path": "/home/sprite/copy/b.txt", "mode": "0600"})),
        )
        .await;
    assert_eq!(
        (st, v["affected"][0]["mode"].as_str()),
        (StatusCode::OK, Some("0600"))
    );
    let (st, v) = api.json(Method::POST, "/v1/sprites/f/fs/chown", Some(json!({"path": "/home/sprite/copy", "uid": "root", "gid": 0, "recursive": true, "asRoot": true}))).await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    assert_eq!(
        api.exec("f", &["stat", "-c", "%U %a", "/home/sprite/copy/b.txt"])
            .await
            .stdout,
        "root 600\n"
    );
    let (st, e) = api
        .json(
            Method::DELETE,
            "/v1/sprites/f/fs/delete?path=/home/sprite/notes",
            None,
        )
        .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("ENOTEMPTY"))
    );
    let (st, v) = api
        .json(
            Method::DELETE,
            "/v1/sprites/f/fs/delete?path=/home/sprite/notes&recursive=true",
            None,
        )
        .await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(1)));
    assert_ne!(
        api.exec("f", &["test", "-e", "/home/sprite/notes"])
            .await
            .code,
        Some(0)
    );

    // A large file streams both ways intact.
    let big: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let want = hex(&sha2::Sha256::digest(&big));
    let (st, v) = write(&api, &[("path", "/tmp/big.bin")], big).await;
    assert_eq!((st, v["size"].as_u64()), (StatusCode::OK, Some(16 << 20)));
    let got = api
        .req(Method::GET, "/v1/sprites/f/fs/read")
        .query(&[("path", "/tmp/big.bin")])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex(&sha2::Sha256::digest(&got)), want);
    assert!(api
        .exec("f", &["sha256sum", "/tmp/big.bin"])
        .await
        .stdout
        .starts_with(&want));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
