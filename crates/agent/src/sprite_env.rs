//! `sprite-env`: the in-sprite command line for `/.sprite/api.sock` (services, checkpoints,
//! tasks, and raw requests with `sprite-env curl`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::server::API_SOCKET;

const USAGE: &str = "usage: sprite-env <command>

  services list
  services create NAME --cmd CMD [--args A,B] [--env K=V,K2=V2] [--dir D] [--needs S1,S2] [--http-port N]
  services start|stop|restart|delete NAME
  services logs NAME [--lines N]
  checkpoints list
  checkpoints create [--comment TEXT]
  checkpoints info ID
  checkpoints restore ID               (the sprite restarts: this command ends with it)
  curl [-X METHOD] [-d BODY] PATH      request /.sprite/api.sock (virtual host `sprite`)
  version";

/// Runs `sprite-env` with `args` (program name excluded). Never returns.
pub fn main(args: Vec<String>) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = match rt.block_on(run(args)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sprite-env: {e}");
            1
        }
    };
    std::process::exit(code)
}

async fn request(method: &str, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes), String> {
    let (status, whole, body) = request_lines(method, path, body, |_| {}).await?;
    if !whole {
        return Err("the connection ended in the middle of the answer".into());
    }
    Ok((status, Bytes::from(body)))
}

/// Sends a request and hands each line of the response body to `line` as it arrives.
/// Returns the status and whether the body ended cleanly (a restore cuts it off).
async fn request_lines(
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    mut line: impl FnMut(&str),
) -> Result<(u16, bool, Vec<u8>), String> {
    let stream = tokio::net::UnixStream::connect(API_SOCKET)
        .await
        .map_err(|e| format!("cannot reach {API_SOCKET}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sprite")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let (mut buf, mut all) = (Vec::new(), Vec::new());
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Ok((status, false, all)),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    all.extend_from_slice(&d);
                    buf.extend_from_slice(&d);
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let l: Vec<u8> = buf.drain(..=nl).collect();
                        line(String::from_utf8_lossy(&l[..nl]).trim());
                    }
                }
            }
        }
    }
    if !buf.is_empty() {
        line(String::from_utf8_lossy(&buf).trim());
    }
    Ok((status, true, all))
}

/// Prints a checkpoint progress line; remembers the final one.
fn progress_line(l: &str, last: &mut Option<Value>) {
    let Ok(v) = serde_json::from_str::<Value>(l) else {
        return;
    };
    match v["type"].as_str() {
        Some("info") => println!("{}", v["data"].as_str().unwrap_or("")),
        Some("complete") | Some("error") => *last = Some(v),
        _ => {}
    }
}

async fn checkpoints(a: &[&str]) -> Result<i32, String> {
    match a {
        ["list"] | ["ls"] => {
            let (st, body) = request("GET", "/v1/checkpoints", None).await?;
            check(st, &body)?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            for c in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    c["id"].as_str().unwrap_or(""),
                    c["create_time"].as_str().unwrap_or(""),
                    c["comment"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ["info", id] => {
            let (st, body) = request("GET", &format!("/v1/checkpoints/{id}"), None).await?;
            check(st, &body)?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(0)
        }
        ["create", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let f = flags(&rest)?;
            let body = json!({ "comment": f.get("comment") })
                .to_string()
                .into_bytes();
            let mut last = None;
            let (st, _, all) = request_lines("POST", "/v1/checkpoint", Some(body), |l| {
                progress_line(l, &mut last)
            })
            .await?;
            check(st, &all)?;
            match last {
                Some(v) if v["type"] == "complete" => {
                    println!("{}", v["data"].as_str().unwrap_or("done"));
                    Ok(0)
                }
                Some(v) => Err(v["error"].as_str().unwrap_or("failed").to_string()),
                None => Err("the checkpoint stream ended early".into()),
            }
        }
        ["restore", id] => {
            let mut last = None;
            let (st, clean, all) = request_lines(
                "POST",
                &format!("/v1/checkpoints/{id}/restore"),
                None,
                |l| progress_line(l, &mut last),
            )
            .await?;
            check(st, &all)?;
            match last {
                Some(v) if v["type"] == "error" => {
                    Err(v["error"].as_str().unwrap_or("failed").to_string())
                }
                Some(v) if clean => {
                    println!("{}", v["data"].as_str().unwrap_or("done"));
                    Ok(0)
                }
                // Restoring stops every process of this sprite, this command included, so
                // the stream is normally cut here.
                _ => {
                    println!("Restoring {id}; the sprite restarts now.");
                    Ok(0)
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    }
}

fn flags(rest: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            return Err(format!("unexpected argument {k:?}"));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (
                name.to_string(),
                it.next()
                    .ok_or_else(|| format!("--{name} needs a value"))?
                    .clone(),
            ),
        };
        m.insert(name, value);
    }
    Ok(m)
}

fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Prints an NDJSON stream of service events readably.
fn print_events(body: &[u8]) {
    for line in String::from_utf8_lossy(body).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("stdout") | Some("stderr") => print!("{}", v["data"].as_str().unwrap_or("")),
            Some("complete") => {}
            Some(t) => println!(
                "[{t}]{}",
                v.get("exit_code")
                    .map(|c| format!(" exit code {c}"))
                    .unwrap_or_default()
            ),
            None => {}
        }
    }
}

fn check(status: u16, body: &[u8]) -> Result<(), String> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let msg = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    Err(format!("{msg} ({status})"))
}

async fn run(args: Vec<String>) -> Result<i32, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["version"] | ["--version"] => {
            println!("sprite-env {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        ["services", "list"] | ["services", "ls"] => {
            let (st, body) = request("GET", "/v1/services", None).await?;
            check(st, &body)?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            for s in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    s["name"].as_str().unwrap_or(""),
                    s["state"]["status"].as_str().unwrap_or(""),
                    s["cmd"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ["services", "create", name, rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let f = flags(&rest)?;
            let cmd = f.get("cmd").ok_or("--cmd is required")?;
            let env: BTreeMap<String, String> = list(f.get("env"))
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or(format!("--env entries are K=V, got {kv:?}"))
                })
                .collect::<Result<_, _>>()?;
            let mut def = json!({ "cmd": cmd, "args": list(f.get("args")), "env": env, "needs": list(f.get("needs")) });
            if let Some(d) = f.get("dir") {
                def["dir"] = json!(d);
            }
            if let Some(p) = f.get("http-port") {
                def["http_port"] = json!(p
                    .parse::<u16>()
                    .map_err(|_| "--http-port must be a port number")?);
            }
            let (st, body) = request(
                "PUT",
                &format!("/v1/services/{name}"),
                Some(def.to_string().into_bytes()),
            )
            .await?;
            check(st, &body)?;
            print_events(&body);
            Ok(0)
        }
        ["services", action @ ("start" | "stop" | "restart"), name] => {
            let (st, body) =
                request("POST", &format!("/v1/services/{name}/{action}"), None).await?;
            check(st, &body)?;
            print_events(&body);
            Ok(0)
        }
        ["services", "delete", name] | ["services", "rm", name] => {
            let (st, body) = request("DELETE", &format!("/v1/services/{name}"), None).await?;
            check(st, &body)?;
            Ok(0)
        }
        ["services", "logs", name, rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let f = flags(&rest)?;
            let lines = f.get("lines").cloned().unwrap_or_else(|| "100".into());
            let (st, body) = request(
                "GET",
                &format!("/v1/services/{name}/logs?lines={lines}"),
                None,
            )
            .await?;
            check(st, &body)?;
            print_events(&body);
            Ok(0)
        }
        ["checkpoints" | "checkpoint", rest @ ..] => checkpoints(rest).await,
        ["curl", rest @ ..] => curl(rest).await,
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    }
}

async fn curl(rest: &[&str]) -> Result<i32, String> {
    let (mut method, mut body, mut path) = (None, None, None);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match *a {
            "-X" | "--request" => method = it.next().map(|s| s.to_string()),
            "-d" | "--data" | "--data-raw" => body = it.next().map(|s| s.as_bytes().to_vec()),
            "-H" | "--header" | "-s" | "--silent" => {
                if *a == "-H" || *a == "--header" {
                    it.next();
                }
            }
            p if p.starts_with('/') => path = Some(p.to_string()),
            p if p.starts_with("http://sprite/") => {
                path = Some(p.trim_start_matches("http://sprite").to_string())
            }
            other => return Err(format!("unsupported curl argument {other:?}")),
        }
    }
    let path = path.ok_or("a path such as /v1/tasks is required")?;
    let method = method.unwrap_or_else(|| {
        if body.is_some() {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let (st, out) = request(&method, &path, body).await?;
    use std::io::Write;
    let _ = std::io::stdout().write_all(&out);
    if !out.ends_with(b"\n") && !out.is_empty() {
        println!();
    }
    Ok(if (200..300).contains(&st) { 0 } else { 22 })
}
