//! How one Prometheus server is reached: the HTTP client shared by one TLS identity, the
//! headers (auth, custom) every request to the server carries, and where its queries go.

use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName};
use url::Url;

use super::{CONNECT_TIMEOUT, Server};
use crate::binding::HostRules;
use crate::http;
use crate::signal::SignalError;

/// How one [`Server`] is reached: the shared HTTP client of its TLS identity, the headers
/// its requests carry, and where its instant queries go.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) http: Arc<SharedClient>,
    pub(super) headers: HeaderMap,
    pub(super) query_url: Url,
}

/// An HTTP client shared by every server reached with one TLS identity (most share the one
/// without), counted in its upstream's `live_clients` while it lives.
pub(super) struct SharedClient {
    pub(super) client: reqwest::Client,
    pub(super) live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for SharedClient {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn config_error(server: &Server, what: &str) -> SignalError {
    SignalError::Setup(format!(
        "the Prometheus client for {} could not be set up: {what}",
        server.label()
    ))
}

/// How requests to one server are made on `http`: auth and custom headers on every request,
/// sent to the server's query URL.
pub(super) fn connect(server: &Server, http: Arc<SharedClient>) -> Result<Connection, SignalError> {
    let config_error = |what: &str| config_error(server, what);
    let mut url = Url::parse(&server.address).map_err(|_| config_error("bad serverAddress"))?;
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{path}/api/v1/query"));
    url.set_fragment(None);

    let mut headers = HeaderMap::new();
    for (name, value) in &server.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error(&format!("`{name}` is not a header name")))?;
        headers.append(
            name.clone(),
            http::sensitive(value.expose())
                .ok_or_else(|| config_error(&format!("the value of header `{name}` is invalid")))?,
        );
    }
    // Like KEDA, a bearer token wins over basic auth for `Authorization`; a custom auth header
    // is added under its own name (and replaces a custom header of the same name).
    let authorization = match (&server.auth.bearer, &server.auth.basic) {
        (Some(token), _) => Some(format!("Bearer {}", token.expose())),
        (None, Some((user, pass))) => Some(format!(
            "Basic {}",
            basic_token(user.expose(), pass.expose())
        )),
        (None, None) => None,
    };
    if let Some(value) = authorization {
        headers.insert(
            AUTHORIZATION,
            http::sensitive(&value)
                .ok_or_else(|| config_error("the credentials are not header-safe"))?,
        );
    }
    if let Some((name, value)) = &server.auth.custom {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error("`customAuthHeader` is not a header name"))?;
        headers.insert(
            name,
            http::sensitive(value.expose())
                .ok_or_else(|| config_error("`customAuthValueFromEnv` is not header-safe"))?,
        );
    }

    Ok(Connection {
        http,
        headers,
        query_url: url,
    })
}

/// The HTTP client for a TLS identity (`server`'s): its client certificate and CA, if any,
/// and redirects within a server's own origin.
pub(super) fn build_client(
    server: &Server,
    hosts: &HostRules,
) -> Result<reqwest::Client, SignalError> {
    let config_error = |what: &str| config_error(server, what);
    let mut builder =
        http::client_builder(CONNECT_TIMEOUT, hosts).redirect(same_origin_redirects());
    if let Some(tls) = &server.auth.tls {
        // reqwest wants the certificate chain and its key in one PEM buffer.
        let pem = format!("{}\n{}\n", tls.cert.expose(), tls.key.expose());
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|_| {
            config_error("`certFromEnv`/`keyFromEnv` are not a PEM certificate and key")
        })?;
        builder = builder.identity(identity);
        if let Some(ca) = &tls.ca {
            // As KEDA (Go's RootCAs): a given CA replaces the system roots.
            let roots = reqwest::Certificate::from_pem_bundle(ca.expose().as_bytes())
                .map_err(|_| config_error("`caFromEnv` is not a PEM certificate"))?;
            if roots.is_empty() {
                return Err(config_error("`caFromEnv` holds no certificate"));
            }
            builder = builder.tls_certs_only(roots);
        }
    }
    builder
        .build()
        .map_err(|e| config_error(&http::error_chain(&e.without_url())))
}

/// Follows redirects within the server's own origin only. Custom headers and custom auth
/// values go with every request, and reqwest strips only the standard credential headers on a
/// cross-host redirect, so following one could hand a secret to another host. A redirect
/// elsewhere (an SSO login page, say) is answered as the 3xx it is: an error.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 10 || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

pub(super) fn basic_token(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}
