//! The egress policy (spec §7.1): `domain` + `action` rules and `include` presets.
//! Matching: an exact host beats `*.suffix` (longest suffix first), which beats `*`.
//! No rules at all means open.

use serde::{Deserialize, Serialize};

/// One rule as clients send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `api.github.com`, `*.example.com` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A preset name, e.g. `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
}

/// The network policy document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Domains of the `defaults` preset: code hosting, package registries, major AI APIs.
const DEFAULTS: &[&str] = &[
    "github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "registry.npmjs.org",
    "*.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "*.pypi.org",
    "crates.io",
    "*.crates.io",
    "deb.debian.org",
    "*.debian.org",
    "registry-1.docker.io",
    "auth.docker.io",
    "*.docker.io",
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
];

/// A checked policy, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// (pattern, allow), patterns lowercase without a trailing dot.
    entries: Vec<(String, bool)>,
}

fn normalize(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let body = p.strip_prefix("*.").unwrap_or(p);
    !body.is_empty()
        && body.len() <= 253
        && !body.contains('*')
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl Policy {
    /// Allows exactly `domains` (patterns as in rules) and denies everything else.
    pub fn allow_only(domains: &[&str]) -> Self {
        let rule = |domain: &str, action: &str| Rule {
            domain: Some(domain.to_string()),
            action: Some(action.to_string()),
            include: None,
        };
        let mut rules: Vec<Rule> = domains.iter().map(|d| rule(d, "allow")).collect();
        rules.push(rule("*", "deny"));
        Self { rules }
    }

    /// Validates and compiles; the error is a readable reason.
    pub fn compile(&self) -> Result<Compiled, String> {
        let mut entries = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            match (&r.domain, &r.action, &r.include) {
                (Some(d), Some(a), None) => {
                    let d = normalize(d);
                    if !valid_pattern(&d) {
                        return Err(format!("rule {i}: invalid domain {d:?}"));
                    }
                    let allow = match a.as_str() {
                        "allow" => true,
                        "deny" => false,
                        other => {
                            return Err(format!(
                                "rule {i}: action must be allow or deny, not {other:?}"
                            ))
                        }
                    };
                    entries.push((d, allow));
                }
                (None, None, Some(inc)) => match inc.as_str() {
                    "defaults" => entries.extend(DEFAULTS.iter().map(|d| (d.to_string(), true))),
                    other => {
                        return Err(format!(
                            "rule {i}: unknown preset {other:?} (known: defaults)"
                        ))
                    }
                },
                _ => {
                    return Err(format!(
                        "rule {i}: give either domain and action, or include"
                    ))
                }
            }
        }
        Ok(Compiled { entries })
    }
}

impl Compiled {
    /// Whether no rule restricts anything.
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `name` may be resolved (and its addresses reached).
    pub fn allows(&self, name: &str) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let name = normalize(name);
        // Exact match first.
        if let Some((_, a)) = self.entries.iter().find(|(p, _)| *p == name) {
            return *a;
        }
        // Then the longest matching suffix wildcard.
        let best = self
            .entries
            .iter()
            .filter_map(|(p, a)| {
                let suffix = p.strip_prefix("*.")?;
                (name.ends_with(&format!(".{suffix}"))).then_some((suffix.len(), *a))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, a)) = best {
            return a;
        }
        if let Some((_, a)) = self.entries.iter().find(|(p, _)| p == "*") {
            return *a;
        }
        // Rules exist but none matched: only what is allowed passes.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Compiled {
        serde_json::from_str::<Policy>(json)
            .unwrap()
            .compile()
            .unwrap()
    }

    #[test]
    fn matching_order() {
        let c = p(
            r#"{"rules":[{"domain":"api.github.com","action":"allow"},{"domain":"*.registry.example.com","action":"allow"},{"domain":"bad.registry.example.com","action":"deny"},{"domain":"*","action":"deny"}]}"#,
        );
        assert!(c.allows("api.github.com"));
        assert!(c.allows("API.GitHub.com."));
        assert!(!c.allows("github.com"));
        assert!(c.allows("x.registry.example.com"));
        assert!(!c.allows("bad.registry.example.com"));
        assert!(
            !c.allows("registry.example.com"),
            "*.x does not match x itself"
        );
        assert!(!c.allows("evil.com"));
        assert!(p(r#"{"rules":[]}"#).allows("anything.at.all"));
        let d = p(r#"{"rules":[{"include":"defaults"},{"domain":"*","action":"deny"}]}"#);
        assert!(
            d.allows("pypi.org")
                && d.allows("raw.githubusercontent.com")
                && !d.allows("example.com")
        );
        let only = p(r#"{"rules":[{"domain":"ok.test","action":"allow"}]}"#);
        assert!(!only.allows("other.test"), "rules without * still restrict");
    }

    #[test]
    fn invalid() {
        for bad in [
            r#"{"rules":[{"domain":"a*b.com","action":"allow"}]}"#,
            r#"{"rules":[{"domain":"a.com","action":"maybe"}]}"#,
            r#"{"rules":[{"include":"nope"}]}"#,
            r#"{"rules":[{"domain":"a.com"}]}"#,
            r#"{"rules":[{"domain":"a..com","action":"allow"}]}"#,
        ] {
            assert!(
                serde_json::from_str::<Policy>(bad)
                    .unwrap()
                    .compile()
                    .is_err(),
                "{bad}"
            );
        }
    }
}
