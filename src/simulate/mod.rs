//! `blend-scaler simulate`: replays a trace through the real metadata parser and decision on
//! a virtual clock, beside KEDA's built-in triggers, and compares the two.
//!
//! [`model::simulate`] and [`report`] are pure; [`run`] only reads the inputs and writes the
//! outputs. See `docs/simulate.md`.

pub mod generate;
pub mod hpa;
pub mod model;
pub mod report;
pub mod trace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize as _;
use serde_yaml::Value;

use crate::metadata::{self, Credentials, Plan, Policy, Source};
use hpa::{Behavior, Hpa};
use model::{BlendSettings, Keda, Outcome, Settings, Workload};
use report::Summary;
use trace::Trace;

/// The annotation giving the messages one ready pod completes per second.
pub const RATE_ANNOTATION: &str = "blend-scaler.io/messages-per-second-per-replica";
/// The annotation giving the seconds from a pod's creation until it takes work.
pub const START_ANNOTATION: &str = "blend-scaler.io/pod-start-seconds";
pub const DEFAULT_POD_START_SECONDS: u64 = 30;

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// The trace to replay: CSV of message arrivals and request rate over time
    /// (see docs/simulate.md).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The ScaledObject: its first `external`/`external-push` trigger is blend-scaler's.
    #[arg(long, value_name = "YAML")]
    pub scaledobject: PathBuf,
    /// Where to write `minutes.csv` and `chart.svg` [default: simulate-<trace name>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Messages one ready pod completes per second; overrides the ScaledObject's
    /// `blend-scaler.io/messages-per-second-per-replica` annotation.
    #[arg(long, value_name = "RATE")]
    pub messages_per_second_per_replica: Option<f64>,
    /// Seconds from a pod's creation until it takes work; overrides the
    /// `blend-scaler.io/pod-start-seconds` annotation [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub pod_start_seconds: Option<u64>,
    /// The backlog-age objective: minutes in which the oldest message is older are counted.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub objective: Duration,
    /// blend-scaler's `--refresh-interval`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub refresh_interval: Duration,
}

/// Values given on the command line that override the ScaledObject.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub messages_per_second_per_replica: Option<f64>,
    pub pod_start_seconds: Option<u64>,
    pub refresh_interval: Option<u64>,
}

/// A ScaledObject read for simulation.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// `namespace/name`.
    pub name: String,
    /// `external` or `external-push`.
    pub trigger_type: String,
    pub plan: Plan,
    pub settings: Settings,
    /// Parts of the ScaledObject the model does not follow.
    pub notes: Vec<String>,
}

impl Scenario {
    /// Reads the first ScaledObject with an `external` or `external-push` trigger.
    pub fn from_yaml(text: &str, overrides: &Overrides) -> anyhow::Result<Self> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc =
                Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
            if doc.get("kind").and_then(Value::as_str) != Some("ScaledObject") {
                continue;
            }
            let triggers = doc
                .get("spec")
                .and_then(|s| s.get("triggers"))
                .and_then(Value::as_sequence);
            let Some(trigger) = triggers.into_iter().flatten().find(|t| {
                matches!(
                    t.get("type").and_then(Value::as_str),
                    Some("external" | "external-push")
                )
            }) else {
                continue;
            };
            return Self::from_document(&doc, trigger, overrides);
        }
        bail!("no ScaledObject with an `external` or `external-push` trigger found")
    }

    fn from_document(doc: &Value, trigger: &Value, overrides: &Overrides) -> anyhow::Result<Self> {
        let meta = doc.get("metadata");
        let text = |v: Option<&Value>, default: &str| {
            v.and_then(Value::as_str).unwrap_or(default).to_string()
        };
        let name = format!(
            "{}/{}",
            text(meta.and_then(|m| m.get("namespace")), "default"),
            text(meta.and_then(|m| m.get("name")), "(unnamed)")
        );
        let trigger_type = text(trigger.get("type"), "external");

        // The trigger's metadata, through the same parser `check` and `serve` use.
        let mut pairs = std::collections::HashMap::new();
        let mut problems = Vec::new();
        if let Some(map) = trigger.get("metadata").and_then(Value::as_mapping) {
            for (k, v) in map {
                match (k.as_str(), v) {
                    (Some(k), Value::String(s)) => {
                        pairs.insert(k.to_string(), s.clone());
                    }
                    (Some(k), _) => problems.push(format!(
                        "metadata key `{k}`: KEDA takes only strings; quote the value"
                    )),
                    (None, _) => problems.push("a metadata key is not a string".into()),
                }
            }
        }
        let plan = match metadata::parse(&pairs, Source::File, &Credentials::default()) {
            Ok(plan) if problems.is_empty() => plan,
            result => {
                if let Err(errs) = result {
                    problems.extend(errs.0.iter().map(ToString::to_string));
                }
                bail!(
                    "the {trigger_type} trigger of {name} is invalid (see `blend-scaler check`):\n  {}",
                    problems.join("\n  ")
                );
            }
        };

        let spec = doc.get("spec");
        let mut notes = Vec::new();
        let keda_default = Keda::default();
        let keda = Keda {
            polling_interval: whole(spec, "pollingInterval", keda_default.polling_interval)?,
            cooldown_period: whole(spec, "cooldownPeriod", keda_default.cooldown_period)?,
            min_replicas: whole(spec, "minReplicaCount", keda_default.min_replicas.into())? as u32,
            max_replicas: whole(spec, "maxReplicaCount", keda_default.max_replicas.into())? as u32,
        };
        if keda.min_replicas > keda.max_replicas {
            bail!(
                "spec.minReplicaCount {} is more than spec.maxReplicaCount {}",
                keda.min_replicas,
                keda.max_replicas
            );
        }
        let behavior = spec
            .and_then(|s| s.get("advanced"))
            .and_then(|a| a.get("horizontalPodAutoscalerConfig"))
            .and_then(|h| h.get("behavior"))
            .filter(|b| !b.is_null());
        let hpa_default = Hpa::default();
        let hpa = Hpa {
            behavior: behavior
                .map(|b| Behavior::from_yaml(b, hpa_default.downscale_stabilization))
                .transpose()
                .map_err(|e| anyhow::anyhow!("spec.advanced.horizontalPodAutoscalerConfig.{e}"))?,
            ..hpa_default
        };
        for dir in ["scaleUp", "scaleDown"] {
            if behavior
                .and_then(|b| b.get(dir))
                .and_then(|d| d.get("tolerance"))
                .is_some()
            {
                notes.push(format!(
                    "behavior.{dir}.tolerance (alpha) is not modelled; the controller's 10% is used"
                ));
            }
        }
        if spec.and_then(|s| s.get("fallback")).is_some() {
            notes.push("fallback is not modelled: the simulated upstreams never fail".into());
        }
        let others = spec
            .and_then(|s| s.get("triggers"))
            .and_then(Value::as_sequence)
            .map_or(0, |t| t.len().saturating_sub(1));
        if others > 0 {
            notes.push(format!(
                "{others} other trigger(s) of this ScaledObject are left out of both configurations"
            ));
        }

        let annotations = meta.and_then(|m| m.get("annotations"));
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
        let rate = match (
            overrides.messages_per_second_per_replica,
            annotation(RATE_ANNOTATION),
            plan.policy,
        ) {
            (Some(r), _, _) => r,
            (None, Some(text), _) => text.trim().parse().map_err(|_| {
                anyhow::anyhow!("annotation {RATE_ANNOTATION}: `{text}` is not a number")
            })?,
            (
                None,
                None,
                Policy::DrainTime {
                    messages_per_second_per_replica,
                    ..
                },
            ) => messages_per_second_per_replica,
            (None, None, _) => bail!(
                "how fast does one pod work? Give --messages-per-second-per-replica or the \
                 annotation {RATE_ANNOTATION}"
            ),
        };
        if !(rate.is_finite() && rate > 0.0) {
            bail!("messages per second per replica must be greater than 0, got {rate}");
        }
        let start = match (overrides.pod_start_seconds, annotation(START_ANNOTATION)) {
            (Some(s), _) => s,
            (None, Some(text)) => text.trim().parse().map_err(|_| {
                anyhow::anyhow!("annotation {START_ANNOTATION}: `{text}` is not whole seconds")
            })?,
            (None, None) => DEFAULT_POD_START_SECONDS,
        };
        let blend = BlendSettings {
            refresh_interval: overrides.refresh_interval.unwrap_or(5),
            push: trigger_type == "external-push",
        };
        Ok(Self {
            name,
            trigger_type,
            plan,
            settings: Settings {
                keda,
                hpa,
                workload: Workload {
                    messages_per_second_per_replica: rate,
                    pod_start_seconds: start,
                },
                blend,
            },
            notes,
        })
    }

    /// `blend-scaler (drainTime)`.
    pub fn blend_label(&self) -> String {
        let policy = match self.plan.policy {
            Policy::Max => "max",
            Policy::Sum => "sum",
            Policy::DrainTime { .. } => "drainTime",
        };
        format!("blend-scaler ({policy})")
    }
}

/// A whole number field of `parent`, or `default` when absent.
fn whole(parent: Option<&Value>, key: &str, default: u64) -> anyhow::Result<u64> {
    match parent.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= u64::from(u32::MAX))
            .with_context(|| format!("`{key}` must be a whole number >= 0")),
    }
}

pub const BUILTIN_LABEL: &str = "built-in triggers";

/// Everything a simulation produces, before anything is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub outcome: Outcome,
    pub builtin: Summary,
    pub blend: Summary,
    /// The text printed to stdout.
    pub text: String,
    pub csv: String,
    pub svg: String,
}

/// Simulates and renders: a pure function of its inputs.
pub fn report(
    trace: &Trace,
    scenario: &Scenario,
    trace_name: &str,
    objective: u64,
) -> anyhow::Result<Report> {
    let outcome = model::simulate(trace, &scenario.plan, &scenario.settings);
    let builtin = Summary::of(&outcome.builtin, objective);
    let blend = Summary::of(&outcome.blend, objective);
    let blend_label = scenario.blend_label();
    let s = &scenario.settings;
    let local = |t: u64| {
        trace
            .at(t)
            .with_timezone(&trace.timezone)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    let mut text = format!(
        "{} ({}) on {trace_name}: {} to {} {}\n\
         pods: {} messages/s each, ready {} s after creation; KEDA: polling {} s, cooldown {} s, \
         replicas {}..{}; HPA: {}; blend-scaler refresh {} s\n",
        scenario.name,
        scenario.trigger_type,
        local(0),
        local(trace.seconds() as u64),
        trace.timezone,
        s.workload.messages_per_second_per_replica,
        s.workload.pod_start_seconds,
        s.keda.polling_interval,
        s.keda.cooldown_period,
        s.keda.min_replicas,
        s.keda.max_replicas,
        s.hpa.describe(),
        if s.blend.push {
            1
        } else {
            s.blend.refresh_interval
        },
    );
    for note in &scenario.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text.push('\n');
    text.push_str(&report::table(
        &[
            (BUILTIN_LABEL, builtin.clone()),
            (&blend_label, blend.clone()),
        ],
        objective,
    ));
    for (label, run) in [
        (BUILTIN_LABEL, &outcome.builtin),
        (&blend_label, &outcome.blend),
    ] {
        if run.metric_errors > 0 {
            text.push_str(&format!(
                "note: {label}: {} HPA syncs got no metric\n",
                run.metric_errors
            ));
        }
    }
    let csv = report::csv(trace, &outcome);
    let svg = report::chart(
        trace,
        &outcome,
        (BUILTIN_LABEL, &blend_label),
        &format!("{} on {trace_name}", scenario.name),
        objective,
    )
    .map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
    Ok(Report {
        outcome,
        builtin,
        blend,
        text,
        csv,
        svg,
    })
}

/// Reads the files, simulates, and renders; writes nothing.
pub fn report_for_files(args: &SimulateArgs) -> anyhow::Result<Report> {
    let trace_text = std::fs::read_to_string(&args.trace)
        .with_context(|| format!("reading {}", args.trace.display()))?;
    let trace =
        Trace::parse(&trace_text).map_err(|e| anyhow::anyhow!("{}: {e}", args.trace.display()))?;
    let yaml = std::fs::read_to_string(&args.scaledobject)
        .with_context(|| format!("reading {}", args.scaledobject.display()))?;
    let overrides = Overrides {
        messages_per_second_per_replica: args.messages_per_second_per_replica,
        pod_start_seconds: args.pod_start_seconds,
        refresh_interval: Some(args.refresh_interval.as_secs().max(1)),
    };
    let scenario = Scenario::from_yaml(&yaml, &overrides)
        .with_context(|| args.scaledobject.display().to_string())?;
    report(
        &trace,
        &scenario,
        &file_name(&args.trace),
        args.objective.as_secs(),
    )
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// `blend-scaler simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let report = report_for_files(&args)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .trace
            .file_stem()
            .map_or("trace".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("simulate-{stem}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let csv = out.join("minutes.csv");
    let svg = out.join("chart.svg");
    std::fs::write(&csv, &report.csv).with_context(|| format!("writing {}", csv.display()))?;
    std::fs::write(&svg, &report.svg).with_context(|| format!("writing {}", svg.display()))?;
    print!("{}", report.text);
    println!("\nwrote {} and {}", csv.display(), svg.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> (Trace, Scenario) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let trace =
            Trace::parse(&std::fs::read_to_string(dir.join(format!("{name}.csv"))).unwrap())
                .unwrap();
        let yaml = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
        (
            trace,
            Scenario::from_yaml(&yaml, &Overrides::default()).unwrap(),
        )
    }

    const SHIPPED: [&str; 3] = ["diurnal", "spiky", "business-hours"];

    #[test]
    fn the_same_trace_always_gives_byte_identical_outputs() {
        let (trace, scenario) = shipped("spiky");
        let a = report(&trace, &scenario, "spiky.csv", 120).unwrap();
        let b = report(&trace, &scenario, "spiky.csv", 120).unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(a.csv, b.csv);
        assert_eq!(a.svg, b.svg);
        assert_eq!(a.outcome, b.outcome);
        assert!(a.svg.starts_with("<svg") && a.svg.contains("blend-scaler (drainTime)"));
        assert_eq!(a.csv.lines().count(), 1 + 24 * 60);
    }

    #[test]
    fn on_the_shipped_traces_drain_time_uses_fewer_replica_minutes_at_no_worse_p95_age() {
        let mut wins = Vec::new();
        for name in SHIPPED {
            let (trace, scenario) = shipped(name);
            assert!(matches!(scenario.plan.policy, Policy::DrainTime { .. }));
            let r = report(&trace, &scenario, name, 120).unwrap();
            let (b, d) = (&r.builtin, &r.blend);
            if d.replica_minutes < b.replica_minutes && d.p95_age <= b.p95_age {
                wins.push(name);
            }
            // Every message is accounted for: the same arrivals on both sides.
            let total = |w: &[u64]| w.iter().sum::<u64>();
            assert_eq!(
                total(&r.outcome.builtin.waits),
                total(&r.outcome.blend.waits)
            );
        }
        assert!(wins.len() >= 2, "drainTime wins only on {wins:?}");
    }

    #[test]
    fn the_shipped_scaledobjects_give_their_spec_and_annotations_to_the_model() {
        let (trace, diurnal) = shipped("diurnal");
        assert_eq!(trace.timezone, chrono_tz::Europe::London);
        assert_eq!(diurnal.name, "production/order-processor");
        assert_eq!(diurnal.trigger_type, "external");
        let s = &diurnal.settings;
        assert_eq!(s.workload.messages_per_second_per_replica, 5.0);
        assert_eq!(s.workload.pod_start_seconds, 30);
        assert_eq!((s.keda.min_replicas, s.keda.max_replicas), (1, 60));
        assert!(!s.blend.push);
        let (_, spiky) = shipped("spiky");
        assert!(spiky.settings.blend.push);
        assert_eq!(spiky.settings.keda.min_replicas, 0);
        assert_eq!(spiky.blend_label(), "blend-scaler (drainTime)");
    }

    const MINIMAL: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
spec:
  scaleTargetRef: {name: worker}
  pollingInterval: 10
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 60
          policies: [{type: Pods, value: 1, periodSeconds: 60}]
  triggers:
    - type: cpu
      metadata: {value: "50"}
    - type: external
      metadata:
        queueName: q
        namespace: ns
        messageCount: "10"
"#;

    #[test]
    fn spec_fields_flags_and_what_is_not_modelled_are_read() {
        let overrides = Overrides {
            messages_per_second_per_replica: Some(7.5),
            pod_start_seconds: Some(45),
            refresh_interval: Some(2),
        };
        let s = Scenario::from_yaml(MINIMAL, &overrides).unwrap();
        assert_eq!(s.name, "default/worker");
        assert_eq!(s.settings.keda.polling_interval, 10);
        assert_eq!(s.settings.keda.cooldown_period, 300);
        let behavior = s.settings.hpa.behavior.as_ref().unwrap();
        assert_eq!(behavior.scale_down.stabilization_window, 60);
        assert_eq!(behavior.scale_up, Behavior::default_scale_up());
        assert_eq!(s.settings.workload.messages_per_second_per_replica, 7.5);
        assert_eq!(s.settings.workload.pod_start_seconds, 45);
        assert_eq!(s.settings.blend.refresh_interval, 2);
        assert_eq!(s.blend_label(), "blend-scaler (max)");
        let notes = s.notes.join("\n");
        assert!(notes.contains("1 other trigger"), "{notes}");
    }

    #[test]
    fn scenario_errors_say_what_is_wrong() {
        let none = Overrides::default();
        let err = |yaml: &str| format!("{:#}", Scenario::from_yaml(yaml, &none).unwrap_err());
        // Without drainTime, nothing says how fast a pod works.
        let e = err(MINIMAL);
        assert!(e.contains("--messages-per-second-per-replica"), "{e}");
        let e = err(&MINIMAL.replace("type: external\n", "type: prometheus\n"));
        assert!(e.contains("no ScaledObject"), "{e}");
        let e = err(&MINIMAL.replace("messageCount: \"10\"", "messageCount: \"ten\""));
        assert!(e.contains("`messageCount`") && e.contains("invalid"), "{e}");
        let e = err(&MINIMAL.replace("pollingInterval: 10", "pollingInterval: soon"));
        assert!(e.contains("pollingInterval"), "{e}");
        let e = err(&MINIMAL.replace("messageCount: \"10\"", "messageCount: 10"));
        assert!(e.contains("quote the value"), "{e}");
    }

    /// An idle hour with 200 messages arriving over 20 s, 10 minutes in.
    fn wake_up_trace() -> Trace {
        let mut csv = String::from("time,messages_per_second,requests_per_second\n");
        csv.push_str("2026-06-01T00:00:00,0,0\n2026-06-01T00:10:00,10,0\n");
        csv.push_str("2026-06-01T00:10:20,0,0\n2026-06-01T01:00:00,0,0\n");
        Trace::parse(&csv).unwrap()
    }

    #[test]
    fn external_push_wakes_the_deployment_sooner_than_polling() {
        let yaml = MINIMAL.replace("pollingInterval: 10", "pollingInterval: 30");
        let overrides = Overrides {
            messages_per_second_per_replica: Some(5.0),
            ..Overrides::default()
        };
        let poll = Scenario::from_yaml(&yaml, &overrides).unwrap();
        let push = Scenario::from_yaml(&yaml.replace("external\n", "external-push\n"), &overrides)
            .unwrap();
        assert!(push.settings.blend.push);
        let trace = wake_up_trace();
        let first = |s: &Scenario| {
            let out = model::simulate(&trace, &s.plan, &s.settings);
            let at = |run: &model::Run| run.replicas.iter().position(|&r| r > 0).unwrap();
            (at(&out.builtin), at(&out.blend))
        };
        let (builtin, polled) = first(&poll);
        let (_, pushed) = first(&push);
        // The burst starts at 600 s: the polls at 600 s see nothing yet; push sees the
        // first refresh after it.
        assert_eq!(builtin, 630);
        assert!(polled >= 630, "{polled}");
        assert!((601..=603).contains(&pushed), "{pushed}");
        // Scaled back to zero after the cooldown: nothing active for 300 s.
        let out = model::simulate(&trace, &push.plan, &push.settings);
        assert_eq!(out.blend.replicas.last(), Some(&0));
        assert_eq!(out.builtin.replicas.last(), Some(&0));
    }
}
