//! The command line (README, "Commands and flags"). `main.rs` only calls [`run`].

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::access::Access;
use crate::allowlist::HostList;
use crate::binding::HostRules;
use crate::cache::RefreshConfig;
use crate::capacity::Capacity;
use crate::decisions::{self, DecisionsOptions};
use crate::engine::{Engine, EngineConfig, ObjectRef};
use crate::metadata::{self, Credentials, Origin};
use crate::metrics::Metrics;
use crate::output::{self, out, outln};
use crate::scaledobject;
use crate::server::{self, ServerConfig, TlsFiles};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "blend-scaler",
    version,
    about = "KEDA external scaler that blends Service Bus backlog, a Prometheus query and cron windows into one replica count"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the scaler.
    Serve(Box<ServeArgs>),
    /// Validate trigger metadata without calling any upstream.
    Check(InputArgs),
    /// Validate, read the live upstreams once, and show how the answer is made; with `--from`,
    /// show what a running pod last answered instead.
    Explain(ExplainArgs),
    /// Run the real server against simulated upstreams and print a scripted day.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// Replay a traffic trace through blend-scaler and KEDA's built-in triggers, side by side.
    #[cfg(feature = "simulate")]
    Simulate(crate::simulate::SimulateArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[arg(long, env = "BLEND_SCALER_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub(crate) grpc_addr: SocketAddr,
    #[arg(long, env = "BLEND_SCALER_HTTP_ADDR", default_value = "0.0.0.0:9464")]
    pub(crate) http_addr: SocketAddr,
    /// PEM certificate for TLS on gRPC.
    #[arg(long, env = "BLEND_SCALER_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on gRPC.
    #[arg(long, env = "BLEND_SCALER_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long, env = "BLEND_SCALER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Serve the HTTP port (`/metrics`, `/decisions`, `/livez`, `/readyz`) over TLS too, with
    /// the gRPC certificate (renewed in place the same way). No client certificate is asked
    /// for there, even with --tls-client-ca: Prometheus and kubelet probes present none.
    #[arg(long, env = "BLEND_SCALER_HTTP_TLS", requires = "tls_cert")]
    pub(crate) http_tls: bool,
    /// How often each upstream is re-read in the background.
    #[arg(long, env = "BLEND_SCALER_REFRESH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) refresh_interval: Duration,
    /// `host[:port]` entries metadata may point at (Service Bus endpoints, Prometheus
    /// servers); `*` matches within one DNS label. Empty allows every host (with a warning).
    #[arg(long, env = "BLEND_SCALER_ALLOW_UPSTREAM", value_delimiter = ',')]
    pub(crate) allow_upstream: Vec<String>,
    /// Host names that may be reached on a non-public address (RFC 1918, CGNAT, link-local,
    /// unique-local): in-cluster services such as the cluster's Prometheus.
    #[arg(
        long,
        env = "BLEND_SCALER_ALLOW_PRIVATE_UPSTREAM",
        value_delimiter = ','
    )]
    pub(crate) allow_private_upstream: Vec<String>,
    /// Let upstreams on loopback addresses be reached, over plain http even with a credential
    /// (local test doubles and demos only).
    #[arg(long, env = "BLEND_SCALER_ALLOW_LOOPBACK_UPSTREAMS")]
    pub(crate) allow_loopback_upstreams: bool,
    /// Private-cloud Service Bus DNS suffixes the scaler's workload identity may be sent to.
    #[arg(
        long,
        env = "BLEND_SCALER_SERVICEBUS_PRIVATE_SUFFIXES",
        value_delimiter = ','
    )]
    pub(crate) servicebus_private_suffix: Vec<String>,
    /// `json` (default when stderr is not a terminal) or `text`.
    #[arg(long, env = "BLEND_SCALER_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Show each Prometheus trigger's query text in `/decisions` (off: a query may name what
    /// not every reader of the HTTP port should see).
    #[arg(long, env = "BLEND_SCALER_DECISIONS_SHOW_QUERIES")]
    pub(crate) decisions_show_queries: bool,
    #[command(flatten)]
    pub(crate) transport: crate::transport::TransportLimits,
    #[command(flatten)]
    pub(crate) capacity: CapacityArgs,
    #[command(flatten)]
    pub(crate) external_metrics: crate::external_metrics::adapter::ExternalMetricsArgs,
}

/// The capacity limits (docs/security.md, "Capacity"); past one, `RESOURCE_EXHAUSTED`.
#[derive(Args, Debug)]
pub(crate) struct CapacityArgs {
    /// ScaledObject triggers tracked at once.
    #[arg(long, env = "BLEND_SCALER_MAX_SCALEDOBJECTS", default_value_t = Capacity::default().max_objects, value_parser = at_least_one)]
    pub(crate) max_scaledobjects: usize,
    /// ScaledObject triggers tracked at once in one Kubernetes namespace.
    #[arg(long, env = "BLEND_SCALER_MAX_SCALEDOBJECTS_PER_NAMESPACE", default_value_t = Capacity::default().max_objects_per_namespace, value_parser = at_least_one)]
    pub(crate) max_scaledobjects_per_namespace: usize,
    /// Bytes of trigger metadata (keys and values) of all tracked objects together.
    #[arg(long, env = "BLEND_SCALER_MAX_METADATA_BYTES", default_value_t = Capacity::default().max_metadata_bytes, value_parser = at_least_one)]
    pub(crate) max_metadata_bytes: usize,
    /// Open StreamIsActive streams of one Kubernetes namespace.
    #[arg(long, env = "BLEND_SCALER_MAX_STREAMS_PER_NAMESPACE", default_value_t = Capacity::default().max_streams_per_namespace, value_parser = at_least_one)]
    pub(crate) max_streams_per_namespace: usize,
    /// Distinct cron expressions held (equal ones are shared).
    #[arg(long, env = "BLEND_SCALER_MAX_CRON_EXPRESSIONS", default_value_t = Capacity::default().max_cron_expressions, value_parser = at_least_one)]
    pub(crate) max_cron_expressions: usize,
    /// Distinct upstreams read, per signal kind (a Service Bus namespace with its
    /// credential, a Prometheus server with its auth, headers and timeout).
    #[arg(long, env = "BLEND_SCALER_MAX_UPSTREAM_GROUPS", default_value_t = RefreshConfig::default().max_groups, value_parser = at_least_one)]
    pub(crate) max_upstream_groups: usize,
    /// Distinct entities or queries read from one upstream.
    #[arg(long, env = "BLEND_SCALER_MAX_ITEMS_PER_GROUP", default_value_t = RefreshConfig::default().max_items_per_group, value_parser = at_least_one)]
    pub(crate) max_items_per_group: usize,
}

impl CapacityArgs {
    pub(crate) fn capacity(&self) -> Capacity {
        Capacity {
            max_objects: self.max_scaledobjects,
            max_objects_per_namespace: self.max_scaledobjects_per_namespace,
            max_metadata_bytes: self.max_metadata_bytes,
            max_streams_per_namespace: self.max_streams_per_namespace,
            max_cron_expressions: self.max_cron_expressions,
        }
    }
}

/// A limit of 0 would refuse everything: a typo, not a setting.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

#[derive(Args, Debug)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) input: InputArgs,
    /// A pod's HTTP port (`http://POD:9464`, or `https://` when it serves `--http-tls`):
    /// print what it last answered for the ScaledObject given as NAMESPACE/NAME instead of
    /// reading the upstreams from here.
    #[arg(long, value_name = "URL")]
    pub(crate) from: Option<String>,
    /// With an `https://` --from: the PEM CA bundle the pod's certificate must chain to; only
    /// these CAs are trusted (default: the system's roots).
    #[arg(long, value_name = "FILE", requires = "from")]
    pub(crate) ca: Option<PathBuf>,
    /// With an `https://` --from: the name the pod's certificate must carry when --from names
    /// the pod by address (`--from https://10.1.2.3:9464 --tls-server-name
    /// blend-scaler.blend-scaler.svc`); the connection still goes to --from's address.
    #[arg(long, value_name = "NAME", requires = "from")]
    pub(crate) tls_server_name: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct InputArgs {
    /// A ScaledObject YAML file (`-` for stdin); every `external` trigger in it is used.
    pub(crate) file: Option<PathBuf>,
    /// Trigger metadata given directly, repeated: `--metadata queueName=orders`.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub(crate) metadata: Vec<String>,
    /// As `serve --allow-loopback-upstreams`: loopback upstreams over plain http (test doubles).
    #[arg(long, env = "BLEND_SCALER_ALLOW_LOOPBACK_UPSTREAMS")]
    pub(crate) allow_loopback_upstreams: bool,
    /// As `serve --allow-private-upstream`: hosts `explain` may read on a non-public address.
    #[arg(
        long,
        env = "BLEND_SCALER_ALLOW_PRIVATE_UPSTREAM",
        value_delimiter = ','
    )]
    pub(crate) allow_private_upstream: Vec<String>,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Serve(args) => runtime()?.block_on(serve(*args)),
        Command::Explain(args) => match &args.from {
            Some(from) => runtime()?.block_on(explain_from(from, &args)),
            None => runtime()?.block_on(explain(&args.input)),
        },
        #[cfg(feature = "demo")]
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(args)),
        #[cfg(feature = "simulate")]
        Command::Simulate(args) => crate::simulate::run(args),
    };
    match result {
        Err(e) if output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// One trigger found in the input.
pub(crate) struct Trigger {
    /// `namespace/name trigger N`, or `--metadata`.
    pub(crate) label: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) metadata: HashMap<String, String>,
    /// Problems found before parsing (non-string values).
    pub(crate) problems: Vec<String>,
}

/// Reads the triggers to check from a file, stdin or `--metadata`.
pub(crate) fn load_triggers(args: &InputArgs) -> anyhow::Result<(Vec<Trigger>, Origin)> {
    if !args.metadata.is_empty() {
        if args.file.is_some() {
            bail!("give either a FILE or --metadata, not both");
        }
        let mut metadata = HashMap::new();
        for pair in &args.metadata {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--metadata `{pair}` is not KEY=VALUE"))?;
            metadata.insert(k.to_string(), v.to_string());
        }
        let t = Trigger {
            label: "--metadata".into(),
            namespace: "cli".into(),
            name: "metadata".into(),
            metadata,
            problems: Vec::new(),
        };
        return Ok((vec![t], Origin::Keda));
    }
    let Some(path) = &args.file else {
        bail!("give a ScaledObject FILE (or - for stdin), or --metadata KEY=VALUE");
    };
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let triggers = triggers_in_yaml(&text)?;
    if triggers.is_empty() {
        bail!(
            "no `external` or `external-push` trigger, nor a BlendedMetric, found in {}",
            path.display()
        );
    }
    Ok((triggers, Origin::File))
}

/// Every `external`/`external-push` trigger of every ScaledObject or ScaledJob in `text`.
pub(crate) fn triggers_in_yaml(text: &str) -> anyhow::Result<Vec<Trigger>> {
    let mut out = Vec::new();
    for doc in scaledobject::documents(text)? {
        if doc.kind == "BlendedMetric" {
            out.push(blended_metric_trigger(&doc));
            continue;
        }
        if !doc.is_scaled() {
            continue;
        }
        for t in doc.triggers().into_iter().filter(|t| t.is_external()) {
            out.push(Trigger {
                label: format!(
                    "{} {}/{} trigger {} ({})",
                    doc.kind, doc.namespace, doc.name, t.position, t.kind
                ),
                namespace: doc.namespace.clone(),
                name: doc.name.clone(),
                metadata: t.metadata,
                problems: t.problems,
            });
        }
    }
    Ok(out)
}

/// A `BlendedMetric`'s `spec.metadata`, with its `*FromEnv` keys refused.
fn blended_metric_trigger(doc: &scaledobject::Document) -> Trigger {
    let (name, namespace) = (doc.name.clone(), doc.namespace.clone());
    let (metadata, mut problems) =
        scaledobject::string_map(doc.spec().and_then(|s| s.get("metadata")));
    problems.extend(
        crate::crd::from_env_errors(metadata.keys())
            .iter()
            .map(ToString::to_string),
    );
    Trigger {
        label: format!("BlendedMetric {namespace}/{name}"),
        namespace,
        name,
        metadata,
        problems,
    }
}

fn check(args: &InputArgs) -> anyhow::Result<ExitCode> {
    let (triggers, origin) = load_triggers(args)?;
    let credentials = Credentials::from_env();
    let mut failed = false;
    for t in &triggers {
        let hosts = HostRules {
            allow_loopback: args.allow_loopback_upstreams,
            ..HostRules::default()
        };
        let parsed = metadata::parse(&t.metadata, origin, &credentials).and_then(|plan| {
            hosts.check(&t.metadata, &plan, &credentials)?;
            Ok(plan)
        });
        match (parsed, t.problems.is_empty()) {
            (Ok(plan), true) => {
                outln!("{}: ok", t.label)?;
                out!("{plan}")?;
            }
            (result, _) => {
                failed = true;
                outln!("{}: invalid", t.label)?;
                for p in &t.problems {
                    outln!("  error: {p}")?;
                }
                if let Err(errs) = result {
                    for e in errs.0 {
                        outln!("  error: {e}")?;
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _telemetry = telemetry::init(args.log_format.unwrap_or_else(LogFormat::detect))?;
    let adapter = args.external_metrics.files()?;
    let refresh = RefreshConfig {
        interval: args.refresh_interval,
        max_groups: args.capacity.max_upstream_groups,
        max_items_per_group: args.capacity.max_items_per_group,
        ..RefreshConfig::default()
    };
    let credentials = Credentials::from_env();
    let access = Access::from_env()?;
    for warning in access.warnings(&credentials) {
        tracing::warn!("{warning}");
    }
    if args.allow_upstream.is_empty() {
        tracing::warn!(
            "no --allow-upstream (BLEND_SCALER_ALLOW_UPSTREAM): trigger metadata may point the \
             scaler at any public host; set the allowlist in production"
        );
    }
    let private_upstreams = HostList::parse_hosts(&args.allow_private_upstream)
        .map_err(|e| anyhow::anyhow!("--allow-private-upstream: {e}"))?;
    let config = ServerConfig {
        grpc_addr: args.grpc_addr,
        http_addr: Some(args.http_addr),
        tls: args.tls_cert.map(|cert| TlsFiles {
            cert,
            key: args
                .tls_key
                .expect("clap requires --tls-key with --tls-cert"),
            client_ca: args.tls_client_ca,
        }),
        http_tls: args.http_tls,
        transport: args.transport,
        engine: EngineConfig {
            refresh,
            allow_upstream: (!args.allow_upstream.is_empty()).then_some(args.allow_upstream),
            hosts: HostRules {
                allow_loopback: args.allow_loopback_upstreams,
                private_suffixes: args.servicebus_private_suffix,
                private_upstreams,
                kubernetes_api: kubernetes_api_addresses(),
            },
            credentials,
            access,
            capacity: args.capacity.capacity(),
            ..EngineConfig::default()
        },
        decisions: DecisionsOptions {
            show_queries: args.decisions_show_queries,
            ..DecisionsOptions::default()
        },
    };
    // Before anything listens: without its client the adapter cannot start.
    let kube_client = match &adapter {
        Some(_) => Some(kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "--external-metrics-addr needs the Kubernetes API (KUBECONFIG or in-cluster): {e}"
            )
        })?),
        None => None,
    };
    let running = server::start_with_default_sources(config).await?;
    let adapter = match (adapter, kube_client) {
        (Some(files), Some(client)) => {
            let engine = running.engine.clone();
            let options = Default::default();
            Some(crate::external_metrics::adapter::start(files, client, engine, options).await?)
        }
        _ => None,
    };
    running.run_until(shutdown_signal()).await?;
    if let Some(adapter) = adapter {
        adapter.abort();
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The Kubernetes API service's address, from the variable kubelet sets in every pod.
fn kubernetes_api_addresses() -> Vec<std::net::IpAddr> {
    std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()
        .and_then(|h| h.trim().trim_matches(['[', ']']).parse().ok())
        .into_iter()
        .collect()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// In a file, `*FromEnv` values name variables; `explain` resolves them from its own
/// environment, as KEDA would from the target's.
fn resolve_from_env(metadata: &mut HashMap<String, String>) -> Vec<String> {
    let mut missing = Vec::new();
    for (key, value) in metadata.iter_mut() {
        if key.ends_with("FromEnv") {
            match std::env::var(value.as_str()) {
                Ok(v) => *value = v,
                Err(_) => missing.push(format!(
                    "metadata key `{key}`: set `{value}` in this environment to explain"
                )),
            }
        }
    }
    missing
}

async fn explain(args: &InputArgs) -> anyhow::Result<ExitCode> {
    let (mut triggers, origin) = load_triggers(args)?;
    let metrics = Metrics::new();
    let refresh = RefreshConfig::default();
    let hosts = HostRules {
        allow_loopback: args.allow_loopback_upstreams,
        private_upstreams: HostList::parse_hosts(&args.allow_private_upstream)
            .map_err(|e| anyhow::anyhow!("--allow-private-upstream: {e}"))?,
        kubernetes_api: kubernetes_api_addresses(),
        ..HostRules::default()
    };
    let engine = Engine::new(
        EngineConfig {
            refresh: refresh.clone(),
            credentials: Credentials::from_env(),
            // The same namespace rules as `serve`, so a trigger `serve` would refuse for its
            // namespace is refused here too.
            access: Access::from_env()?,
            hosts: hosts.clone(),
            ..EngineConfig::default()
        },
        server::default_sources(&refresh, &hosts, &metrics),
        metrics,
    )?;
    let engine = Arc::new(engine);
    let mut failed = false;
    for t in &mut triggers {
        let mut problems = std::mem::take(&mut t.problems);
        if origin == Origin::File {
            problems.extend(resolve_from_env(&mut t.metadata));
        }
        outln!("{}", t.label)?;
        if !problems.is_empty() {
            failed = true;
            for p in problems {
                outln!("  error: {p}")?;
            }
            continue;
        }
        let obj = ObjectRef {
            namespace: &t.namespace,
            name: &t.name,
            metadata: &t.metadata,
        };
        match engine.answer(obj).await {
            Err(e) => {
                failed = true;
                outln!("  error: {e}")?;
            }
            Ok((tracked, _)) => {
                out!("{}", tracked.plan)?;
                let view = decisions::view(&tracked, tracked.last().as_ref(), true);
                let mut out = String::new();
                failed |= decisions::render_table(&view, &mut out);
                out!("{out}")?;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `explain --from URL NAMESPACE/NAME`: what that pod last answered, from its `/decisions`.
async fn explain_from(from: &str, args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let input = &args.input;
    if !input.metadata.is_empty() {
        bail!("--from takes NAMESPACE/NAME, not --metadata");
    }
    let target = input
        .file
        .as_ref()
        .and_then(|p| p.to_str())
        .context("--from needs the ScaledObject as NAMESPACE/NAME")?;
    let Some((namespace, name)) = target
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
    else {
        bail!("--from needs the ScaledObject as NAMESPACE/NAME, not `{target}`");
    };
    let tls = decisions::FetchTls {
        ca: args.ca.clone(),
        server_name: args.tls_server_name.clone(),
    };
    let found = decisions::fetch(from, namespace, name, &tls).await?;
    let mut failed = false;
    let now = chrono::Utc::now();
    for v in &found.decisions {
        let mut out = String::new();
        failed |= decisions::render_remote(&found.pod, v, now, &mut out);
        out!("{out}")?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
