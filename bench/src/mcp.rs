//! `mcp`: a `tools/call` of `exec` running `true` (2026-07-28, stateless, one POST) against
//! the REST HTTP exec of `true`, same sprite, same run (p50/p95 and the ratio).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sprites_testing::TestServer;

use crate::{ms, pct};

pub async fn mcp_benches() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let s = TestServer::start()?;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", s.token);
    let r = http
        .post(format!("{}/v1/sprites", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({"name": "mcp-bench"}))
        .send()
        .await?;
    ensure!(r.status() == 201, "create: {}", r.status());
    let meta = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    });
    let call = |id: usize| {
        http.post(format!("{}/mcp", s.url))
            .header("authorization", &auth)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "exec")
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "exec", "arguments": {"sprite": "mcp-bench", "command": ["true"]}, "_meta": meta}}))
    };
    let rest = || {
        http.post(format!("{}/v1/sprites/mcp-bench/exec?cmd=true", s.url))
            .header("authorization", &auth)
            .header("sprite-exec-framing", "length-prefixed")
    };
    let (mut m, mut r) = (Vec::new(), Vec::new());
    for i in 0..n + 10 {
        // Interleaved, so both see the same machine.
        let t = Instant::now();
        let body = call(i).send().await?.text().await?;
        let dm = t.elapsed();
        ensure!(body.contains("\"exit_code\":0"), "mcp exec: {body}");
        let t = Instant::now();
        let resp = rest().send().await?;
        ensure!(resp.status() == 200, "rest exec: {}", resp.status());
        resp.bytes().await?;
        let dr = t.elapsed();
        if i >= 10 {
            m.push(dm);
            r.push(dr);
        }
    }
    let line = |v: &Vec<Duration>| {
        format!(
            "p50 {} p95 {}",
            ms(pct(v.clone(), 0.5)),
            ms(pct(v.clone(), 0.95))
        )
    };
    println!(
        "mcp: tools/call exec `true` (n={n}): {}; REST HTTP exec `true`: {}",
        line(&m),
        line(&r)
    );
    println!(
        "mcp: p50 ratio MCP / REST = {:.2}",
        pct(m, 0.5).as_secs_f64() / pct(r, 0.5).as_secs_f64()
    );
    Ok(())
}
