//! Which server, org, token and sprite a command uses: flags, then environment, then the
//! `.sprite` file, then the config file.

use anyhow::{bail, Context as _, Result};

use crate::config::{self, Config};

/// The resolved context of one invocation.
pub struct Ctx {
    /// API URL.
    pub url: String,
    /// Org slug, when known.
    pub org: Option<String>,
    token: Option<String>,
    /// Why a stored token could not be read (the keyring), for the error instead of "not
    /// logged in".
    token_error: Option<String>,
    sprite: Option<String>,
    /// Whether the sprite came from `-s` (not from `.sprite`).
    pub sprite_from_flag: bool,
}

impl Ctx {
    /// Resolves flags (`-o ALIAS:ORG` too), `SPRITE_URL`, `SPRITES_API_URL`, `SPRITE_ORG`,
    /// `SPRITE_TOKEN`, `.sprite` and the config.
    pub fn resolve(org_flag: Option<String>, sprite_flag: Option<String>) -> Result<Self> {
        let home = config::home()?;
        let cfg = Config::load(&home)?;
        let local = std::env::current_dir()
            .ok()
            .and_then(|d| config::find_local(&d))
            .map(|(_, l)| l);
        // `-o ALIAS:ORG` names the API URL too.
        let (alias_url, org_flag) = match org_flag.as_deref().map(config::split_org) {
            Some((Some(alias), org)) => (Some(cfg.resolve_url(alias)?), Some(org.to_string())),
            _ => (None, org_flag),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|u| !u.is_empty());
        let url = alias_url
            .or_else(|| env("SPRITE_URL"))
            .or_else(|| env("SPRITES_API_URL"))
            .or_else(|| Some(cfg.current_selection.url.clone()).filter(|u| !u.is_empty()))
            .unwrap_or_else(|| config::DEFAULT_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        let org = org_flag
            .or_else(|| std::env::var("SPRITE_ORG").ok().filter(|o| !o.is_empty()))
            .or_else(|| local.as_ref().and_then(|l| l.organization.clone()))
            .or_else(|| {
                (cfg.current_selection.url == url)
                    .then(|| cfg.current_selection.org.clone())
                    .filter(|o| !o.is_empty())
            })
            .or_else(|| {
                // A single org stored for this URL needs no selection.
                let orgs = &cfg.urls.get(&url)?.orgs;
                (orgs.len() == 1)
                    .then(|| orgs.keys().next().cloned())
                    .flatten()
            });
        let stored = org.as_deref().and_then(|o| cfg.token(&url, o));
        let token_error = match &stored {
            Some(Err(e)) => Some(format!("{e:#}")),
            _ => None,
        };
        let token = stored
            .and_then(Result::ok)
            .or_else(|| std::env::var("SPRITE_TOKEN").ok().filter(|t| !t.is_empty()));
        let sprite_from_flag = sprite_flag.is_some();
        let sprite = sprite_flag.or_else(|| local.map(|l| l.sprite));
        Ok(Ctx {
            url,
            org,
            token,
            token_error,
            sprite,
            sprite_from_flag,
        })
    }

    /// An SDK client, or an error telling how to log in.
    pub fn client(&self) -> Result<sprites::Client> {
        if let (None, Some(e)) = (&self.token, &self.token_error) {
            anyhow::bail!("{e}");
        }
        let token = self.token.as_ref().with_context(|| {
            format!(
                "not logged in to {}: run `sprite auth setup --token TOKEN` or `sprite login`",
                self.url
            )
        })?;
        Ok(sprites::Client::new(token.clone()).base_url(&self.url))
    }

    /// An SDK client for the server's public routes (CLI downloads): the token if there is
    /// one, else none.
    pub fn anonymous_client(&self) -> sprites::Client {
        sprites::Client::new(self.token.clone().unwrap_or_default()).base_url(&self.url)
    }

    /// The token, when there is one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The selected sprite's name, or an error telling how to pick one.
    pub fn sprite_name(&self, explicit: Option<String>) -> Result<String> {
        match explicit.or_else(|| self.sprite.clone()) {
            Some(s) => Ok(s),
            None => bail!("no sprite selected: pass -s NAME or run `sprite use NAME`"),
        }
    }

    /// A handle on the selected sprite.
    pub fn sprite(&self) -> Result<sprites::SpriteHandle> {
        let name = self.sprite_name(None)?;
        Ok(self.client()?.sprite(&name))
    }
}

/// Maps SDK errors to readable lines, with a hint where one helps.
pub fn friendly(e: sprites::Error) -> anyhow::Error {
    match &e {
        sprites::Error::Api { status: 401, .. } => {
            anyhow::anyhow!(
                "the server rejected the token ({e}); run `sprite auth setup --token TOKEN`"
            )
        }
        _ => anyhow::Error::new(e),
    }
}
