//! Access policies: which sprites a connection grants, and which provider paths they reach.
//! Paths are judged after normalization, and the normalized path is the one forwarded, so
//! what was checked is what the provider sees.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sprites_api::connector::AccessPolicy;

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The policy grants no sprite, or not this one.
    Sprite,
    /// The path is blocked or not on the allow list.
    Endpoint,
}

/// Whether `policy` grants the sprite `name` carrying `labels`. Deny by default: without
/// `allow_all`, a prefix or labels, nobody; prefix and labels combine with AND.
pub fn grants(policy: &AccessPolicy, name: &str, labels: &[String]) -> bool {
    if policy.allow_all == Some(true) {
        return true;
    }
    let prefix = policy.name_prefix.as_deref().filter(|p| !p.is_empty());
    let want = policy.sprite_labels.as_deref().filter(|l| !l.is_empty());
    if prefix.is_none() && want.is_none() {
        return false;
    }
    prefix.is_none_or(|p| name.starts_with(p))
        && want.is_none_or(|w| w.iter().all(|l| labels.contains(l)))
}

fn matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// Whether the normalized `path` passes the policy's endpoint lists (blocked first).
pub fn endpoint_allowed(policy: &AccessPolicy, path: &str) -> bool {
    if let Some(b) = &policy.blocked_endpoints {
        if b.iter().any(|p| matches(p, path)) {
            return false;
        }
    }
    match &policy.allowed_endpoints {
        Some(a) if !a.is_empty() => a.iter().any(|p| matches(p, path)),
        _ => true,
    }
}

/// Both checks, in the order the gateway makes them.
pub fn check(
    policy: &AccessPolicy,
    name: &str,
    labels: &[String],
    path: &str,
) -> Result<(), Denied> {
    if !grants(policy, name, labels) {
        return Err(Denied::Sprite);
    }
    if !endpoint_allowed(policy, path) {
        return Err(Denied::Endpoint);
    }
    Ok(())
}

/// Checks a policy given to the API: patterns are paths, at most a trailing `*`.
pub fn validate(policy: &AccessPolicy) -> Result<(), String> {
    let lists = [&policy.allowed_endpoints, &policy.blocked_endpoints];
    for p in lists.into_iter().flatten().flatten() {
        let body = p.strip_suffix('*').unwrap_or(p);
        if !p.starts_with('/') || body.contains('*') || p.len() > 1024 {
            return Err(format!(
                "endpoint pattern {p:?} must be a path starting with / with at most a trailing *"
            ));
        }
    }
    if let Some(labels) = &policy.sprite_labels {
        if labels.len() > 64 || labels.iter().any(|l| l.is_empty() || l.len() > 256) {
            return Err("sprite_labels: at most 64 non-empty labels".into());
        }
    }
    Ok(())
}

/// Bytes a path segment keeps encoded when forwarded.
pub(crate) const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A path as the policy judges it (`decoded`) and as it is forwarded (`encoded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// Percent-decoded, `.`/`..` resolved, no empty segments: what patterns match.
    pub decoded: String,
    /// The same segments, each percent-encoded: what the provider receives.
    pub encoded: String,
}

/// Normalizes the path of a call. Percent-decoding happens once, before segments are split,
/// so `%2e%2e` and `%2f` are a `..` and a `/` here as they would be to a provider that
/// decodes; a backslash or a control byte (after decoding) refuses the path.
pub fn normalize(raw: &str) -> Result<NormalPath, String> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "the path is not UTF-8 after percent-decoding".to_string())?;
    if decoded.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err("the path holds a control character or a backslash".into());
    }
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segs.is_empty();
    let mut d = String::from("/");
    d.push_str(&segs.join("/"));
    let mut e = String::from("/");
    e.push_str(
        &segs
            .iter()
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/"),
    );
    if trailing {
        d.push('/');
        e.push('/');
    }
    Ok(NormalPath {
        decoded: d,
        encoded: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(j: serde_json::Value) -> AccessPolicy {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn no_policy_denies_everyone_and_prefix_and_labels_combine_with_and() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!grants(&AccessPolicy::default(), "a", &[]));
        assert!(!grants(
            &pol(serde_json::json!({"name_prefix": ""})),
            "a",
            &[]
        ));
        assert!(grants(
            &pol(serde_json::json!({"allow_all": true, "name_prefix": "zz"})),
            "a",
            &[]
        ));
        let p = pol(serde_json::json!({"name_prefix": "ci-", "sprite_labels": ["x", "y"]}));
        assert!(grants(&p, "ci-1", &l(&["y", "x", "z"])));
        assert!(!grants(&p, "ci-1", &l(&["x"])));
        assert!(!grants(&p, "dev", &l(&["x", "y"])));
        assert!(grants(
            &pol(serde_json::json!({"sprite_labels": ["x"]})),
            "any",
            &l(&["x"])
        ));
    }

    #[test]
    fn endpoints_block_first_then_allow_exact_or_trailing_star() {
        let p = pol(serde_json::json!({
            "allow_all": true,
            "allowed_endpoints": ["/chat.*", "/users.info"],
            "blocked_endpoints": ["/chat.delete"]
        }));
        assert_eq!(check(&p, "s", &[], "/chat.postMessage"), Ok(()));
        assert_eq!(check(&p, "s", &[], "/users.info"), Ok(()));
        assert_eq!(check(&p, "s", &[], "/users.info/x"), Err(Denied::Endpoint));
        assert_eq!(check(&p, "s", &[], "/chat.delete"), Err(Denied::Endpoint));
        assert_eq!(check(&p, "s", &[], "/admin.users"), Err(Denied::Endpoint));
        assert_eq!(
            check(&AccessPolicy::default(), "s", &[], "/x"),
            Err(Denied::Sprite)
        );
        assert!(validate(&pol(serde_json::json!({"allowed_endpoints": ["/a*b"]}))).is_err());
        assert!(validate(&pol(serde_json::json!({"blocked_endpoints": ["x"]}))).is_err());
        assert!(validate(&p).is_ok());
    }

    #[test]
    fn traversal_and_encoding_cannot_slip_past_a_block() {
        let p = pol(
            serde_json::json!({"allow_all": true, "blocked_endpoints": ["/admin.*"], "allowed_endpoints": ["/chat.*", "/admin.*"]}),
        );
        for raw in [
            "/chat.postMessage/../admin.users",
            "/chat.postMessage/%2e%2e/admin.users",
            "/chat.x/%2E%2E%2Fadmin.users",
            "//admin.users",
            "/./admin.users",
            "/%61dmin.users",
            "/chat.x/../../../admin.users",
        ] {
            let n = normalize(raw).unwrap();
            assert_eq!(n.decoded, "/admin.users", "{raw}");
            assert_eq!(
                check(&p, "s", &[], &n.decoded),
                Err(Denied::Endpoint),
                "{raw}"
            );
        }
        assert!(normalize("/a\\..\\admin").is_err());
        assert!(normalize("/a%00b").is_err());
        assert!(normalize("/%ff").is_err());
        let n = normalize("/repos/a b/x%3Fy/").unwrap();
        assert_eq!(n.decoded, "/repos/a b/x?y/");
        assert_eq!(n.encoded, "/repos/a%20b/x%3Fy/");
        assert_eq!(normalize("").unwrap().encoded, "/");
    }

    proptest::proptest! {
        #[test]
        fn normalizing_is_idempotent_and_never_leaves_dot_segments(raw in "[a-z./%2eE]{0,24}") {
            if let Ok(n) = normalize(&raw) {
                proptest::prop_assert!(!n.decoded.split('/').any(|s| s == ".." || s == "."));
                let again = normalize(&n.encoded).unwrap();
                proptest::prop_assert_eq!(again, n);
            }
        }
    }
}
