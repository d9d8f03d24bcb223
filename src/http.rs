//! The HTTP layer every upstream goes through: the Service Bus management API, the Azure AD
//! token exchange and Prometheus. One place builds the clients, sends a request with its
//! whole-exchange timeout, reads `Retry-After`, caps the body, maps transport failures to
//! [`SignalError`]s, marks credential headers sensitive and records the request metric (whose
//! `outcome` label is [`SignalError::outcome`]).
//!
//! Every request an upstream client makes passes through [`client_builder`] (how a client
//! connects) and [`exchange`] (one request and its answer), so checks on where a request may
//! go (the destination against the credential it carries, the address actually connected to)
//! and the body cap belong here, in one place, for all three.

use std::error::Error as _;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::binding::HostRules;
use crate::metrics::Metrics;
use crate::signal::SignalError;

/// A `Retry-After` longer than this is read as this: an upstream is never parked for hours by
/// one odd header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Bytes of upstream answers the process holds at once, all upstreams together. Each answer
/// is capped on its own, but a tenant can point a thousand groups at servers that all answer
/// the cap at once; past this budget a read fails (as a failed read, not a stall) until
/// answers in flight are done with.
pub const ANSWER_BUDGET_BYTES: usize = 32 << 20;

static ANSWER_BUDGET: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES)));

/// Idle connections kept per upstream host (`http.DefaultMaxIdleConnsPerHost` in Go).
const IDLE_CONNECTIONS_PER_HOST: usize = 2;

/// The bounds of one exchange.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole exchange, body included.
    pub timeout: Duration,
    /// Bodies larger than this are refused as [`SignalError::TooLarge`].
    pub max_body_bytes: usize,
}

/// A client builder with what every upstream client shares: the connect timeout, the user
/// agent, no redirects unless the caller sets its own policy, and a resolver that connects
/// only to addresses `hosts` allows (IP-literal hosts never reach a resolver: the engine checks
/// them with [`check_address`] before anything is read).
pub fn client_builder(connect_timeout: Duration, hosts: &HostRules) -> reqwest::ClientBuilder {
    operator_client_builder(connect_timeout).dns_resolver(GuardedResolver {
        hosts: Arc::new(hosts.clone()),
    })
}

/// Like [`client_builder`] but without the address guard: only for a URL the operator typed
/// on the command line (`explain --from`), which no tenant chose.
pub fn operator_client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // hyper keeps an idle connection's read buffer at the size of the largest answer it
        // read (a Service Bus list page is tens of KiB), and reqwest would keep every
        // connection a refresh's concurrent requests opened. Two per host, as Go's net/http
        // keeps: a refresh's other concurrent requests connect again.
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        // A redirect could carry a request (and its credential) to a host the allowlist
        // never saw; an upstream that needs one says so with its own policy.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("blend-scaler/", env!("CARGO_PKG_VERSION")))
}

/// What kind of address an upstream host resolved to, for the connect-time check (docs/security.md,
/// "Where requests may go").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// 127.0.0.0/8, ::1: allowed with `--allow-loopback-upstreams`.
    Loopback,
    /// Any other address that is not globally reachable: RFC 1918, CGNAT 100.64.0.0/10,
    /// link-local 169.254.0.0/16 (cloud metadata) and fe80::/10, unique-local fc00::/7, this
    /// network, benchmarking, documentation, multicast, reserved: allowed for the hosts of
    /// `--allow-private-upstream`.
    Private,
    /// The Kubernetes API service: allowed only for a host named without a wildcard in
    /// `--allow-private-upstream`.
    KubernetesApi,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private or link-local",
            AddressClass::KubernetesApi => "Kubernetes API",
        })
    }
}

pub fn classify(ip: IpAddr, kubernetes_api: &[IpAddr]) -> AddressClass {
    let ip = match ip {
        // An IPv4 address written as IPv6 is that IPv4 address.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if kubernetes_api.contains(&ip) {
        return AddressClass::KubernetesApi;
    }
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => AddressClass::Loopback,
        IpAddr::V4(v4) if !is_public_v4(v4) => AddressClass::Private,
        IpAddr::V6(v6) if v6.is_loopback() => AddressClass::Loopback,
        IpAddr::V6(v6) if !is_public_v6(v6) => AddressClass::Private,
        _ => AddressClass::Public,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
    if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || first == 0
        || (first & 0xffc0) == 0xfec0) // site-local, deprecated
}

/// Why a connection to `ip` for `host` is refused, if it is.
pub fn check_address(hosts: &HostRules, host: &str, ip: IpAddr) -> Result<(), AddressClass> {
    let class = classify(ip, &hosts.kubernetes_api);
    let allowed = match class {
        AddressClass::Public => true,
        AddressClass::Loopback => hosts.allow_loopback,
        AddressClass::Private => hosts.private_upstreams.allows_host(host),
        AddressClass::KubernetesApi => hosts.private_upstreams.names_exactly(host),
    };
    if allowed { Ok(()) } else { Err(class) }
}

/// A host every address of which was refused. The message names the host, not its
/// addresses: what an internal name resolves to is none of a tenant's business.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{host}` resolves only to addresses the scaler does not connect to (loopback, private, \
     link-local or the Kubernetes API); an operator allows a host with --allow-private-upstream"
)]
pub struct AddressRefused {
    pub host: String,
}

/// The system resolver, keeping only the addresses [`check_address`] allows, so the address
/// actually connected to is the one checked (no second lookup an attacker's DNS could answer
/// differently).
struct GuardedResolver {
    hosts: Arc<HostRules>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let hosts = self.hosts.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut allowed = Vec::with_capacity(found.len());
            for addr in found {
                match check_address(&hosts, &host, addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(class) => tracing::warn!(
                        host = %host,
                        address = %addr.ip(),
                        class = %class,
                        "refused to connect to an upstream address"
                    ),
                }
            }
            if allowed.is_empty() {
                return Err(Box::new(AddressRefused { host }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An upstream's answer: status, `Retry-After`, headers and the capped body. The body's
/// bytes count against [`ANSWER_BUDGET_BYTES`] until the answer is dropped.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub budget: Option<OwnedSemaphorePermit>,
}

/// Sends `request` and reads the answer within `limits`. `whom` names the upstream in error
/// text (a host or a fixed name, never a URL with its query).
pub async fn exchange(
    request: reqwest::RequestBuilder,
    whom: &str,
    limits: Limits,
) -> Result<Answer, SignalError> {
    let exchange = async {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, whom, limits.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = retry_after(&headers);
        let (body, budget) = read_body(response, whom, limits).await?;
        Ok(Answer {
            status,
            retry_after,
            headers,
            body,
            budget,
        })
    };
    tokio::time::timeout(limits.timeout, exchange)
        .await
        .map_err(|_| SignalError::Timeout(limits.timeout))?
}

/// Counts one request in `blend_scaler_upstream_requests_total` and its duration.
pub fn record<T>(
    metrics: &Metrics,
    upstream: &'static str,
    started: Instant,
    result: &Result<T, SignalError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics.upstream_request(upstream, outcome, started.elapsed());
}

/// The body, refusing one larger than `limits.max_body_bytes`, and its share of
/// [`ANSWER_BUDGET_BYTES`]. A connection cut mid-body is [`SignalError::Malformed`]: what came
/// is not a document.
pub async fn read_body(
    mut response: reqwest::Response,
    whom: &str,
    limits: Limits,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), SignalError> {
    // A declared length past the cap is refused before a byte is read: reading (and dropping)
    // 15 MiB costs the async workers as much as keeping it.
    if response
        .content_length()
        .is_some_and(|n| n > limits.max_body_bytes as u64)
    {
        return Err(SignalError::TooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let mut body = Vec::new();
    let mut budget: Option<OwnedSemaphorePermit> = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limits.max_body_bytes {
                    return Err(SignalError::TooLarge {
                        limit: limits.max_body_bytes,
                    });
                }
                let share = u32::try_from(chunk.len())
                    .ok()
                    .and_then(|n| ANSWER_BUDGET.clone().try_acquire_many_owned(n).ok())
                    .ok_or_else(|| {
                        SignalError::OverLimit(format!(
                            "the scaler holds {} MiB of upstream answers at once, its limit; \
                             the answer from {whom} was dropped",
                            ANSWER_BUDGET_BYTES >> 20
                        ))
                    })?;
                match &mut budget {
                    Some(held) => held.merge(share),
                    None => budget = Some(share),
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((body, budget)),
            Err(e) if !e.is_timeout() => {
                return Err(SignalError::Malformed(format!(
                    "the response from {whom} was cut off after {} bytes",
                    body.len()
                )));
            }
            Err(e) => return Err(transport_error(&e, whom, limits.timeout)),
        }
    }
}

/// `Retry-After` (whole or fractional seconds, or an HTTP date), or Azure's
/// `retry-after-ms`/`x-ms-retry-after-ms`, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

pub(crate) fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let millis = ["retry-after-ms", "x-ms-retry-after-ms"]
        .into_iter()
        .find_map(|n| text(n).and_then(|v| v.parse::<u64>().ok()))
        .map(Duration::from_millis);
    let wait = millis.or_else(|| {
        let v = text("retry-after")?;
        if let Ok(secs) = v.parse::<f64>() {
            return (secs.is_finite() && secs >= 0.0)
                .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
        }
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        let at = SystemTime::from(at);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    })?;
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A transport failure as a [`SignalError`]: the root cause, never the URL's query. Every
/// failure short of an answer (refused, reset, a pooled connection closed under the request)
/// is [`SignalError::Connect`]: the upstream could not be reached, whatever the socket said.
pub fn transport_error(e: &reqwest::Error, whom: &str, timeout: Duration) -> SignalError {
    if e.is_timeout() {
        return SignalError::Timeout(timeout);
    }
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = e.source();
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<AddressRefused>() {
            return SignalError::Refused(format!("{whom}: {refused}"));
        }
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        // The URL carries no secret, but its query is noise in a message.
        cause = match e.url() {
            Some(url) => e.to_string().replace(url.as_str(), "the endpoint"),
            None => e.to_string(),
        };
    }
    SignalError::Connect(format!("{whom}: {cause}"))
}

/// "error sending request: client error (Connect): tcp connect error: Connection refused":
/// reqwest's own message says little without its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A header value that is never printed by reqwest's or hyper's debug output.
pub fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Everything but RFC 3986's unreserved characters: how a Service Bus entity name is put in
/// a path segment, and a SAS token's fields and a tenant id in a URL (the way
/// `HttpUtility.UrlEncode`, `quote_plus` and `url.QueryEscape` agree on).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes every character of `value` but the unreserved ones.
pub fn escape(value: &str) -> String {
    utf8_percent_encode(value, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_fractions_dates_and_milliseconds_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_millis(1500)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("999999"));
        assert_eq!(retry_after_at(&h, now), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_at(&h, now), None);
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after_at(&h, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn addresses_are_classed_public_loopback_private_or_kubernetes_api() {
        let class = |ip: &str| classify(ip.parse().unwrap(), &["10.96.0.1".parse().unwrap()]);
        for public in ["20.38.0.1", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(class(public), AddressClass::Public, "{public}");
        }
        for lo in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(class(lo), AddressClass::Loopback, "{lo}");
        }
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "fd00::1",
            "fe80::1",
            "::",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert_eq!(class(private), AddressClass::Private, "{private}");
        }
        assert_eq!(class("10.96.0.1"), AddressClass::KubernetesApi);
    }

    #[test]
    fn each_class_needs_its_own_permission() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let strict = HostRules::default();
        assert!(check_address(&strict, "x.example", ip("20.38.0.1")).is_ok());
        assert!(check_address(&strict, "localhost", ip("127.0.0.1")).is_err());
        assert!(check_address(&HostRules::loopback(), "localhost", ip("127.0.0.1")).is_ok());
        let cluster = HostRules {
            private_upstreams: crate::allowlist::HostList::parse_hosts(&[
                "prometheus-server.monitoring",
                "*.svc",
            ])
            .unwrap(),
            kubernetes_api: vec![ip("10.96.0.1")],
            ..HostRules::default()
        };
        let prom = "prometheus-server.monitoring";
        assert!(check_address(&cluster, prom, ip("10.0.12.7")).is_ok());
        assert!(check_address(&strict, prom, ip("10.0.12.7")).is_err());
        assert!(check_address(&cluster, "other.monitoring", ip("10.0.12.7")).is_err());
        // The API service: not through a wildcard, and not through the loopback flag.
        assert_eq!(
            check_address(&cluster, "kubernetes.svc", ip("10.96.0.1")),
            Err(AddressClass::KubernetesApi)
        );
        assert!(check_address(&cluster, prom, ip("10.96.0.1")).is_ok());
    }

    #[test]
    fn sensitive_header_values_are_not_debug_printed() {
        let v = sensitive("Bearer s3cret").unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cret"));
        assert!(sensitive("line\nbreak").is_none());
    }

    #[test]
    fn every_failure_kind_has_its_outcome_label() {
        let throttled = |status| SignalError::Throttled {
            status,
            retry_after: None,
        };
        assert_eq!(throttled(429).outcome(), "throttled");
        assert_eq!(throttled(503).outcome(), "throttled");
        assert_eq!(
            SignalError::Unauthorized {
                status: 403,
                detail: String::new()
            }
            .outcome(),
            "unauthorized"
        );
        assert_eq!(SignalError::NotFound("q".into()).outcome(), "not_found");
        assert_eq!(SignalError::Timeout(Duration::ZERO).outcome(), "timeout");
        assert_eq!(SignalError::QueryTimeout("t".into()).outcome(), "timeout");
        assert_eq!(SignalError::InvalidQuery("q".into()).outcome(), "bad_query");
        assert_eq!(SignalError::TooLarge { limit: 1 }.outcome(), "error");
        assert_eq!(SignalError::Connect("x".into()).outcome(), "error");
    }
}
