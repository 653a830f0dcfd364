//! Routes of the public API. Handlers only translate: parse, call [`crate::service`], map the
//! result to a response.

mod checkpoints;
pub(crate) mod cli;
mod connectors;
mod control;
pub(crate) use checkpoints::ndjson;
pub(crate) use sprites::json_body;
mod forward;
mod official;
mod proxy;
mod sprites;
pub(crate) mod tokens;
mod url;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use sprites_api::{ErrorCode, SPRITE_VERSION, SPRITE_VERSION_HEADER};

use crate::error::ApiError;
use crate::service::Sprites;
use crate::store::Org;

/// Shared state of the handlers.
pub type AppState = Arc<Sprites>;

/// Largest JSON body accepted by the control-plane routes.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// The whole API, also handed to the MCP tools' in-process caller.
pub fn router(state: AppState) -> Router {
    let r = build(state.clone());
    let _ = state.in_process.router.set(r.clone());
    r
}

fn build(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sprites", get(sprites::list).post(sprites::create))
        .route(
            "/sprites/{name}",
            get(sprites::get)
                .put(sprites::update)
                .delete(sprites::delete),
        )
        .route(
            "/sprites/{name}/exec",
            post(forward::exec_post)
                .get(forward::exec_get)
                .head(forward::exec_head),
        )
        .route("/sprites/{name}/exec/{id}", get(forward::exec_attach))
        .route("/sprites/{name}/exec/{id}/kill", post(forward::exec_kill))
        .route("/sprites/{name}/services", any(forward::services))
        .route("/sprites/{name}/services/{*rest}", any(forward::services))
        .route("/sprites/{name}/fs/{*rest}", any(forward::fs))
        .route("/sprites/{name}/proxy", get(proxy::proxy))
        .route("/sprites/{name}/ports/watch", get(forward::ports_watch))
        .route(
            "/sprites/{name}/policy/{kind}",
            get(sprites::get_policy)
                .post(sprites::set_policy)
                .put(sprites::set_policy)
                .delete(sprites::delete_policy),
        )
        .route("/sprites/{name}/checkpoint", post(checkpoints::create))
        .route("/sprites/{name}/checkpoints", get(checkpoints::list))
        .route(
            "/sprites/{name}/checkpoints/{id}",
            get(checkpoints::get).delete(checkpoints::delete),
        )
        .route(
            "/sprites/{name}/checkpoints/{id}/restore",
            post(checkpoints::restore),
        )
        .route("/oauth/connections", get(connectors::list))
        .route(
            "/oauth/connections/api_key",
            post(connectors::create_api_key),
        )
        .route("/oauth/connections/provision", post(connectors::provision))
        .route(
            "/oauth/connections/{id}",
            get(connectors::get)
                .put(connectors::replace)
                .patch(connectors::patch)
                .delete(connectors::delete),
        )
        .route("/oauth/connections/{id}/sprites", get(connectors::sprites))
        .route("/oauth/{provider}/authorize", get(connectors::authorize))
        .route(
            "/mcp/grants",
            get(crate::mcp::list_grants).post(crate::mcp::create_grant),
        )
        .route(
            "/mcp/grants/{id}",
            axum::routing::delete(crate::mcp::revoke_grant),
        )
        .route(
            "/organizations/{org}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/organizations/{org}/tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/sprites/{name}/check", get(sprites::check))
        .route("/templates", get(sprites::list_templates))
        .route(
            "/templates/{tname}",
            get(sprites::get_template)
                .put(sprites::put_template)
                .delete(sprites::delete_template),
        )
        .route("/sprites/{name}/sleep", post(sprites::sleep))
        .route("/sprites/{name}/restart", post(sprites::restart))
        .route("/sprites/{name}/upgrade", post(sprites::upgrade))
        .route("/sprites/{name}/control", get(control::control))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Inside the routes, so the matched route template is known (never a sprite name).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ));
    // The OAuth callback is reached by the user's browser, redirected by the provider (no
    // token; the single-use state names the org), and by scripts with a token (POST).
    let callback = Router::new()
        .route(
            "/v1/oauth/{provider}/callback",
            get(connectors::callback_get).post(connectors::callback_post),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            token_unless_get,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // CLI downloads are public, as the official install script is (no token yet).
        .route("/install.sh", get(cli::install_sh))
        .route("/v1/cli/latest", get(cli::latest))
        .route("/v1/cli/{version}", get(cli::version))
        .route("/v1/cli/{version}/{platform}/sprite", get(cli::download))
        // The gateway answers only on each sprite's own listener; here, nobody is a sprite.
        .route(
            "/v1/gateway/{*rest}",
            any(|| async {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "the gateway is called from inside a running sprite, at $SPRITES_GATEWAY_URL",
                )
            }),
        )
        .merge(callback)
        .merge(state.mcp.router())
        .merge(console(&state))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        // Inside `url::route`: a sprite URL answers what the sprite's app answers.
        .layer(middleware::map_response(crate::error::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), url::route))
        .layer(middleware::map_response(version_header))
        .with_state(state)
}

/// The web console's routes (none when it is turned off).
fn console(state: &AppState) -> Router<AppState> {
    let Some(base) = &state.cfg.console_path else {
        return Router::new();
    };
    let backend = crate::console::ConsoleBackend {
        store: state.store.clone(),
        api: state.in_process.clone(),
        connectors: state.connectors.clone(),
    };
    std::sync::Arc::new(sprites_console::Console::new(
        std::sync::Arc::new(backend),
        base,
        state.cfg.scheme == "https",
    ))
    .router()
}

async fn version_header(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        SPRITE_VERSION_HEADER,
        HeaderValue::from_static(SPRITE_VERSION),
    );
    resp
}

/// Every cookie this server sets (console, OAuth pages) is named with this prefix, so that
/// sprite URLs can keep them from the apps in sprites.
pub const COOKIE_PREFIX: &str = "sprites_";

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// [`require_token`] for every method but GET.
async fn token_unless_get(state: State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == http::Method::GET {
        return next.run(req).await;
    }
    require_token(state, req, next).await
}

/// Every `/v1` route needs `Authorization: Bearer <token>`; the org goes into extensions.
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // MCP tools call the API in-process with the org already found (only this process can
    // put an extension on a request).
    if req.extensions().get::<Org>().is_some() {
        return next.run(req).await;
    }
    let token = bearer(req.headers());
    let Some(token) = token else {
        return ApiError::new(ErrorCode::Unauthorized, "missing bearer token").into_response();
    };
    match crate::auth::verify(&state.store, token).await {
        Ok(Some(org)) => {
            let id = crate::auth::parse(token).map(|p| p.token_id.to_string());
            if let Some(id) = id {
                req.extensions_mut()
                    .insert(crate::http::tokens::TokenId(id));
            }
            req.extensions_mut().insert::<Org>(org);
            next.run(req).await
        }
        Ok(None) => ApiError::new(ErrorCode::Unauthorized, "invalid token").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
