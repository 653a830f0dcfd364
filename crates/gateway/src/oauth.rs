//! OAuth 2 for providers that grant tokens (GitHub, Slack): the authorize URL with PKCE
//! (S256) and state, the code exchange, and refresh with the provider's rotated refresh
//! token kept. Built on the `oauth2` crate; the provider's endpoints and this server's
//! client are settings of [`crate::providers`].

use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use crate::providers::Provider;

/// Tokens of a grant.
pub struct Grant {
    /// Access token.
    pub access_token: SecretString,
    /// Refresh token, if the provider gave one.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires (ms since the epoch), if it does.
    pub expires_at_ms: Option<i64>,
    /// Scopes granted, comma-separated, if the provider said.
    pub scopes: Option<String>,
}

/// A started flow: where the browser goes, and what the callback must match.
pub struct Started {
    /// The provider's authorize URL with every parameter.
    pub url: String,
    /// The state (single use).
    pub state: String,
    /// PKCE verifier, kept server-side.
    pub verifier: SecretString,
}

/// An `oauth2` client with its authorize and token endpoints set.
type Client = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn client_of(p: &Provider, redirect_uri: &str) -> Result<Client, String> {
    let o = p
        .oauth
        .as_ref()
        .ok_or_else(|| format!("{} is not an OAuth provider", p.name))?;
    let id = o.client_id.clone().ok_or_else(|| {
        format!(
            "no OAuth client is set up for {} (the operator sets --provider {}.client_id=… and {}.client_secret_file=…)",
            p.name, p.name, p.name
        )
    })?;
    let mut c = BasicClient::new(ClientId::new(id))
        .set_auth_uri(AuthUrl::new(o.authorize_url.clone()).map_err(|e| e.to_string())?)
        .set_token_uri(TokenUrl::new(o.token_url.clone()).map_err(|e| e.to_string())?)
        .set_redirect_uri(RedirectUrl::new(redirect_uri.to_string()).map_err(|e| e.to_string())?);
    if let Some(s) = &o.client_secret {
        c = c.set_client_secret(ClientSecret::new(s.expose_secret().to_string()));
    }
    Ok(c)
}

fn http() -> Result<oauth2::reqwest::Client, String> {
    oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())
}

/// Starts a flow for `scopes` (the provider's defaults when empty).
pub fn start(p: &Provider, scopes: &[String], redirect_uri: &str) -> Result<Started, String> {
    let c = client_of(p, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let defaults: Vec<String> = p
        .oauth
        .as_ref()
        .map(|o| {
            o.default_scopes
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let scopes = if scopes.is_empty() { &defaults } else { scopes };
    let (url, state) = c
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge)
        .url();
    Ok(Started {
        url: url.to_string(),
        state: state.secret().clone(),
        verifier: verifier.secret().clone().into(),
    })
}

fn grant_of(t: &oauth2::basic::BasicTokenResponse, asked: Option<&str>) -> Grant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    Grant {
        access_token: t.access_token().secret().clone().into(),
        refresh_token: t.refresh_token().map(|r| r.secret().clone().into()),
        expires_at_ms: t.expires_in().map(|d| now + d.as_millis() as i64),
        scopes: t
            .scopes()
            .map(|s| {
                s.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .or_else(|| asked.map(str::to_string)),
    }
}

/// Exchanges an authorization code (with the flow's PKCE verifier).
pub async fn exchange(
    p: &Provider,
    code: &SecretString,
    verifier: &SecretString,
    redirect_uri: &str,
    asked_scopes: Option<&str>,
) -> Result<Grant, String> {
    let c = client_of(p, redirect_uri)?;
    let t = c
        .exchange_code(AuthorizationCode::new(code.expose_secret().to_string()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_string()))
        .request_async(&http()?)
        .await
        .map_err(|e| describe(&e))?;
    Ok(grant_of(&t, asked_scopes))
}

/// Gets a new access token with `refresh`. The provider may rotate the refresh token; the
/// grant then carries the new one (else the old one stays valid and is kept by the caller).
pub async fn refresh(
    p: &Provider,
    refresh: &SecretString,
    redirect_uri: &str,
) -> Result<Grant, String> {
    let c = client_of(p, redirect_uri)?;
    let t = c
        .exchange_refresh_token(&RefreshToken::new(refresh.expose_secret().to_string()))
        .request_async(&http()?)
        .await
        .map_err(|e| describe(&e))?;
    Ok(grant_of(&t, None))
}

/// A token endpoint's failure, without anything secret (the crate's errors hold no tokens,
/// but may hold the provider's body; only the error code is kept).
fn describe<RE: std::error::Error + 'static>(
    e: &oauth2::RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            format!("the provider refused: {}", r.error())
        }
        oauth2::RequestTokenError::Request(_) => {
            "the provider's token endpoint could not be reached".into()
        }
        oauth2::RequestTokenError::Parse(_, _) => {
            "the provider's token answer could not be read".into()
        }
        oauth2::RequestTokenError::Other(s) => format!("token exchange failed: {s}"),
    }
}
