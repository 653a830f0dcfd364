//! Sprite URLs: `<name>-<org>.<url-domain>` routed by Host header to the sprite's port 8080
//! (or its `http_port` service), HTTP/1.1 and WebSocket, waking the sprite. `auth: sprite`
//! needs an org token (`Authorization: Bearer`); `public` needs none. The token used for
//! the sprite URL never reaches the sprite.

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

/// The label of a sprite URL host (`demo-personal` in `demo-personal.sprites.localhost:7780`).
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

/// Finds the sprite of a label; names and org slugs may both contain dashes, so every split
/// is tried.
async fn find(state: &AppState, label: &str) -> Result<Option<(Org, SpriteRecord)>, ApiError> {
    let label = label.to_string();
    Ok(state
        .store
        .with(move |c| {
            for (i, _) in label.match_indices('-') {
                let (name, slug) = (&label[..i], &label[i + 1..]);
                if let Some(org) = store::org_by_slug(c, slug)? {
                    if let Some(rec) = store::sprite_by_name(c, &org.id, name)? {
                        return Ok(Some((org, rec)));
                    }
                }
            }
            Ok(None)
        })
        .await?)
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
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = serde_json::from_slice::<sprites_api::ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("the sprite answered {status}"));
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
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
    }
    let (parts, body) = resp.into_parts();
    let body = Body::new(body).into_data_stream().map(move |c| {
        let _ = &hold;
        c
    });
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

#[cfg(test)]
mod tests {
    use super::sprite_label;

    #[test]
    fn labels() {
        let d = "sprites.localhost";
        assert_eq!(
            sprite_label("demo-personal.sprites.localhost:7780", d),
            Some("demo-personal")
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
