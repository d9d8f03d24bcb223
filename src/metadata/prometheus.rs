//! The Prometheus keys: server, query, null handling, headers and authentication.

use super::*;
use crate::intern::intern;

impl Parser<'_> {
    pub(super) fn pairs(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(text) = self.get(key).map(str::to_string) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, part) in text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            match part.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    out.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => self.err(key, format!("entry {} is not `name=value`", i + 1)),
            }
        }
        out
    }

    pub(super) fn prometheus(&mut self) -> Option<PrometheusPlan> {
        let server = self.get(keys::SERVER_ADDRESS).map(str::to_string)?;
        let server_address = self.url(keys::SERVER_ADDRESS, &server).map(|s| intern(&s));
        let query = self
            .required(keys::QUERY, "with `serverAddress`")
            .map(|q| intern(&q));
        let threshold = if self.has(keys::THRESHOLD) {
            self.number(keys::THRESHOLD, None, true)
        } else {
            self.err(keys::THRESHOLD, "is required with `serverAddress`");
            None
        };
        let activation_threshold = self.number(keys::ACTIVATION_THRESHOLD, Some(0.0), false);
        let query_parameters = self.pairs(keys::QUERY_PARAMETERS);
        let custom_headers: Vec<(String, Secret)> = self
            .pairs(keys::CUSTOM_HEADERS)
            .into_iter()
            .map(|(k, v)| (k, Secret::shared(&v)))
            .collect();
        for (name, _) in &custom_headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    keys::CUSTOM_HEADERS,
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
        let namespace = self.get(keys::PROMETHEUS_NAMESPACE).map(str::to_string);
        let timeout = self.duration(keys::TIMEOUT, None, Duration::from_millis(1));
        let ignore_null_values = self.boolean(keys::IGNORE_NULL_VALUES, true);
        let series_aggregation = self.aggregation(keys::SERIES_AGGREGATION);
        let auth = self.prometheus_auth().shared();
        Some(PrometheusPlan {
            server_address: server_address?,
            query: query?,
            threshold: threshold?,
            activation_threshold: activation_threshold?,
            extras: PrometheusExtras {
                query_parameters,
                custom_headers,
                namespace,
                timeout,
            }
            .boxed(),
            ignore_null_values,
            series_aggregation,
            auth,
        })
    }

    pub(super) fn prometheus_auth(&mut self) -> PrometheusAuth {
        let mut auth = PrometheusAuth::default();
        let modes: BTreeSet<String> = self
            .get(keys::AUTH_MODES)
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        for mode in &modes {
            if !matches!(mode.as_str(), "bearer" | "basic" | "tls" | "custom") {
                self.err(
                    keys::AUTH_MODES,
                    format!("`{mode}` is not one of `bearer`, `basic`, `tls`, `custom`"),
                );
            }
        }
        let mut from_credential = None;
        if let Some(name) = self.get(keys::PROMETHEUS_CREDENTIAL).map(str::to_string) {
            let env = format!(
                "{PROMETHEUS_CREDENTIAL_PREFIX}{}",
                Credentials::env_name(&name)
            );
            match (self.credentials.prometheus(&name).cloned(), self.origin) {
                (Some(secret), _) => match parse_prometheus_credential(secret.expose()) {
                    Ok(c) => from_credential = Some(c),
                    Err(e) => self.err(
                        keys::PROMETHEUS_CREDENTIAL,
                        format!("the scaler's `{env}` {e}"),
                    ),
                },
                (None, Origin::File) => {}
                (None, Origin::Keda) => self.err(
                    keys::PROMETHEUS_CREDENTIAL,
                    format!("`{name}` is not configured on the scaler (set `{env}`)"),
                ),
            }
        }
        let later = self.origin == Origin::File;
        let wants = |m: &str| modes.contains(m);
        let credential_covers = self.has(keys::PROMETHEUS_CREDENTIAL);
        if wants("bearer") {
            match (self.secret(keys::BEARER_TOKEN_FROM_ENV), &from_credential) {
                (Some(t), _) => auth.bearer = Some(t),
                (
                    None,
                    Some(PrometheusAuth {
                        bearer: Some(t), ..
                    }),
                ) => auth.bearer = Some(t.clone()),
                (None, _) if credential_covers && later => {}
                _ => self.err(
                    keys::BEARER_TOKEN_FROM_ENV,
                    "is required with `authModes: bearer`",
                ),
            }
        }
        if wants("basic") {
            let user = self.secret(keys::USERNAME_FROM_ENV);
            let pass = self.secret(keys::PASSWORD_FROM_ENV);
            match (user, pass, &from_credential) {
                (Some(u), Some(p), _) => auth.basic = Some((u, p)),
                (None, None, Some(PrometheusAuth { basic: Some(b), .. })) => {
                    auth.basic = Some(b.clone())
                }
                (None, None, _) if credential_covers && later => {}
                (u, p, _) => {
                    if u.is_none() {
                        self.err(
                            keys::USERNAME_FROM_ENV,
                            "is required with `authModes: basic`",
                        );
                    }
                    if p.is_none() {
                        self.err(
                            keys::PASSWORD_FROM_ENV,
                            "is required with `authModes: basic`",
                        );
                    }
                }
            }
        }
        if wants("custom") {
            let header = self.required(keys::CUSTOM_AUTH_HEADER, "with `authModes: custom`");
            let value = self.secret(keys::CUSTOM_AUTH_VALUE_FROM_ENV);
            if value.is_none() {
                self.err(
                    keys::CUSTOM_AUTH_VALUE_FROM_ENV,
                    "is required with `authModes: custom`",
                );
            }
            if let Some(h) = &header
                && reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                self.err(
                    keys::CUSTOM_AUTH_HEADER,
                    format!("`{h}` is not a valid header name"),
                );
            }
            auth.custom = header.zip(value);
        }
        if wants("tls") {
            let cert = self.secret(keys::CERT_FROM_ENV);
            let key = self.secret(keys::KEY_FROM_ENV);
            if cert.is_none() {
                self.err(keys::CERT_FROM_ENV, "is required with `authModes: tls`");
            }
            if key.is_none() {
                self.err(keys::KEY_FROM_ENV, "is required with `authModes: tls`");
            }
            let ca = self.secret(keys::CA_FROM_ENV);
            if let (Some(cert), Some(key)) = (cert, key) {
                auth.tls = Some(PrometheusTls { ca, cert, key });
            }
        }
        // A credential alone, with no authModes, applies as it is.
        if modes.is_empty()
            && let Some(c) = from_credential
        {
            auth = c;
        }
        for (key, mode) in [
            (keys::BEARER_TOKEN_FROM_ENV, "bearer"),
            (keys::USERNAME_FROM_ENV, "basic"),
            (keys::PASSWORD_FROM_ENV, "basic"),
            (keys::CUSTOM_AUTH_HEADER, "custom"),
            (keys::CUSTOM_AUTH_VALUE_FROM_ENV, "custom"),
            (keys::CERT_FROM_ENV, "tls"),
            (keys::KEY_FROM_ENV, "tls"),
            (keys::CA_FROM_ENV, "tls"),
        ] {
            if self.m.contains_key(key) && !wants(mode) {
                self.err(key, format!("is only used with `authModes: {mode}`"));
            }
        }
        auth
    }
}

fn parse_prometheus_credential(text: &str) -> Result<PrometheusAuth, String> {
    let mut auth = PrometheusAuth::default();
    if let Some(token) = text.strip_prefix("bearer:") {
        auth.bearer = Some(Secret::shared(token));
    } else if let Some(rest) = text.strip_prefix("basic:") {
        let (user, pass) = rest
            .split_once(':')
            .ok_or("must be `basic:<user>:<password>`")?;
        auth.basic = Some((Secret::shared(user), Secret::shared(pass)));
    } else {
        return Err("must start with `bearer:` or `basic:`".into());
    }
    Ok(auth)
}
