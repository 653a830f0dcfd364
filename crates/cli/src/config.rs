//! `~/.sprites/sprites.json` (the official CLI's shape) and the per-directory `.sprite` file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Fallback API URL for a self-hosted server when nothing else says which.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7780";

/// The whole config file. Unknown fields are kept when it is rewritten.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Format version.
    #[serde(default = "one")]
    pub version: String,
    /// What commands use by default.
    #[serde(default)]
    pub current_selection: Selection,
    /// Orgs by API URL.
    #[serde(default)]
    pub urls: BTreeMap<String, UrlEntry>,
    /// Short names of API URLs (`sprite org auth -o ALIAS:ORG URL`, then `-o ALIAS:ORG`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub url_aliases: BTreeMap<String, String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// An `-o` value: `ORG`, or `ALIAS:ORG` (an org at the API URL saved as ALIAS).
pub fn split_org(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once(':') {
        Some((alias, org)) if !alias.is_empty() => (Some(alias), org),
        _ => (None, spec),
    }
}

fn one() -> String {
    "1".into()
}

/// The selected URL and org.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// API URL.
    #[serde(default)]
    pub url: String,
    /// Org slug.
    #[serde(default)]
    pub org: String,
}

/// One API URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UrlEntry {
    /// The URL again (the docs' shape).
    pub url: String,
    /// Orgs by slug.
    #[serde(default)]
    pub orgs: BTreeMap<String, OrgEntry>,
}

/// One org's credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OrgEntry {
    /// Slug.
    pub name: String,
    /// The token, when it is kept in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// Where the token is in the system keyring (`sprite org keyring enable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring_key: Option<String>,
    /// Whether the token is in the system keyring rather than in this file.
    #[serde(default)]
    pub use_keyring: bool,
    /// Reserved by the official CLI.
    #[serde(default)]
    pub sprites: serde_json::Value,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// `~/.sprites/sprites.json`.
pub fn path(home: &Path) -> PathBuf {
    home.join(".sprites").join("sprites.json")
}

/// The user's home directory.
pub fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

impl Config {
    /// Reads the config under `home`; an absent file is an empty config.
    pub fn load(home: &Path) -> Result<Self> {
        let p = path(home);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not valid JSON", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                version: one(),
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the config atomically, readable by the user only.
    pub fn save(&self, home: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let p = path(home);
        let dir = p.parent().context("config path")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let tmp = dir.join(".sprites.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// Stores `token` for its org at `url` and selects them.
    pub fn add_token(&mut self, url: &str, token: &str) -> Result<String> {
        let slug = token.split('/').next().unwrap_or_default().to_string();
        if slug.is_empty() || token.split('/').count() < 3 {
            bail!("token must look like org-slug/org-id/token-id/secret");
        }
        let entry = self
            .urls
            .entry(url.to_string())
            .or_insert_with(|| UrlEntry {
                url: url.to_string(),
                orgs: BTreeMap::new(),
            });
        entry.orgs.insert(
            slug.clone(),
            OrgEntry {
                name: slug.clone(),
                api_token: Some(token.to_string()),
                keyring_key: None,
                use_keyring: false,
                sprites: serde_json::json!({}),
                rest: BTreeMap::new(),
            },
        );
        self.current_selection = Selection {
            url: url.to_string(),
            org: slug.clone(),
        };
        Ok(slug)
    }

    /// A URL as given, or the URL saved under that alias (anything without `://`).
    pub fn resolve_url(&self, url_or_alias: &str) -> Result<String> {
        if url_or_alias.contains("://") {
            return Ok(url_or_alias.trim_end_matches('/').to_string());
        }
        match self.url_aliases.get(url_or_alias) {
            Some(u) => Ok(u.clone()),
            None => bail!(
                "{url_or_alias:?} is neither a URL nor a saved alias (`sprite org auth -o {url_or_alias}:ORG URL` saves one)"
            ),
        }
    }

    /// The token stored for `org` at `url`: from this file, or from the system keyring.
    pub fn token(&self, url: &str, org: &str) -> Option<Result<String>> {
        let e = self.urls.get(url)?.orgs.get(org)?;
        match (&e.api_token, e.use_keyring, &e.keyring_key) {
            (Some(t), _, _) => Some(Ok(t.clone())),
            (None, true, Some(k)) => Some(crate::secrets::load(k)),
            _ => None,
        }
    }

    /// Whether tokens go to the system keyring (`sprite org keyring enable` was run).
    pub fn keyring_enabled(&self) -> bool {
        self.urls
            .values()
            .flat_map(|u| u.orgs.values())
            .any(|o| o.use_keyring)
    }
}

/// The `.sprite` file of a directory: which sprite (and org) commands there use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Local {
    /// Org slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Sprite name.
    pub sprite: String,
}

/// Finds `.sprite` in `dir` or its parents.
pub fn find_local(dir: &Path) -> Option<(PathBuf, Local)> {
    for d in dir.ancestors() {
        let p = d.join(".sprite");
        if let Ok(b) = std::fs::read(&p) {
            if let Ok(l) = serde_json::from_slice::<Local>(&b) {
                return Some((p, l));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_fields() {
        let home = tempfile::tempdir().unwrap();
        let mut c = Config::load(home.path()).unwrap();
        assert!(c.urls.is_empty());
        let slug = c.add_token("http://h:1", "acme/o1/t1/s").unwrap();
        assert_eq!(slug, "acme");
        c.save(home.path()).unwrap();
        let mode = std::fs::metadata(path(home.path())).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Fields we do not know survive a rewrite.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(home.path())).unwrap()).unwrap();
        v["extra"] = serde_json::json!({"keep": true});
        std::fs::write(path(home.path()), v.to_string()).unwrap();
        let c2 = Config::load(home.path()).unwrap();
        assert_eq!(
            c2.token("http://h:1", "acme").map(|t| t.unwrap()),
            Some("acme/o1/t1/s".to_string())
        );
        c2.save(home.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path(home.path())).unwrap()).unwrap();
        assert_eq!(v["extra"]["keep"], true);
        assert_eq!(v["current_selection"]["org"], "acme");
        assert_eq!(
            v["urls"]["http://h:1"]["orgs"]["acme"]["use_keyring"],
            false
        );
        assert!(c.clone().add_token("u", "nonsense").is_err());
    }

    #[test]
    fn local_file_in_parents() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(".sprite"),
            r#"{"organization":"personal","sprite":"p"}"#,
        )
        .unwrap();
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let (_, l) = find_local(&sub).unwrap();
        assert_eq!(l.sprite, "p");
        assert_eq!(l.organization.as_deref(), Some("personal"));
    }
}
