//! The Service Bus keys: entity, endpoint, counts and authentication.

use super::*;
use crate::intern::intern;

impl Parser<'_> {
    pub(super) fn servicebus(&mut self) -> Option<ServiceBusPlan> {
        let entity = match (self.get(keys::QUEUE_NAME), self.get(keys::TOPIC_NAME)) {
            (Some(_), Some(_)) => {
                self.err(keys::TOPIC_NAME, "cannot be set together with `queueName`");
                None
            }
            (Some(q), None) => {
                let q = intern(q);
                if self.m.contains_key(keys::SUBSCRIPTION_NAME) {
                    self.err(keys::SUBSCRIPTION_NAME, "is only used with `topicName`");
                }
                Some(Entity::Queue(q))
            }
            (None, Some(t)) => {
                let topic = intern(t);
                let sub = self.required(keys::SUBSCRIPTION_NAME, "with `topicName`");
                sub.map(|subscription| Entity::Subscription {
                    topic,
                    subscription: intern(&subscription),
                })
            }
            (None, None) => None,
        };
        let use_regex = self.boolean(keys::USE_REGEX, false);
        if use_regex {
            let names: Vec<(&str, Arc<str>)> = match &entity {
                Some(Entity::Queue(q)) => vec![(keys::QUEUE_NAME, q.clone())],
                Some(Entity::Subscription {
                    topic,
                    subscription,
                }) => vec![
                    (keys::TOPIC_NAME, topic.clone()),
                    (keys::SUBSCRIPTION_NAME, subscription.clone()),
                ],
                None => vec![],
            };
            for (key, name) in names {
                if let Err(e) = ServiceBusPlan::name_pattern(&name) {
                    self.err(key, format!("is not a valid regular expression: {e}"));
                }
            }
        } else {
            if self.m.contains_key(keys::OPERATION) {
                self.err(keys::OPERATION, "is only used with `useRegex: true`");
            }
            for key in [keys::QUEUE_NAME, keys::TOPIC_NAME, keys::SUBSCRIPTION_NAME] {
                if self.get(key).is_some_and(|n| !is_entity_name(n)) {
                    self.err(
                        key,
                        "must be a Service Bus entity name: letters, digits, `.`, `-`, `_` \
                         (no `/`, `..`, `?`, `#`), at most 260 characters",
                    );
                }
            }
        }
        let operation = self
            .aggregation(keys::OPERATION)
            .unwrap_or(Aggregation::Sum);
        let message_count = self.number(keys::MESSAGE_COUNT, Some(5.0), true);
        let activation_message_count =
            self.number(keys::ACTIVATION_MESSAGE_COUNT, Some(0.0), false);
        let (auth, cs_endpoint) = self.servicebus_auth();
        let endpoint = self.servicebus_endpoint(cs_endpoint, &auth);
        Some(ServiceBusPlan {
            endpoint: endpoint?,
            entity: entity?,
            use_regex,
            operation,
            message_count: message_count?,
            activation_message_count: activation_message_count?,
            auth: auth?.shared(),
        })
    }

    pub(super) fn servicebus_auth(&mut self) -> (Option<ServiceBusAuth>, Option<Arc<str>>) {
        if let Some(secret) = self.secret(keys::CONNECTION_FROM_ENV) {
            if self.m.contains_key(keys::CREDENTIAL) {
                self.err(
                    keys::CREDENTIAL,
                    "cannot be set together with `connectionFromEnv`",
                );
            }
            // In a file the value is the variable's name, unless someone pasted the string.
            if self.origin == Origin::File && !secret.expose().contains('=') {
                let variable = secret.expose().to_string();
                return (Some(ServiceBusAuth::ResolvedByKeda { variable }), None);
            }
            return match ConnectionString::parse(secret.expose()) {
                Ok(cs) => {
                    let ep = cs.endpoint.clone();
                    (Some(ServiceBusAuth::ConnectionString(cs)), ep)
                }
                Err(e) => {
                    self.err(keys::CONNECTION_FROM_ENV, format!("the value {e}"));
                    (None, None)
                }
            };
        }
        if let Some(name) = self.get(keys::CREDENTIAL).map(str::to_string) {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                self.err(keys::CREDENTIAL, "must be letters, digits, `-`, `_` or `.`");
                return (None, None);
            }
            let env = format!(
                "{SERVICEBUS_CREDENTIAL_PREFIX}{}",
                Credentials::env_name(&name)
            );
            return match (self.credentials.servicebus(&name), self.origin) {
                (Some(secret), _) => match ConnectionString::parse(secret.expose()) {
                    Ok(cs) => {
                        let ep = cs.endpoint.clone();
                        (Some(ServiceBusAuth::ConnectionString(cs)), ep)
                    }
                    Err(e) => {
                        self.err(keys::CREDENTIAL, format!("the scaler's `{env}` {e}"));
                        (None, None)
                    }
                },
                (None, Origin::File) => (Some(ServiceBusAuth::NamedCredential(name)), None),
                (None, Origin::Keda) => {
                    self.err(
                        keys::CREDENTIAL,
                        format!("`{name}` is not configured on the scaler (set `{env}`)"),
                    );
                    (None, None)
                }
            };
        }
        (Some(ServiceBusAuth::WorkloadIdentity), None)
    }

    pub(super) fn servicebus_endpoint(
        &mut self,
        from_connection: Option<Arc<str>>,
        auth: &Option<ServiceBusAuth>,
    ) -> Option<Arc<str>> {
        let suffix = match self.get(keys::CLOUD).unwrap_or("AzurePublicCloud") {
            "AzurePublicCloud" => Some("servicebus.windows.net".to_string()),
            "AzureUSGovernmentCloud" => Some("servicebus.usgovcloudapi.net".to_string()),
            "AzureChinaCloud" => Some("servicebus.chinacloudapi.cn".to_string()),
            "Private" => {
                let s = self.required(keys::ENDPOINT_SUFFIX, "with `cloud: Private`");
                s.map(|s| s.trim_start_matches('.').to_string())
            }
            other => {
                let msg = format!(
                    "`{other}` is not one of `AzurePublicCloud`, `AzureUSGovernmentCloud`, \
                     `AzureChinaCloud`, `Private`"
                );
                self.err(keys::CLOUD, msg);
                None
            }
        };
        if self.m.contains_key(keys::ENDPOINT_SUFFIX) && self.get(keys::CLOUD) != Some("Private") {
            self.err(keys::ENDPOINT_SUFFIX, "is only used with `cloud: Private`");
        }
        if let Some(ep) = self.get(keys::ENDPOINT).map(str::to_string) {
            return self.url(keys::ENDPOINT, &ep).map(|ep| intern(&ep));
        }
        if let Some(ep) = from_connection {
            return Some(ep);
        }
        if let Some(ns) = self.get(keys::NAMESPACE).map(str::to_string) {
            let valid = !ns.is_empty()
                && ns.len() <= 50
                && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                self.err(
                    keys::NAMESPACE,
                    "must be a Service Bus namespace name (letters, digits, `-`)",
                );
                return None;
            }
            return suffix.map(|s| intern(&format!("https://{ns}.{s}")));
        }
        match auth {
            // Auth already failed and said so; a missing endpoint would only repeat it.
            None => None,
            // The connection string KEDA resolves will carry the endpoint.
            Some(ServiceBusAuth::ResolvedByKeda { .. } | ServiceBusAuth::NamedCredential(_)) => {
                Some("".into())
            }
            Some(ServiceBusAuth::ConnectionString(_)) => {
                self.err(
                    keys::NAMESPACE,
                    "is required: the connection string has no `Endpoint`",
                );
                None
            }
            Some(ServiceBusAuth::WorkloadIdentity) => {
                self.err(
                    keys::NAMESPACE,
                    "is required (or `endpoint`, or a connection string)",
                );
                None
            }
        }
    }
}

/// A name that stays one URL path segment: a tenant cannot pick the request path.
fn is_entity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 260
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
