//! HTTP exec (spec §3.5) in a real sprite.

mod common;

use common::{Api, TestServer};
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn output_exit_codes_stdin_env_dir() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("ex").await;

    let o = api.exec("ex", &["echo", "hello world"]).await;
    assert_eq!((o.stdout.as_str(), o.code), ("hello world\n", Some(0)));
    let o = api.sh("ex", "echo out; echo err >&2; exit 3").await;
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
    assert_eq!(o.code, Some(3));
    let o = api.exec("ex", &["definitely-not-a-command"]).await;
    assert_eq!(o.code, Some(127), "{o:?}");
    assert!(o.stderr.contains("not found"));
    let o = api.sh("ex", "kill -9 $$").await;
    assert_eq!(o.code, Some(137), "signal deaths are 128+N");
    let o = api.exec("ex", &["/etc/passwd"]).await;
    assert_eq!(o.code, Some(126), "not executable: {o:?}");

    let o = api.sh("ex", "whoami; pwd; echo $HOME; id -u").await;
    assert_eq!(o.stdout, "sprite\n/home/sprite\n/home/sprite\n1000\n");
    let o = api
        .exec_with(
            "ex",
            &["sh", "-c", "echo $GREETING $OTHER; pwd"],
            &[
                ("env", "GREETING=hi there"),
                ("env", "OTHER=a=b"),
                ("dir", "/tmp"),
            ],
            None,
        )
        .await;
    assert_eq!(o.stdout, "hi there a=b\n/tmp\n");
    let o = api
        .exec_with("ex", &["pwd"], &[("dir", "/nope")], None)
        .await;
    assert_ne!(o.code, Some(0));

    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let o = api.exec_with("ex", &["sha256sum"], &[], Some(&input)).await;
    let want = {
        use std::fmt::Write;
        let d = <Sha as Digest>::digest(&input);
        d.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    assert!(
        o.stdout.starts_with(&want),
        "stdin round trip: {} vs {want}",
        o.stdout
    );
    let o = api.exec_with("ex", &["wc", "-c"], &[], Some(b"")).await;
    assert_eq!(o.stdout.trim(), "0");
    // Without stdin=true the process gets EOF at once instead of hanging.
    let o = api.exec("ex", &["cat"]).await;
    assert_eq!((o.stdout.as_str(), o.code), ("", Some(0)));

    // Large output arrives whole and in order.
    let o = api.sh("ex", "seq 1 200000").await;
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        o.stdout == expected,
        "seq output differs ({} bytes vs {})",
        o.stdout.len(),
        expected.len()
    );

    // A background child holding stdout open does not hold the response forever.
    let o = api.sh("ex", "sleep 60 & echo started").await;
    assert_eq!((o.stdout.as_str(), o.code), ("started\n", Some(0)));

    // Files persist between execs.
    let (st, v) = api.json(Method::POST, "/v1/sprites", Some(serde_json::json!({"name": "envy", "environment": {"FROM_CREATE": "yes", "PATH_EXTRA": "a=b"}}))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let o = api.sh("envy", "echo $FROM_CREATE $PATH_EXTRA").await;
    assert_eq!(
        o.stdout, "yes a=b\n",
        "create-time environment reaches commands"
    );
    // What a developer expects: user tool directories on PATH (pip --user, cargo, go).
    let o = api
        .sh(
            "envy",
            "mkdir -p ~/.local/bin ~/.cargo/bin && printf '#!/bin/sh\\necho mine\\n' > ~/.local/bin/mytool && chmod +x ~/.local/bin/mytool && echo $HOME $USER $SHELL $LANG",
        )
        .await;
    assert_eq!(o.stdout, "/home/sprite sprite /bin/bash C.UTF-8\n", "{o:?}");
    assert_eq!(api.exec("envy", &["mytool"]).await.stdout, "mine\n");
    let o = api.sh("envy", "echo $PATH").await;
    for dir in ["/home/sprite/.cargo/bin", "/home/sprite/go/bin", "/usr/bin"] {
        assert!(o.stdout.split(':').any(|d| d.trim() == dir), "{dir}: {o:?}");
    }
    let o = api
        .exec_with(
            "envy",
            &["sh", "-c", "echo $FROM_CREATE"],
            &[("env", "FROM_CREATE=overridden")],
            None,
        )
        .await;
    assert_eq!(o.stdout, "overridden\n", "request env wins");
    api.sh("ex", "echo kept > ~/note").await;
    assert_eq!(
        api.exec("ex", &["cat", "/home/sprite/note"]).await.stdout,
        "kept\n"
    );
}

type Sha = sha2::Sha256;
use sha2::Digest;

/// The default (official) framing: one frame per chunk, exit frame exactly two bytes last.
#[tokio::test]
async fn official_framing() {
    let s = TestServer::start().unwrap();
    let api = Api::new(&s);
    api.create("fr").await;
    let r = api
        .req(Method::POST, "/v1/sprites/fr/exec")
        .query(&[("cmd", "echo"), ("cmd", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers().contains_key("sprite-version"));
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], b"\x01hi\n\x03\x00");
    let r = api
        .req(Method::POST, "/v1/sprites/fr/exec")
        .query(&[("cmd", "sh"), ("cmd", "-c"), ("cmd", "exit 7")])
        .send()
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x03\x07");
    // path selects the program, cmd keeps argv[0].
    let r = api
        .req(Method::POST, "/v1/sprites/fr/exec")
        .query(&[
            ("path", "/bin/sh"),
            ("cmd", "mysh"),
            ("cmd", "-c"),
            ("cmd", "echo $0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x01mysh\n\x03\x00");
    // A client that reads bytes (curl, by its User-Agent) gets the same frames unpaced: all
    // the output, each frame a stream byte and its data, the exit frame last.
    let r = api
        .req(Method::POST, "/v1/sprites/fr/exec")
        .header("user-agent", "curl/8.5.0")
        .query(&[
            ("cmd", "sh"),
            ("cmd", "-c"),
            (
                "cmd",
                "head -c 1048576 /dev/zero | tr '\\0' a; echo oops >&2; exit 4",
            ),
        ])
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[body.len() - 2..], b"\x03\x04");
    assert_eq!(body.iter().filter(|b| **b == b'a').count(), 1 << 20);
    let rest: Vec<u8> = body[..body.len() - 2]
        .iter()
        .copied()
        .filter(|b| *b != b'a')
        .collect();
    let (ids, text): (Vec<u8>, Vec<u8>) = rest.iter().partition(|b| **b == 1 || **b == 2);
    assert_eq!(text, b"oops\n");
    assert!(ids.contains(&2) && ids.iter().filter(|b| **b == 1).count() >= 1);
}
