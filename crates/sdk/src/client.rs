//! The client and sprite handles: CRUD over HTTP.

use std::time::Duration;

use serde::de::DeserializeOwned;
use sprites_api::{
    CreateSpriteRequest, ListSpritesResponse, Sprite, UpdateSpriteRequest, UrlSettings,
};

use crate::error::{Error, Result};
use crate::exec::Command;

/// Default API endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.sprites.dev";

/// A client for one server and token. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
    timeout: Duration,
}

/// Options of [`Client::list_sprites`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only names with this prefix.
    pub prefix: Option<String>,
    /// Page size (the server clamps it).
    pub max_results: Option<u32>,
    /// Token from the previous page.
    pub continuation_token: Option<String>,
}

impl Client {
    /// A client for `token` against the public endpoint; see [`Client::base_url`].
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: DEFAULT_BASE_URL.into(),
            token: token.into(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Points the client at another server (`http://127.0.0.1:7780`).
    pub fn base_url(mut self, url: impl AsRef<str>) -> Self {
        self.base = url.as_ref().trim_end_matches('/').to_string();
        self
    }

    /// Timeout of plain requests (not of streams).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The base URL in use.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The token in use.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `path` (starting with `/v1/`) with the token attached.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub(crate) fn connect_err(&self, e: reqwest::Error) -> Error {
        if e.is_connect() || e.is_timeout() {
            Error::Connect {
                url: self.base.clone(),
                source: e,
            }
        } else {
            Error::Http(e)
        }
    }

    /// Sends a request and checks its status; the body is returned on success.
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<bytes::Bytes> {
        let resp = req
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.connect_err(e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if ok.contains(&status) || (ok.is_empty() && (200..300).contains(&status)) {
            Ok(body)
        } else {
            Err(Error::from_body(status, &body))
        }
    }

    /// Sends a request whose body is a long stream (no overall timeout) and checks its status.
    pub(crate) async fn send_stream(
        &self,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.connect_err(e))?;
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            Ok(resp)
        } else {
            let body = resp.bytes().await?;
            Err(Error::from_body(status, &body))
        }
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<T> {
        let body = self.send(req, ok).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("unexpected response: {e}")))
    }

    /// Creates a sprite named `name` with default settings.
    pub async fn create_sprite(&self, name: &str) -> Result<Sprite> {
        self.create_sprite_with(&CreateSpriteRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
    }

    /// Creates a sprite from a full request.
    pub async fn create_sprite_with(&self, req: &CreateSpriteRequest) -> Result<Sprite> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/sprites").json(req),
            &[201],
        )
        .await
    }

    /// One sprite.
    pub async fn get_sprite(&self, name: &str) -> Result<Sprite> {
        self.json(
            self.request(reqwest::Method::GET, &sprite_path(name, "")),
            &[],
        )
        .await
    }

    /// Watches the org's sprites under `prefix`: a line per sprite now, then one per state
    /// change, and heartbeats (`kind == Some("heartbeat")`), until dropped.
    pub async fn watch_sprites(
        &self,
        prefix: Option<&str>,
    ) -> Result<crate::NdjsonStream<sprites_api::WatchEvent>> {
        let mut req = self
            .request(reqwest::Method::GET, "/v1/sprites")
            .header(reqwest::header::ACCEPT, "application/x-ndjson");
        if let Some(p) = prefix {
            req = req.query(&[("prefix", p)]);
        }
        let resp = self.send_stream(req, &[200]).await?;
        Ok(crate::NdjsonStream::new(resp))
    }

    /// One page of sprites.
    pub async fn list_sprites(&self, opts: &ListOptions) -> Result<ListSpritesResponse> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &opts.prefix {
            q.push(("prefix", p.clone()));
        }
        if let Some(m) = opts.max_results {
            q.push(("max_results", m.to_string()));
        }
        if let Some(t) = &opts.continuation_token {
            q.push(("continuation_token", t.clone()));
        }
        self.json(
            self.request(reqwest::Method::GET, "/v1/sprites").query(&q),
            &[],
        )
        .await
    }

    /// Every sprite (with `prefix`), following continuation tokens.
    pub async fn list_all_sprites(&self, prefix: Option<&str>) -> Result<Vec<Sprite>> {
        let mut all = Vec::new();
        let mut opts = ListOptions {
            prefix: prefix.map(str::to_string),
            max_results: Some(50),
            continuation_token: None,
        };
        loop {
            let page = self.list_sprites(&opts).await?;
            all.extend(page.sprites);
            match page.next_continuation_token {
                Some(t) if page.has_more => opts.continuation_token = Some(t),
                _ => return Ok(all),
            }
        }
    }

    /// Partial update (URL settings, labels).
    pub async fn update_sprite(&self, name: &str, req: &UpdateSpriteRequest) -> Result<Sprite> {
        self.json(
            self.request(reqwest::Method::PUT, &sprite_path(name, ""))
                .json(req),
            &[200],
        )
        .await
    }

    /// Deletes a sprite and everything it owns.
    pub async fn delete_sprite(&self, name: &str) -> Result<()> {
        self.send(
            self.request(reqwest::Method::DELETE, &sprite_path(name, "")),
            &[200, 204],
        )
        .await
        .map(|_| ())
    }

    /// Stops every process of a sprite and boots it again.
    pub async fn restart_sprite(&self, name: &str) -> Result<()> {
        self.send(
            self.request(reqwest::Method::POST, &sprite_path(name, "/restart")),
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Moves sprite `name` to the server's current base image, keeping its disk (a running
    /// sprite reboots for it).
    pub async fn upgrade_sprite(&self, name: &str) -> Result<sprites_api::UpgradeResult> {
        self.json(
            self.request(reqwest::Method::POST, &sprite_path(name, "/upgrade")),
            &[],
        )
        .await
    }

    /// The CLI release the server offers (`version`, else its latest, on `channel`, else
    /// `release`). Public: needs no valid token.
    pub async fn cli_release(
        &self,
        version: Option<&str>,
        channel: Option<&str>,
    ) -> Result<sprites_api::cli::CliRelease> {
        let path = match version {
            Some(v) => {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
                {
                    return Err(Error::Protocol(format!("invalid version {v:?}")));
                }
                format!("/v1/cli/{v}")
            }
            None => "/v1/cli/latest".to_string(),
        };
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = channel {
            req = req.query(&[("channel", c)]);
        }
        self.json(req, &[]).await
    }

    /// Downloads a file the server offers at `path` (a CLI build's `url`), whole.
    pub async fn download(&self, path: &str) -> Result<bytes::Bytes> {
        if !path.starts_with("/v1/") {
            return Err(Error::Protocol(format!("not a server path: {path:?}")));
        }
        let resp = self
            .send_stream(self.http.get(format!("{}{path}", self.base)), &[200])
            .await?;
        Ok(resp.bytes().await?)
    }

    /// The org's tokens (an admin token only).
    pub async fn org_tokens(&self, org: &str) -> Result<Vec<sprites_api::OrgToken>> {
        let escaped: String = url::form_urlencoded::byte_serialize(org.as_bytes()).collect();
        let l: sprites_api::OrgTokenList = self
            .json(
                self.request(
                    reqwest::Method::GET,
                    &format!("/v1/organizations/{escaped}/tokens"),
                ),
                &[200],
            )
            .await?;
        Ok(l.tokens)
    }

    /// Mints a token for the org (an admin token only); the token is in this answer only.
    pub async fn mint_token(
        &self,
        org: &str,
        req: &sprites_api::MintTokenRequest,
    ) -> Result<sprites_api::MintedToken> {
        let escaped: String = url::form_urlencoded::byte_serialize(org.as_bytes()).collect();
        self.json(
            self.request(
                reqwest::Method::POST,
                &format!("/v1/organizations/{escaped}/tokens"),
            )
            .json(req),
            &[201],
        )
        .await
    }

    /// Revokes token `id` of the org.
    pub async fn revoke_token(&self, org: &str, id: &str) -> Result<()> {
        let o: String = url::form_urlencoded::byte_serialize(org.as_bytes()).collect();
        let i: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        self.send(
            self.request(
                reqwest::Method::DELETE,
                &format!("/v1/organizations/{o}/tokens/{i}"),
            ),
            &[204],
        )
        .await?;
        Ok(())
    }

    /// The org's templates.
    pub async fn list_templates(&self) -> Result<Vec<sprites_api::Template>> {
        let l: sprites_api::TemplateList = self
            .json(self.request(reqwest::Method::GET, "/v1/templates"), &[200])
            .await?;
        Ok(l.templates)
    }

    /// Makes or replaces template `name` from a sprite's checkpoint (or from it now).
    pub async fn put_template(
        &self,
        name: &str,
        req: &sprites_api::PutTemplateRequest,
    ) -> Result<sprites_api::Template> {
        let escaped: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.json(
            self.request(reqwest::Method::PUT, &format!("/v1/templates/{escaped}"))
                .json(req),
            &[200],
        )
        .await
    }

    /// Deletes template `name`.
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        let escaped: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.send(
            self.request(reqwest::Method::DELETE, &format!("/v1/templates/{escaped}")),
            &[204],
        )
        .await?;
        Ok(())
    }

    /// A handle on sprite `name` (no request is made).
    pub fn sprite(&self, name: &str) -> SpriteHandle {
        SpriteHandle {
            client: self.clone(),
            name: name.to_string(),
        }
    }
}

/// `/v1/sprites/<name><rest>`, with the name escaped.
pub(crate) fn sprite_path(name: &str, rest: &str) -> String {
    let escaped: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    format!("/v1/sprites/{}{rest}", escaped.replace('+', "%20"))
}

/// A sprite, by name.
#[derive(Clone, Debug)]
pub struct SpriteHandle {
    pub(crate) client: Client,
    pub(crate) name: String,
}

impl SpriteHandle {
    /// The sprite's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client behind the handle.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Fetches the sprite.
    pub async fn get(&self) -> Result<Sprite> {
        self.client.get_sprite(&self.name).await
    }

    /// Updates the sprite.
    pub async fn update(&self, req: &UpdateSpriteRequest) -> Result<Sprite> {
        self.client.update_sprite(&self.name, req).await
    }

    /// Sets who may use the sprite's URL (`"sprite"` or `"public"`).
    pub async fn set_url_auth(&self, auth: &str) -> Result<Sprite> {
        let req = UpdateSpriteRequest {
            url_settings: Some(UrlSettings {
                auth: Some(auth.into()),
                private_access: None,
            }),
            ..Default::default()
        };
        self.update(&req).await
    }

    /// Deletes the sprite.
    pub async fn delete(&self) -> Result<()> {
        self.client.delete_sprite(&self.name).await
    }

    /// Restarts the sprite.
    pub async fn restart(&self) -> Result<()> {
        self.client.restart_sprite(&self.name).await
    }

    /// Puts the sprite to sleep now (frozen, or stopped with `cold`).
    pub async fn sleep(&self, cold: bool, force: bool) -> Result<Sprite> {
        let req = sprites_api::SleepRequest {
            state: Some(if cold { "cold" } else { "warm" }.into()),
            force: force.then_some(true),
        };
        self.client
            .json(
                self.client
                    .request(reqwest::Method::POST, &sprite_path(&self.name, "/sleep"))
                    .json(&req),
                &[200],
            )
            .await
    }

    /// Moves the sprite to the server's current base image (see [`Client::upgrade_sprite`]).
    pub async fn upgrade(&self) -> Result<sprites_api::UpgradeResult> {
        self.client.upgrade_sprite(&self.name).await
    }

    /// A command to run in the sprite, in the spirit of `std::process::Command`.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::new(self.clone(), program).args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_base() {
        assert_eq!(sprite_path("demo", "/exec"), "/v1/sprites/demo/exec");
        assert_eq!(sprite_path("a b/c", ""), "/v1/sprites/a%20b%2Fc");
        let c = Client::new("t").base_url("http://127.0.0.1:1/");
        assert_eq!(c.url(), "http://127.0.0.1:1");
    }
}
