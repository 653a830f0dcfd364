//! Tokens: `org-slug/org-id/token-id/secret`. Only a SHA-256 of the secret is stored; the
//! secret is 32 random bytes, so a fast hash is enough and lookups stay cheap.

use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{self, Org, Store, StoreError};

/// Parsed parts of a presented token.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenParts<'a> {
    /// Org slug.
    pub slug: &'a str,
    /// Org id.
    pub org_id: &'a str,
    /// Token id.
    pub token_id: &'a str,
    /// Secret.
    pub secret: &'a str,
}

/// Splits a token; `None` if it does not have four non-empty parts.
pub fn parse(token: &str) -> Option<TokenParts<'_>> {
    let mut it = token.split('/');
    let p = TokenParts {
        slug: it.next()?,
        org_id: it.next()?,
        token_id: it.next()?,
        secret: it.next()?,
    };
    if it.next().is_some()
        || [p.slug, p.org_id, p.token_id, p.secret]
            .iter()
            .any(|s| s.is_empty())
    {
        return None;
    }
    Some(p)
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn random_lower(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| {
            let c = rng.gen_range(0..36u8);
            char::from(if c < 26 { b'a' + c } else { b'0' + c - 26 })
        })
        .collect()
}

/// Checks a bearer token and returns its org.
pub async fn verify(store: &Store, token: &str) -> Result<Option<Org>, StoreError> {
    let Some(p) = parse(token) else {
        return Ok(None);
    };
    let (slug, org_id, token_id) = (
        p.slug.to_string(),
        p.org_id.to_string(),
        p.token_id.to_string(),
    );
    let presented = hash(p.secret);
    let rec = store.with(move |c| store::token(c, &token_id)).await?;
    Ok(rec.and_then(|r| {
        let ok =
            bool::from(r.secret_hash.ct_eq(&presented)) && r.org.id == org_id && r.org.slug == slug;
        ok.then_some(r.org)
    }))
}

/// Creates org `slug` if missing, then a new token for it; returns the plain token.
pub fn create_token(
    c: &rusqlite::Connection,
    slug: &str,
    description: &str,
) -> Result<String, StoreError> {
    let org = match store::org_by_slug(c, slug)? {
        Some(o) => o,
        None => {
            let o = Org {
                id: random_lower(5),
                slug: slug.to_string(),
            };
            store::insert_org(c, &o)?;
            o
        }
    };
    let token_id = format!("tok{}", random_lower(10));
    let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 40);
    store::insert_token(c, &token_id, &org.id, &hash(&secret), description)?;
    Ok(format!("{}/{}/{}/{}", org.slug, org.id, token_id, secret))
}

/// Mints a token for `org`; the plain token (shown once).
pub fn mint_token(
    c: &rusqlite::Connection,
    org: &Org,
    description: &str,
    admin: bool,
) -> Result<(String, String), StoreError> {
    let token_id = format!("tok{}", random_lower(10));
    let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 40);
    store::insert_minted_token(c, &token_id, &org.id, &hash(&secret), description, admin)?;
    Ok((
        token_id.clone(),
        format!("{}/{}/{}/{}", org.slug, org.id, token_id, secret),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let p = parse("acme/1ef8/tok1/s3cr3t").unwrap();
        assert_eq!(
            (p.slug, p.org_id, p.token_id, p.secret),
            ("acme", "1ef8", "tok1", "s3cr3t")
        );
        for bad in ["", "a/b/c", "a/b/c/d/e", "a//c/d", "a/b/c/"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn create_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let t = s.blocking(|c| create_token(c, "personal", "test")).unwrap();
        let org = verify(&s, &t).await.unwrap().expect("valid token");
        assert_eq!(org.slug, "personal");
        let mut wrong = t.clone();
        wrong.push('x');
        assert!(verify(&s, &wrong).await.unwrap().is_none());
        let p = parse(&t).unwrap();
        let other_org = format!("other/{}/{}/{}", p.org_id, p.token_id, p.secret);
        assert!(
            verify(&s, &other_org).await.unwrap().is_none(),
            "slug must match"
        );
        let t2 = s
            .blocking(|c| create_token(c, "personal", "second"))
            .unwrap();
        assert_eq!(parse(&t2).unwrap().org_id, p.org_id, "same org reused");
    }
}
