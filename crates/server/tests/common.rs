//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
pub use sprites_testing::TestServer;

/// Raw HTTP access to a test server with a token.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: Client,
}

/// Result of an exec.
#[derive(Debug, Default)]
pub struct ExecOut {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<u8>,
}

impl Api {
    pub fn new(s: &TestServer) -> Self {
        Self::with_token(s, &s.token)
    }

    pub fn with_token(s: &TestServer, token: &str) -> Self {
        Self {
            base: s.url.clone(),
            token: token.to_string(),
            http: Client::new(),
        }
    }

    pub fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub async fn json(&self, m: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.req(m, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn create(&self, name: &str) -> Value {
        self.create_with(json!({ "name": name })).await
    }

    /// Creates a sprite from a whole request body (config, labels, ...).
    pub async fn create_with(&self, body: Value) -> Value {
        let (st, v) = self
            .json(Method::POST, "/v1/sprites", Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::CREATED, "create {body}: {v}");
        v
    }

    /// HTTP exec with our length-prefixed framing, parsed strictly.
    pub async fn exec_with(
        &self,
        name: &str,
        argv: &[&str],
        extra: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> ExecOut {
        let mut q: Vec<(&str, &str)> = argv.iter().map(|a| ("cmd", *a)).collect();
        q.extend_from_slice(extra);
        if stdin.is_some() {
            q.push(("stdin", "true"));
        }
        let mut r = self
            .req(Method::POST, &format!("/v1/sprites/{name}/exec"))
            .query(&q)
            .header("sprite-exec-framing", "length-prefixed");
        if let Some(b) = stdin {
            r = r.body(b.to_vec());
        }
        let resp = r.send().await.expect("exec request");
        assert_eq!(resp.status(), StatusCode::OK, "exec {argv:?}");
        let body = resp.bytes().await.expect("exec body");
        parse_length_prefixed(&body)
    }

    pub async fn exec(&self, name: &str, argv: &[&str]) -> ExecOut {
        self.exec_with(name, argv, &[], None).await
    }

    pub async fn sh(&self, name: &str, script: &str) -> ExecOut {
        self.exec(name, &["sh", "-c", script]).await
    }
}

pub fn parse_length_prefixed(mut b: &[u8]) -> ExecOut {
    let mut out = ExecOut::default();
    let (mut so, mut se) = (Vec::new(), Vec::new());
    while !b.is_empty() {
        assert!(b.len() >= 5, "truncated frame header");
        let id = b[0];
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let data = &b[5..5 + len];
        match id {
            1 => so.extend_from_slice(data),
            2 => se.extend_from_slice(data),
            3 => {
                assert_eq!(len, 1, "exit frame carries one byte");
                assert!(out.code.is_none(), "one exit frame");
                out.code = Some(data[0]);
            }
            other => panic!("unknown stream id {other}"),
        }
        b = &b[5 + len..];
    }
    out.stdout = String::from_utf8_lossy(&so).into_owned();
    out.stderr = String::from_utf8_lossy(&se).into_owned();
    out
}
