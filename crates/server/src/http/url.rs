//! Sprite URLs: `<name>-<org id>.<url-domain>` routed by Host header to the sprite's port 8080
//! (or its `http_port` service), HTTP/1.1 and WebSocket, waking the sprite. `auth: sprite`
//! needs an org token (`Authorization: Bearer`); `public` needs none. In either mode our
//! tokens and cookies never reach the sprite.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use sprites_api::ErrorCode;

use super::AppState;
use crate::error::ApiError;
use crate::store::{self, Org, SpriteRecord};

/// The label of a sprite URL host (`demo-bhmkr` in `demo-bhmkr.sprites.localhost:7780`).
fn sprite_label<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = host
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
        .unwrap_or(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// Runs before the API: requests for sprite URLs are served here, the rest go on.
pub async fn route(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match sprite_label(&host, &state.cfg.url_domain) {
        Some(label) => match serve(&state, label, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
        None => next.run(req).await,
    }
}

/// Finds the one sprite of a label. Canonical labels are `<name>-<org id>`; org ids have no
/// dash, so the last dash splits them, and a label whose tail is an org id never means
/// anything else. Older `<name>-<slug>` labels still work while exactly one sprite matches
/// them (names and slugs may both contain dashes): an ambiguous label answers for no one,
/// so no org can take another's URL by choosing its slug.
async fn find(state: &AppState, label: &str) -> Result<Option<(Org, SpriteRecord)>, ApiError> {
    let label = label.to_string();
    Ok(state
        .store
        .with(move |c| {
            let Some((name, tail)) = label.rsplit_once('-') else {
                return Ok(None);
            };
            if let Some(org) = store::org_by_id(c, tail)? {
                return Ok(store::sprite_by_name(c, &org.id, name)?.map(|rec| (org, rec)));
            }
            let mut found = None;
            for (i, _) in label.match_indices('-') {
                let (name, slug) = (&label[..i], &label[i + 1..]);
                let Some(org) = store::org_by_slug(c, slug)? else {
                    continue;
                };
                if let Some(rec) = store::sprite_by_name(c, &org.id, name)? {
                    if found.is_some() {
                        return Ok(None);
                    }
                    found = Some((org, rec));
                }
            }
            Ok(found)
        })
        .await?)
}

/// Takes our credentials out of a request bound for an app, whatever the URL's auth mode:
/// `Authorization` when it carries one of our tokens (an app's own Basic or Bearer scheme
/// passes), and every cookie named with [`super::COOKIE_PREFIX`].
fn strip_credentials(headers: &mut http::HeaderMap) {
    if super::bearer(headers).is_some_and(|t| crate::auth::parse(t).is_some()) {
        headers.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| {
            !c.is_empty()
                && !c.starts_with(super::COOKIE_PREFIX)
                && !c.starts_with(sprites_console::SECURE_SESSION_COOKIE)
        })
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
        if !cookies.is_empty() {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// An app's cookies stay on its own host: a `Domain` attribute would hand them to every
/// sprite URL under the domain (and to the console, if it shares the parent domain).
fn host_only_cookies(headers: &mut http::HeaderMap) {
    let rewritten: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            let v = v.to_str().ok()?;
            let kept: Vec<&str> = v
                .split(';')
                .filter(|a| !a.trim().to_ascii_lowercase().starts_with("domain="))
                .collect();
            HeaderValue::from_str(&kept.join(";")).ok()
        })
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in rewritten {
        headers.append(header::SET_COOKIE, v);
    }
}

async fn serve(state: &AppState, label: &str, mut req: Request) -> Result<Response, ApiError> {
    let Some((org, rec)) = find(state, label).await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "no sprite at this URL"));
    };
    if rec.url_auth != "public" {
        let token = super::bearer(req.headers()).map(str::to_string);
        let ok = match token {
            Some(t) => crate::auth::verify(&state.store, &t)
                .await?
                .is_some_and(|o| o.id == org.id),
            None => false,
        };
        if !ok {
            let mut r = ApiError::new(
                ErrorCode::Unauthorized,
                "this sprite URL needs an org token (Authorization: Bearer ...)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    strip_credentials(req.headers_mut());
    let (agent, hold) = state.connect(&org, &rec.name).await?;
    // A raw stream to the app's port inside the sprite.
    let dial = http::Request::get(format!("{}?port=0", sprites_agent_protocol::DIAL_PATH))
        .header(header::HOST, "sprite")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "tcp")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(ApiError::internal)?;
    let resp = sprites_runtime::agent::send(agent, dial).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let msg = sprites_runtime::agent::error_message(resp.into_body(), || {
            format!("the sprite answered {status}")
        })
        .await;
        return Err(ApiError::new(ErrorCode::Unavailable, msg));
    }
    let tunnel = hyper::upgrade::on(resp).await.map_err(ApiError::internal)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(tunnel)
        .await
        .map_err(ApiError::internal)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let client_upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = http::Request::builder().method(parts.method).uri(path);
    for (k, v) in &parts.headers {
        out = out.header(k, v);
    }
    let out = out.body(body).map_err(ApiError::internal)?;
    let mut resp = sender.send_request(out).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("the sprite's web server: {e}"),
        )
    })?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(cu) = client_upgrade {
            let app_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _hold = hold;
                if let Ok((c, a)) = tokio::try_join!(cu, app_upgrade) {
                    let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut a).await;
                }
            });
            let (mut parts, _) = resp.into_parts();
            host_only_cookies(&mut parts.headers);
            return Ok(Response::from_parts(parts, Body::empty()));
        }
    }
    let (mut parts, body) = resp.into_parts();
    host_only_cookies(&mut parts.headers);
    let body = Body::new(body).into_data_stream().map(move |c| {
        let _ = &hold;
        c
    });
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

#[cfg(test)]
mod tests {
    use super::{host_only_cookies, sprite_label, strip_credentials};
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn our_credentials_are_stripped_and_the_apps_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer personal/abcde/tok1/secret"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("app=1; sprites_session=s"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("sprites_csrf=x"));
        strip_credentials(&mut h);
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "app=1");

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("sprites_session=s"),
        );
        strip_credentials(&mut h);
        assert_eq!(h[header::AUTHORIZATION], "Basic dTpw");
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn app_cookies_lose_their_domain() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("a=1; Domain=sprites.localhost; Path=/; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("b=2;domain=.x"),
        );
        host_only_cookies(&mut h);
        let v: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(v, ["a=1; Path=/; HttpOnly", "b=2"]);
    }

    #[test]
    fn labels() {
        let d = "sprites.localhost";
        assert_eq!(
            sprite_label("demo-bhmkr.sprites.localhost:7780", d),
            Some("demo-bhmkr")
        );
        assert_eq!(
            sprite_label("demo-personal.sprites.localhost", d),
            Some("demo-personal")
        );
        assert_eq!(sprite_label("127.0.0.1:7780", d), None);
        assert_eq!(sprite_label("sprites.localhost", d), None);
        assert_eq!(sprite_label("a.b.sprites.localhost", d), None);
    }
}
