//! Finds the Debian mirror and release the host itself uses, from its apt sources.
//!
//! We never hard-code a mirror: the image is built from whatever the host's apt uses, and the
//! image's release is the host's, so binaries built here run inside it.

use std::path::Path;

/// A Debian archive to bootstrap from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Archive URI, e.g. `http://deb.example.org/debian`.
    pub uri: String,
    /// Release codename, e.g. `bookworm`.
    pub suite: String,
}

/// Reads `/etc/os-release` and the apt sources under `root` (normally `/`).
/// `SPRITES_DEBIAN_MIRROR` overrides the URI.
pub fn detect(root: &Path) -> crate::Result<Mirror> {
    let os = std::fs::read_to_string(root.join("etc/os-release")).unwrap_or_default();
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            crate::StorageError::Config(
                "cannot tell the host's Debian release: /etc/os-release has no VERSION_CODENAME"
                    .into(),
            )
        })?;
    if let Ok(uri) = std::env::var("SPRITES_DEBIAN_MIRROR") {
        if !uri.is_empty() {
            return Ok(Mirror { uri, suite });
        }
    }
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string(root.join("etc/apt/sources.list")) {
        texts.push((false, t));
    }
    if let Ok(dir) = std::fs::read_dir(root.join("etc/apt/sources.list.d")) {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy().into_owned();
            let deb822 = name.ends_with(".sources");
            if !(deb822 || name.ends_with(".list")) {
                continue;
            }
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push((deb822, t));
            }
        }
    }
    for (deb822, text) in &texts {
        let found = if *deb822 {
            from_deb822(text, &suite)
        } else {
            from_one_line(text, &suite)
        };
        if let Some(uri) = found {
            return Ok(Mirror { uri, suite });
        }
    }
    Err(crate::StorageError::Config(format!(
        "no apt source for Debian {suite} main found in /etc/apt; set SPRITES_DEBIAN_MIRROR"
    )))
}

/// One-line `deb URI SUITE COMPONENTS` format.
fn from_one_line(text: &str, suite: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with("deb ") {
            continue;
        }
        let mut words = line
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with('['));
        // Options in brackets may contain spaces; skip words until one looks like a URI.
        let uri = words.find(|w| w.contains("://"))?;
        let s = words.next()?;
        let comps: Vec<&str> = words.collect();
        if s == suite && comps.contains(&"main") {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// deb822 stanzas: `Types: deb`, `URIs:`, `Suites:`, `Components:`.
fn from_deb822(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        let enabled = field("Enabled").map(|v| v != "no").unwrap_or(true);
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        let comps = field("Components").unwrap_or_default();
        if !enabled || !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if suites.split_whitespace().any(|s| s == suite)
            && comps.split_whitespace().any(|c| c == "main")
        {
            if let Some(uris) = field("URIs") {
                if let Some(u) = uris.split_whitespace().next() {
                    return Some(u.trim_end_matches('/').to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line() {
        let t = "# c\ndeb-src http://x/debian bookworm main\ndeb [arch=amd64] http://m.example/debian/ bookworm main contrib\n";
        assert_eq!(
            from_one_line(t, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(from_one_line(t, "trixie"), None);
    }

    #[test]
    fn deb822() {
        let t = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://b.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            from_deb822(t, "bookworm").as_deref(),
            Some("http://a.example/debian")
        );
        let disabled =
            "Enabled: no\nTypes: deb\nURIs: http://a/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(from_deb822(disabled, "bookworm"), None);
    }

    #[test]
    fn detect_from_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("etc/os-release"),
            "VERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/apt/sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        let m = detect(dir.path()).unwrap();
        assert_eq!(
            m,
            Mirror {
                uri: "http://mirror.example/debian".into(),
                suite: "bookworm".into()
            }
        );
    }
}
