//! Every metadata key by name, and the one list of key groups that the parser, the typo
//! suggestion, `check` and the fuzz target read.

pub const SCALER_ADDRESS: &str = "scalerAddress";
pub const ENABLE_T_L_S: &str = "enableTLS";
pub const UNSAFE_SSL: &str = "unsafeSsl";
pub const TLS_CERT_FILE: &str = "tlsCertFile";

pub const METRIC_NAME: &str = "metricName";
pub const POLICY: &str = "policy";
pub const MIN_REPLICAS: &str = "minReplicas";
pub const MAX_REPLICAS: &str = "maxReplicas";
pub const STALE_AFTER: &str = "staleAfter";

pub const TARGET_DRAIN_SECONDS: &str = "targetDrainSeconds";
pub const MESSAGES_PER_SECOND_PER_REPLICA: &str = "messagesPerSecondPerReplica";

pub const NAMESPACE: &str = "namespace";
pub const CLOUD: &str = "cloud";
pub const ENDPOINT_SUFFIX: &str = "endpointSuffix";
pub const ENDPOINT: &str = "endpoint";
pub const QUEUE_NAME: &str = "queueName";
pub const TOPIC_NAME: &str = "topicName";
pub const SUBSCRIPTION_NAME: &str = "subscriptionName";
pub const MESSAGE_COUNT: &str = "messageCount";
pub const ACTIVATION_MESSAGE_COUNT: &str = "activationMessageCount";
pub const USE_REGEX: &str = "useRegex";
pub const OPERATION: &str = "operation";
pub const CONNECTION_FROM_ENV: &str = "connectionFromEnv";
pub const CREDENTIAL: &str = "credential";

pub const SERVER_ADDRESS: &str = "serverAddress";
pub const QUERY: &str = "query";
pub const THRESHOLD: &str = "threshold";
pub const ACTIVATION_THRESHOLD: &str = "activationThreshold";
pub const QUERY_PARAMETERS: &str = "queryParameters";
pub const CUSTOM_HEADERS: &str = "customHeaders";
pub const PROMETHEUS_NAMESPACE: &str = "prometheusNamespace";
pub const TIMEOUT: &str = "timeout";
pub const IGNORE_NULL_VALUES: &str = "ignoreNullValues";
pub const SERIES_AGGREGATION: &str = "seriesAggregation";
pub const AUTH_MODES: &str = "authModes";
pub const BEARER_TOKEN_FROM_ENV: &str = "bearerTokenFromEnv";
pub const USERNAME_FROM_ENV: &str = "usernameFromEnv";
pub const PASSWORD_FROM_ENV: &str = "passwordFromEnv";
pub const CUSTOM_AUTH_HEADER: &str = "customAuthHeader";
pub const CUSTOM_AUTH_VALUE_FROM_ENV: &str = "customAuthValueFromEnv";
pub const CA_FROM_ENV: &str = "caFromEnv";
pub const CERT_FROM_ENV: &str = "certFromEnv";
pub const KEY_FROM_ENV: &str = "keyFromEnv";
pub const PROMETHEUS_CREDENTIAL: &str = "prometheusCredential";

pub const TIMEZONE: &str = "timezone";
pub const START: &str = "start";
pub const END: &str = "end";
pub const DESIRED_REPLICAS: &str = "desiredReplicas";
pub const WINDOWS: &str = "windows";

/// Keys KEDA itself reads for its connection to the scaler; passed through, never ours.
pub const RESERVED: &[&str] = &[SCALER_ADDRESS, ENABLE_T_L_S, UNSAFE_SSL, TLS_CERT_FILE];
/// Keys of every trigger.
pub const COMMON: &[&str] = &[METRIC_NAME, POLICY, MIN_REPLICAS, MAX_REPLICAS, STALE_AFTER];
/// Keys of `policy: drainTime` only.
pub const DRAIN: &[&str] = &[TARGET_DRAIN_SECONDS, MESSAGES_PER_SECOND_PER_REPLICA];
/// Keys of the Service Bus signal.
pub const SERVICEBUS: &[&str] = &[
    NAMESPACE,
    CLOUD,
    ENDPOINT_SUFFIX,
    ENDPOINT,
    QUEUE_NAME,
    TOPIC_NAME,
    SUBSCRIPTION_NAME,
    MESSAGE_COUNT,
    ACTIVATION_MESSAGE_COUNT,
    USE_REGEX,
    OPERATION,
    CONNECTION_FROM_ENV,
    CREDENTIAL,
];
/// Keys of the Prometheus signal.
pub const PROMETHEUS: &[&str] = &[
    SERVER_ADDRESS,
    QUERY,
    THRESHOLD,
    ACTIVATION_THRESHOLD,
    QUERY_PARAMETERS,
    CUSTOM_HEADERS,
    PROMETHEUS_NAMESPACE,
    TIMEOUT,
    IGNORE_NULL_VALUES,
    SERIES_AGGREGATION,
    AUTH_MODES,
    BEARER_TOKEN_FROM_ENV,
    USERNAME_FROM_ENV,
    PASSWORD_FROM_ENV,
    CUSTOM_AUTH_HEADER,
    CUSTOM_AUTH_VALUE_FROM_ENV,
    CA_FROM_ENV,
    CERT_FROM_ENV,
    KEY_FROM_ENV,
    PROMETHEUS_CREDENTIAL,
];
/// Keys of the cron signal.
pub const CRON: &[&str] = &[TIMEZONE, START, END, DESIRED_REPLICAS, WINDOWS];

/// The groups of keys the scaler reads (KEDA's reserved keys are not among them).
pub const GROUPS: &[&[&str]] = &[COMMON, DRAIN, SERVICEBUS, PROMETHEUS, CRON];

/// Keys whose values are secrets (`connectionFromEnv` holds one among other parts).
pub const SECRET: &[&str] = &[
    BEARER_TOKEN_FROM_ENV,
    PASSWORD_FROM_ENV,
    USERNAME_FROM_ENV,
    CUSTOM_AUTH_VALUE_FROM_ENV,
    KEY_FROM_ENV,
];

/// Every key the scaler reads.
pub fn ours() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().flat_map(|g| g.iter().copied())
}

/// Every key the parser accepts, KEDA's reserved ones included (for fuzzing and tooling).
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    RESERVED.iter().copied().chain(ours())
}

/// Whether the parser accepts `key`.
pub fn is_known(key: &str) -> bool {
    known_keys().any(|k| k == key)
}

/// The known key closest to a typo, when one is close.
pub(super) fn suggestion(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    ours()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
