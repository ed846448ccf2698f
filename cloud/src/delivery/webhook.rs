//! Webhooks per the [Standard Webhooks](https://www.standardwebhooks.com/) specification.
//!
//! Every request is a JSON `POST` with three headers:
//! - `webhook-id`: the delivery's idempotency key (the same on every retry: receivers
//!   deduplicate on it);
//! - `webhook-timestamp`: Unix seconds (from the cloud's clock) when the attempt was made;
//! - `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` signatures of
//!   `{webhook-id}.{webhook-timestamp}.{body}`, one per configured secret, so a receiver
//!   can rotate keys. Secrets are `whsec_` + base64 of the key bytes.
//!
//! A receiver verifies with [`verify`]: recompute the HMAC with its secret, compare in
//! constant time against each `v1,` signature, and refuse timestamps more than five
//! minutes away from its clock.
//!
//! Outbound requests have connect and total timeouts, and an SSRF guard: URLs whose host
//! is, or resolves to, a loopback, private, link-local, CGNAT, multicast or unspecified
//! address are refused (the resolver filters them too, so DNS rebinding cannot slip one
//! in) unless `delivery.allow_private_addresses` is set.

use super::dispatcher::Attempt;
use crate::config::{DeliveryConfig, WebhookConfig};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The signature scheme's version prefix.
pub const SCHEME: &str = "v1";
/// How far a receiver tolerates the timestamp to be from its clock.
pub const TOLERANCE_S: i64 = 300;

/// A webhook secret or signature that does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret is not `whsec_` + base64.
    #[error("a webhook secret is whsec_ followed by base64 (at least 16 bytes)")]
    BadSecret,
    /// A header is missing or malformed.
    #[error("missing or malformed header {0}")]
    BadHeader(&'static str),
    /// The timestamp is too far from now.
    #[error("timestamp {0} is more than {TOLERANCE_S} s away from now")]
    Stale(i64),
    /// No signature matches.
    #[error("no v1 signature matches")]
    NoMatch,
}

/// A signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_` + base64 (the prefix is optional on input, as the spec allows).
    pub fn parse(s: &str) -> Result<Self, WebhookError> {
        let b = s.strip_prefix("whsec_").unwrap_or(s);
        let key = B64.decode(b).map_err(|_| WebhookError::BadSecret)?;
        if key.len() < 16 {
            return Err(WebhookError::BadSecret);
        }
        Ok(Self(key))
    }
    /// Wraps raw key bytes.
    pub fn from_bytes(key: &[u8]) -> Self {
        Self(key.to_vec())
    }
    /// The `whsec_…` form.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", B64.encode(&self.0))
    }
    /// One signature (base64) of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        B64.encode(m.finalize().into_bytes())
    }
}

/// The `webhook-signature` header value: `v1,<sig>` for each secret, space-separated.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| format!("{SCHEME},{}", s.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a receiver does: checks the timestamp against `now` and that one of the `v1`
/// Most of an endpoint's answer that a delivery reads (and throws away) to reuse the
/// connection; a longer one is cut off, so an endpoint cannot stream without end.
const DRAIN_LIMIT: usize = 64 * 1024;

/// signatures in `signature` is `secret`'s over `id.timestamp.body` (constant time).
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    if id.is_empty() {
        return Err(WebhookError::BadHeader("webhook-id"));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| WebhookError::BadHeader("webhook-timestamp"))?;
    // `abs_diff`: the timestamp is the sender's, and `i64::MIN - now` overflows.
    if now.timestamp().abs_diff(ts) > TOLERANCE_S.unsigned_abs() {
        return Err(WebhookError::Stale(ts));
    }
    for part in signature.split(' ') {
        let Some((scheme, sig)) = part.split_once(',') else {
            continue;
        };
        if scheme != SCHEME {
            continue;
        }
        let Ok(sig) = B64.decode(sig) else { continue };
        let mut m = Hmac::<Sha256>::new_from_slice(&secret.0).expect("any key length");
        m.update(id.as_bytes());
        m.update(b".");
        m.update(ts.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(WebhookError::NoMatch)
}

/// True for addresses a webhook may reach without `allow_private_addresses`: none of the
/// special-purpose ranges (RFC 6890 and successors), and IPv6 addresses that embed an IPv4
/// one (mapped, compatible, NAT64, 6to4) only if that one is public.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                std::net::Ipv4Addr::new(a, b, c, d)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
            if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            // 6to4: 2002:aabb:ccdd::/48 carries a.b.c.d.
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(s[1], s[2])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2001 && s[1] == 0))
        }
    }
}

/// A resolver that drops non-public addresses (the SSRF guard against DNS rebinding).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "ssrf_refused: {} resolves only to private or loopback addresses",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
struct Endpoint {
    url: reqwest::Url,
    secrets: Vec<WebhookSecret>,
}

/// Sends webhooks to the configured endpoints.
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    endpoints: Arc<HashMap<String, Endpoint>>,
    allow_private: bool,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookSender {
    /// A sender for `webhooks` with `cfg`'s timeouts and SSRF setting.
    pub fn new(cfg: &DeliveryConfig, webhooks: &[WebhookConfig]) -> Result<Self, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("rollcall-cloud/", env!("CARGO_PKG_VERSION")));
        if !cfg.allow_private_addresses {
            // Through a proxy (`HTTP(S)_PROXY`), the proxy would resolve the target itself,
            // past the guard.
            b = b.dns_resolver(Arc::new(GuardedResolver)).no_proxy();
        }
        let endpoints = webhooks
            .iter()
            .filter_map(|w| {
                let url = reqwest::Url::parse(&w.url).ok()?;
                let secrets = w
                    .secrets
                    .iter()
                    .filter_map(|s| WebhookSecret::parse(s.expose()).ok())
                    .collect();
                Some((w.name.clone(), Endpoint { url, secrets }))
            })
            .collect();
        Ok(Self {
            client: b.build()?,
            endpoints: Arc::new(endpoints),
            allow_private: cfg.allow_private_addresses,
        })
    }

    /// Posts `body` to the endpoint named `target`, signed, with `webhook-id = id`.
    pub async fn send(&self, target: &str, id: &str, body: String, now: DateTime<Utc>) -> Attempt {
        let Some(ep) = self.endpoints.get(target) else {
            return Attempt::Permanent {
                error: format!("no webhook named {target:?} is configured"),
            };
        };
        if !self.allow_private {
            if let Err(error) = check_host(&ep.url).await {
                return Attempt::Permanent { error };
            }
        }
        let ts = now.timestamp();
        let sig = signature_header(&ep.secrets, id, ts, body.as_bytes());
        let res = self
            .client
            .post(ep.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => {
                let code = r.status().as_u16();
                // Drain the body so the connection goes back to the pool, but only so much
                // of it: past the limit the response is dropped and its connection closed.
                let mut r = r;
                let mut read = 0usize;
                while read <= DRAIN_LIMIT {
                    match r.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        Ok(None) | Err(_) => break,
                    }
                }
                match code {
                    200..=299 => Attempt::Delivered { code: Some(code) },
                    410 => Attempt::Gone { code },
                    _ => Attempt::Retry {
                        code: Some(code),
                        error: format!("HTTP {code}"),
                    },
                }
            }
            Err(e) => {
                // Webhook URLs often carry a token: keep them out of stored errors.
                let e = e.without_url();
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                Attempt::Retry {
                    code: None,
                    error: format!("{what}: {}", error_chain(&e)),
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Refuses a URL whose host is a non-public address, or resolves only to such.
async fn check_host(url: &reqwest::Url) -> Result<(), String> {
    let refuse = |what: &str| Err(format!("ssrf_refused: {what} is not a public address"));
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if is_public(ip) { Ok(()) } else { refuse(bare) };
    }
    let port = url.port_or_known_default().unwrap_or(443);
    match tokio::net::lookup_host((bare, port)).await {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| !is_public(a.ip())) {
                refuse(bare)
            } else {
                Ok(())
            }
        }
        // A DNS failure is worth retrying: the send reports it.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks reference implementations' test suite.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(std::slice::from_ref(&secret), id, ts, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let now = DateTime::from_timestamp(ts + 10, 0).unwrap();
        let other = WebhookSecret::from_bytes(&[7u8; 32]);
        let header = signature_header(&[other.clone(), secret.clone()], id, ts, body);
        verify(&secret, id, &ts.to_string(), &header, body, now).unwrap();
        verify(&other, id, &ts.to_string(), &header, body, now).unwrap();
        assert_eq!(
            verify(&secret, id, &ts.to_string(), &header, b"{}", now),
            Err(WebhookError::NoMatch)
        );
        let later = DateTime::from_timestamp(ts + 301, 0).unwrap();
        assert!(matches!(
            verify(&secret, id, &ts.to_string(), &header, body, later),
            Err(WebhookError::Stale(_))
        ));
        assert!(WebhookSecret::parse("whsec_short").is_err());
    }

    #[test]
    fn private_and_loopback_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "fec0::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "1.1.1.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_failed_attempts_error_does_not_repeat_the_url_and_its_token() {
        // Nothing listens on port 9; the URL carries a token, as many webhook URLs do.
        let hook = WebhookConfig {
            name: "x".into(),
            url: "http://127.0.0.1:9/hooks/tok-5ecret?key=k-5ecret".into(),
            secrets: vec![crate::config::Secret::new(
                WebhookSecret::from_bytes(&[1; 32]).to_whsec(),
            )],
        };
        let cfg = DeliveryConfig {
            allow_private_addresses: true,
            ..Default::default()
        };
        let s = WebhookSender::new(&cfg, std::slice::from_ref(&hook)).unwrap();
        match s.send("x", "id1", "{}".into(), Utc::now()).await {
            Attempt::Retry { error, .. } => {
                assert!(error.starts_with("connect"), "{error}");
                assert!(!error.contains("5ecret"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused_unless_allowed() {
        let hook = WebhookConfig {
            name: "x".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secrets: vec![crate::config::Secret::new(
                WebhookSecret::from_bytes(&[1; 32]).to_whsec(),
            )],
        };
        let s =
            WebhookSender::new(&DeliveryConfig::default(), std::slice::from_ref(&hook)).unwrap();
        match s.send("x", "id1", "{}".into(), Utc::now()).await {
            Attempt::Permanent { error } => assert!(error.contains("ssrf_refused"), "{error}"),
            other => panic!("{other:?}"),
        }
        let mut hook = hook;
        hook.url = "http://localhost:9/hook".into();
        let s = WebhookSender::new(&DeliveryConfig::default(), &[hook]).unwrap();
        assert!(matches!(
            s.send("x", "id1", "{}".into(), Utc::now()).await,
            Attempt::Permanent { .. }
        ));
    }

    #[test]
    fn a_timestamp_at_the_ends_of_the_range_is_stale_not_a_panic() {
        let secret = WebhookSecret::from_bytes(&[3; 32]);
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for ts in [i64::MIN, i64::MAX] {
            assert_eq!(
                verify(&secret, "id", &ts.to_string(), "v1,AAAA", b"{}", now),
                Err(WebhookError::Stale(ts))
            );
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_answers_without_end_is_read_only_up_to_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = sock.read(&mut buf).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
            let mut sent = 0usize;
            // Until the client hangs up (or 1 GiB, which the client must never read).
            while sent < 1 << 30 && sock.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 8192;
            }
            sent
        });
        let hook = WebhookConfig {
            name: "x".into(),
            url: format!("http://{addr}/hook"),
            secrets: vec![crate::config::Secret::new(
                WebhookSecret::from_bytes(&[1; 32]).to_whsec(),
            )],
        };
        let cfg = DeliveryConfig {
            allow_private_addresses: true,
            request_timeout_ms: 600_000,
            ..DeliveryConfig::default()
        };
        let s = WebhookSender::new(&cfg, &[hook]).unwrap();
        let attempt = tokio::time::timeout(
            Duration::from_secs(60),
            s.send("x", "id1", "{}".into(), Utc::now()),
        )
        .await
        .expect("the send stops reading instead of waiting for the end");
        assert!(
            matches!(attempt, Attempt::Delivered { code: Some(200) }),
            "{attempt:?}"
        );
        drop(s);
        let sent = server.await.unwrap();
        assert!(sent < 1 << 30, "the server wrote {sent} bytes");
    }
}
