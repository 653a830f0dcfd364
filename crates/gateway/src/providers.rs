//! The providers a connection can be made for: one table, data only. Adding a provider is a
//! row in [`PROVIDERS`]; an operator overrides any row's URLs and OAuth client with
//! `--provider NAME.FIELD=VALUE` (see [`ProviderTable::set`]).

use std::collections::BTreeMap;

use secrecy::SecretString;
use sprites_api::connector::AuthIn;

/// How a provider's credential is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user pastes an API key.
    ApiKey,
    /// An OAuth grant (authorize, callback, refresh).
    OAuth,
    /// `custom_api`: the connection brings its base URL and placement.
    Custom,
}

/// Where a credential goes on a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Header, query parameter or first path segment.
    pub placement: AuthIn,
    /// Header or parameter name.
    pub name: String,
    /// Value with `{token}` where the token goes.
    pub format: String,
}

impl Placement {
    /// `Authorization: Bearer {token}`.
    pub fn bearer() -> Self {
        Placement {
            placement: AuthIn::Header,
            name: "authorization".into(),
            format: "Bearer {token}".into(),
        }
    }

    /// A custom API's placement, with the defaults of the docs.
    pub fn from_custom(a: &sprites_api::connector::CustomAuth) -> Result<Self, String> {
        let name = match (a.placement, &a.name) {
            (_, Some(n)) => n.clone(),
            (AuthIn::Query, None) => "api_key".into(),
            _ => "authorization".into(),
        };
        let format = match &a.format {
            Some(f) => f.clone(),
            None if a.placement == AuthIn::Header && name.eq_ignore_ascii_case("authorization") => {
                "Bearer {token}".into()
            }
            None => "{token}".into(),
        };
        if !format.contains("{token}") {
            return Err("auth.format must contain {token}".into());
        }
        if a.placement != AuthIn::Path {
            let ok = !name.is_empty()
                && name.len() <= 100
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
            if !ok {
                return Err(format!(
                    "auth.name {name:?} is not a usable header or parameter name"
                ));
            }
        }
        if a.placement == AuthIn::Header && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("auth.name {name:?} is not a header name"));
        }
        Ok(Placement {
            placement: a.placement,
            name: name.to_ascii_lowercase(),
            format,
        })
    }
}

/// A row of the table.
pub struct Row {
    /// Name in URLs and requests.
    pub name: &'static str,
    /// Shown to people.
    pub display_name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// How the credential is obtained.
    pub kind: Kind,
    /// Where calls go (empty for `custom_api`).
    pub base_url: &'static str,
    /// Header or parameter of the credential, and its format.
    pub auth: (AuthIn, &'static str, &'static str),
    /// OAuth: authorize URL, token URL, default scopes (comma-separated).
    pub oauth: Option<(&'static str, &'static str, &'static str)>,
}

/// Every provider.
pub const PROVIDERS: &[Row] = &[
    Row {
        name: "custom_api",
        display_name: "Custom API",
        description: "Any HTTP API with a token: its base URL and where the token goes",
        kind: Kind::Custom,
        base_url: "",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: None,
    },
    Row {
        name: "openrouter",
        display_name: "OpenRouter",
        description: "One API for hundreds of language models",
        kind: Kind::ApiKey,
        base_url: "https://openrouter.ai/api",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: None,
    },
    Row {
        name: "anthropic",
        display_name: "Anthropic",
        description: "The Claude API",
        kind: Kind::ApiKey,
        base_url: "https://api.anthropic.com",
        auth: (AuthIn::Header, "x-api-key", "{token}"),
        oauth: None,
    },
    Row {
        name: "openai",
        display_name: "OpenAI",
        description: "The OpenAI API",
        kind: Kind::ApiKey,
        base_url: "https://api.openai.com",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: None,
    },
    Row {
        name: "github",
        display_name: "GitHub",
        description: "Repositories, issues and pull requests, as the user who connected",
        kind: Kind::OAuth,
        base_url: "https://api.github.com",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: Some((
            "https://github.com/login/oauth/authorize",
            "https://github.com/login/oauth/access_token",
            "repo,read:user",
        )),
    },
    Row {
        name: "slack",
        display_name: "Slack",
        description: "Slack as the user who connected",
        kind: Kind::OAuth,
        base_url: "https://slack.com/api",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: Some((
            "https://slack.com/oauth/v2/authorize",
            "https://slack.com/api/oauth.v2.access",
            "channels:read,chat:write,users:read",
        )),
    },
    Row {
        name: "slack_bot",
        display_name: "Slack (bot)",
        description: "Slack as the workspace's bot",
        kind: Kind::OAuth,
        base_url: "https://slack.com/api",
        auth: (AuthIn::Header, "authorization", "Bearer {token}"),
        oauth: Some((
            "https://slack.com/oauth/v2/authorize",
            "https://slack.com/api/oauth.v2.access",
            "channels:read,chat:write",
        )),
    },
];

/// A provider as this server uses it: the row with the operator's overrides.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Description.
    pub description: String,
    /// Kind.
    pub kind: Kind,
    /// Base URL of calls.
    pub base_url: String,
    /// Credential placement.
    pub auth: Placement,
    /// OAuth endpoints and client, when an OAuth provider.
    pub oauth: Option<OAuthClient>,
    /// The operator's own credential ("managed"), if offered.
    pub managed: Option<SecretString>,
}

/// An OAuth provider's endpoints and this server's client registration.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Scopes asked for when none are given.
    pub default_scopes: String,
    /// Client id (a setting: the self-hoster registers their own app).
    pub client_id: Option<String>,
    /// Client secret.
    pub client_secret: Option<SecretString>,
}

/// The providers of this server.
#[derive(Debug, Clone)]
pub struct ProviderTable {
    rows: BTreeMap<String, Provider>,
    order: Vec<String>,
}

impl Default for ProviderTable {
    fn default() -> Self {
        let mut rows = BTreeMap::new();
        let mut order = Vec::new();
        for r in PROVIDERS {
            order.push(r.name.to_string());
            rows.insert(
                r.name.to_string(),
                Provider {
                    name: r.name.into(),
                    display_name: r.display_name.into(),
                    description: r.description.into(),
                    kind: r.kind,
                    base_url: r.base_url.into(),
                    auth: Placement {
                        placement: r.auth.0,
                        name: r.auth.1.into(),
                        format: r.auth.2.into(),
                    },
                    oauth: r.oauth.map(|(a, t, s)| OAuthClient {
                        authorize_url: a.into(),
                        token_url: t.into(),
                        default_scopes: s.into(),
                        client_id: None,
                        client_secret: None,
                    }),
                    managed: None,
                },
            );
        }
        ProviderTable { rows, order }
    }
}

impl ProviderTable {
    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.rows.get(name)
    }

    /// Every provider, in table order.
    pub fn all(&self) -> impl Iterator<Item = &Provider> {
        self.order.iter().filter_map(|n| self.rows.get(n))
    }

    /// Applies one `NAME.FIELD=VALUE` setting: `base_url`, `authorize_url`, `token_url`,
    /// `scopes`, `client_id`, `client_secret` (the value), or `client_secret_file`.
    pub fn set(&mut self, setting: &str) -> Result<(), String> {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected NAME.FIELD=VALUE"))?;
        let (name, field) = key
            .split_once('.')
            .ok_or_else(|| format!("{key:?}: expected NAME.FIELD"))?;
        let p = self
            .rows
            .get_mut(name)
            .ok_or_else(|| format!("unknown provider {name:?}"))?;
        let url = |v: &str| -> Result<String, String> {
            let u = url::Url::parse(v).map_err(|e| format!("{key}: {e}"))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(format!("{key}: not an http(s) URL"));
            }
            Ok(v.trim_end_matches('/').to_string())
        };
        fn oauth(p: &mut Provider) -> Result<&mut OAuthClient, String> {
            let name = p.name.clone();
            p.oauth
                .as_mut()
                .ok_or_else(|| format!("{name} is not an OAuth provider"))
        }
        match field {
            "base_url" => p.base_url = url(value)?,
            "authorize_url" => oauth(p)?.authorize_url = url(value)?,
            "token_url" => oauth(p)?.token_url = url(value)?,
            "scopes" => oauth(p)?.default_scopes = value.to_string(),
            "client_id" => oauth(p)?.client_id = Some(value.to_string()),
            "client_secret" => oauth(p)?.client_secret = Some(value.to_string().into()),
            "client_secret_file" => {
                let s = std::fs::read_to_string(value).map_err(|e| format!("{value}: {e}"))?;
                oauth(p)?.client_secret = Some(s.trim().to_string().into());
            }
            _ => return Err(format!("unknown provider setting {field:?}")),
        }
        Ok(())
    }

    /// Offers the operator's own credential for `name` (`NAME=FILE`): orgs then provision it.
    pub fn set_managed(&mut self, setting: &str) -> Result<(), String> {
        let (name, file) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?}: expected PROVIDER=FILE"))?;
        let p = self
            .rows
            .get_mut(name)
            .ok_or_else(|| format!("unknown provider {name:?}"))?;
        if p.kind == Kind::Custom {
            return Err("custom_api cannot be managed".into());
        }
        let key = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{file} is empty"));
        }
        p.managed = Some(key.to_string().into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_providers_of_the_docs_and_settings_override_rows() {
        let mut t = ProviderTable::default();
        for n in [
            "custom_api",
            "openrouter",
            "anthropic",
            "openai",
            "github",
            "slack",
            "slack_bot",
        ] {
            assert!(t.get(n).is_some(), "{n}");
        }
        assert!(t.get("github").unwrap().oauth.is_some());
        t.set("anthropic.base_url=http://127.0.0.1:9/").unwrap();
        assert_eq!(t.get("anthropic").unwrap().base_url, "http://127.0.0.1:9");
        t.set("github.client_id=abc").unwrap();
        assert_eq!(
            t.get("github")
                .unwrap()
                .oauth
                .as_ref()
                .unwrap()
                .client_id
                .as_deref(),
            Some("abc")
        );
        assert!(t.set("anthropic.client_id=x").is_err());
        assert!(t.set("nope.base_url=http://x").is_err());
        assert!(t.set("openai.base_url=file:///etc").is_err());
    }

    #[test]
    fn custom_placements_default_as_documented_and_refuse_bad_names() {
        use sprites_api::connector::CustomAuth;
        let p = Placement::from_custom(&CustomAuth::default()).unwrap();
        assert_eq!(
            (p.name.as_str(), p.format.as_str()),
            ("authorization", "Bearer {token}")
        );
        let q = Placement::from_custom(&CustomAuth {
            placement: AuthIn::Query,
            ..Default::default()
        })
        .unwrap();
        assert_eq!((q.name.as_str(), q.format.as_str()), ("api_key", "{token}"));
        for bad in ["a b", "x\r\ny", ""] {
            let a = CustomAuth {
                name: Some(bad.into()),
                ..Default::default()
            };
            assert!(Placement::from_custom(&a).is_err(), "{bad:?}");
        }
        let nofmt = CustomAuth {
            format: Some("Bearer".into()),
            ..Default::default()
        };
        assert!(Placement::from_custom(&nofmt).is_err());
    }
}
