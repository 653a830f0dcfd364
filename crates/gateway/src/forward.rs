//! Forwarding a sprite's call to its provider with the credential attached: bodies streamed
//! both ways, redirects handed back unfollowed, the caller's identity-looking headers
//! removed, and the upstream address checked when connecting (private, loopback and
//! link-local ranges refused unless the operator allows them), so a DNS answer that changes
//! between check and use cannot reach the host's own services.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use sprites_api::connector::AuthIn;

use crate::providers::Placement;

/// Whether `ip` is an address a credential may be sent to by default.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_broadcast()
                || v.is_documentation()
                || v.is_unspecified()
                || v.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_public(IpAddr::V4(m));
            }
            let s = v.segments();
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves upstream names, refusing non-public answers unless allowed.
struct Resolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address the gateway may connect to").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A stream that is `Sync` because it is only ever polled through `&mut` (reqwest wants
/// `Sync` bodies; a server's request body is only `Send`). The mutex is never locked.
struct SyncStream<S>(std::sync::Mutex<std::pin::Pin<Box<S>>>);

impl<S: Stream> Stream for SyncStream<S> {
    type Item = S::Item;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll_next(cx)
    }
}

/// Headers never forwarded upstream: hop-by-hop ones, and anything that could carry the
/// caller's own credentials or a claimed identity.
fn dropped_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "authorization"
            | "cookie"
            | "x-api-key"
            | "api-key"
            | "x-auth-token"
            | "forwarded"
            | "x-real-ip"
    ) || n.starts_with("x-forwarded-")
        || n.starts_with("x-sprite")
        || n.starts_with("sprite-")
        || n.starts_with("fly-")
}

fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The upstream HTTP client of a gateway.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    allow_private: bool,
}

/// A call to forward.
pub struct Call<S> {
    /// Method.
    pub method: Method,
    /// Provider base URL (no trailing slash).
    pub base_url: String,
    /// Normalized, encoded path.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// The caller's headers.
    pub headers: HeaderMap,
    /// The caller's body.
    pub body: S,
    /// The credential and where it goes.
    pub credential: (Placement, SecretString),
}

/// Counted bytes of a call, for usage.
#[derive(Default, Debug)]
pub struct Counters {
    /// Request body bytes sent.
    pub sent: AtomicU64,
    /// Response body bytes received.
    pub received: AtomicU64,
}

/// Why a call did not reach the provider. Messages never hold the URL (a query-placed
/// credential would be in it) or the credential.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The provider's address is refused.
    #[error("the provider's address is not allowed: {0}")]
    Address(String),
    /// Connecting or sending failed.
    #[error("the provider could not be reached: {0}")]
    Upstream(String),
    /// The call is malformed.
    #[error("{0}")]
    Bad(String),
}

/// An HTTP client for URLs that outsiders choose (an MCP client's metadata document): it
/// connects only to public addresses (checked on the address connected to) unless
/// `allow_private`, follows no redirect, and gives up after `timeout`.
pub fn outside_client(allow_private: bool, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(Resolver { allow_private }))
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

/// Whether the host of `url` may be fetched: a name (resolved and checked at connect time),
/// or a literal public address.
pub fn literal_host_allowed(url: &url::Url, allow_private: bool) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => allow_private || is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => allow_private || is_public(ip.into()),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

impl Forwarder {
    /// A client; `allow_private` lets credentials go to private and loopback addresses.
    pub fn new(allow_private: bool) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolver { allow_private }))
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .expect("the gateway's HTTP client");
        Forwarder {
            client,
            allow_private,
        }
    }

    /// Sends `call` and returns the provider's answer, its body a stream.
    pub async fn send<S, E>(
        &self,
        call: Call<S>,
        counters: Arc<Counters>,
    ) -> Result<reqwest::Response, ForwardError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (placement, secret) = &call.credential;
        let token = secret.expose_secret();
        let mut path = call.path.clone();
        if placement.placement == AuthIn::Path {
            let seg = percent_encoding::utf8_percent_encode(token, crate::policy::SEGMENT);
            path = format!("/{seg}{path}");
        }
        let mut url = url::Url::parse(&format!("{}{}", call.base_url, path))
            .map_err(|e| ForwardError::Bad(format!("the provider URL is not valid: {e}")))?;
        if let Some(q) = call.query.as_deref().filter(|q| !q.is_empty()) {
            url.set_query(Some(q));
        }
        if placement.placement == AuthIn::Query {
            let value = placement.format.replace("{token}", token);
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != placement.name.as_str())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(pairs)
                .append_pair(&placement.name, &value);
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) if !self.allow_private && !is_public(ip.into()) => {
                return Err(ForwardError::Address(ip.to_string()))
            }
            Some(url::Host::Ipv6(ip)) if !self.allow_private && !is_public(ip.into()) => {
                return Err(ForwardError::Address(ip.to_string()))
            }
            None => return Err(ForwardError::Bad("the provider URL has no host".into())),
            _ => {}
        }
        let mut headers = HeaderMap::new();
        for (k, v) in call.headers.iter() {
            if !dropped_request_header(k) && k.as_str() != placement.name {
                headers.append(k.clone(), v.clone());
            }
        }
        if placement.placement == AuthIn::Header {
            let name = HeaderName::from_bytes(placement.name.as_bytes()).map_err(|_| {
                ForwardError::Bad("the credential's header name is not valid".into())
            })?;
            let mut value = HeaderValue::from_str(&placement.format.replace("{token}", token))
                .map_err(|_| {
                    ForwardError::Bad("the credential cannot be sent in a header".into())
                })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let sent = counters.clone();
        let body = call.body.map(move |c| {
            if let Ok(b) = &c {
                sent.sent.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            c
        });
        let has_body = !matches!(
            call.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
        ) || call.headers.contains_key(http::header::CONTENT_LENGTH)
            || call.headers.contains_key(http::header::TRANSFER_ENCODING);
        let mut req = self.client.request(call.method, url).headers(headers);
        if has_body {
            req = req.body(reqwest::Body::wrap_stream(SyncStream(
                std::sync::Mutex::new(Box::pin(body)),
            )));
        }
        req.send().await.map_err(|e| {
            let e = e.without_url();
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            if msg.contains("no address the gateway may connect to") {
                ForwardError::Address(msg)
            } else {
                ForwardError::Upstream(msg)
            }
        })
    }

    /// The provider's headers as the caller gets them.
    pub fn response_headers(from: &HeaderMap) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in from.iter() {
            if !dropped_response_header(k) {
                h.append(k.clone(), v.clone());
            }
        }
        h
    }

    /// A test request before a connection is saved: the status the provider answered.
    pub async fn probe(
        &self,
        base_url: &str,
        method: &str,
        path: &str,
        credential: (Placement, SecretString),
    ) -> Result<u16, ForwardError> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            ForwardError::Bad(format!("test_request.method {method:?} is not a method"))
        })?;
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path, None),
        };
        let norm = crate::policy::normalize(p).map_err(ForwardError::Bad)?;
        let call = Call {
            method,
            base_url: base_url.to_string(),
            path: norm.encoded,
            query: q,
            headers: HeaderMap::new(),
            body: futures::stream::empty::<Result<Bytes, std::io::Error>>(),
            credential,
        };
        let r = tokio::time::timeout(Duration::from_secs(20), self.send(call, Arc::default()))
            .await
            .map_err(|_| ForwardError::Upstream("no answer in 20 s".into()))??;
        Ok(r.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn identity_and_hop_headers_are_dropped() {
        for h in [
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-sprite-id",
            "fly-src",
            "host",
            "x-api-key",
        ] {
            assert!(dropped_request_header(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["content-type", "anthropic-version", "accept"] {
            assert!(!dropped_request_header(&HeaderName::from_static(h)), "{h}");
        }
    }
}
