//! The ScaledObjects a simulation replays: blend-scaler's (`--scaledobject`) and, with
//! `--baseline`, the team's current one with KEDA's built-in triggers. Both are read through
//! the one manifest walk (`crate::scaledobject`).

use anyhow::{Context, bail};
use serde_yaml::Value;

use crate::cron::{CronPlan, Window};
use crate::metadata::{self, Credentials, Origin, Plan, Policy};
use crate::scaledobject::{self, Document, Trigger};

use super::hpa::{Behavior, Hpa};
use super::model::{BlendSettings, BuiltIns, Keda, Settings, Workload};

/// The annotation giving the messages one ready pod completes per second.
pub const RATE_ANNOTATION: &str = "blend-scaler.io/messages-per-second-per-replica";
/// The annotation giving the seconds from a pod's creation until it takes work.
pub const START_ANNOTATION: &str = "blend-scaler.io/pod-start-seconds";
pub const DEFAULT_POD_START_SECONDS: u64 = 30;

/// Values given on the command line that override the ScaledObjects.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub messages_per_second_per_replica: Option<f64>,
    pub pod_start_seconds: Option<u64>,
    pub refresh_interval: Option<u64>,
    /// `pollingInterval` of both ScaledObjects.
    pub polling_interval: Option<u64>,
    /// The HPA controller's `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_period: Option<u64>,
}

/// A ScaledObject read for simulation: blend-scaler's side, and the built-in side (the same
/// keys and spec, or the `--baseline` ScaledObject).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// `namespace/name`.
    pub name: String,
    /// `external` or `external-push`.
    pub trigger_type: String,
    pub plan: Plan,
    pub settings: Settings,
    pub builtin: BuiltIns,
    pub builtin_settings: Settings,
    /// `namespace/name` of the baseline, when one was given.
    pub baseline: Option<String>,
    /// Parts of the ScaledObjects the model does not follow.
    pub notes: Vec<String>,
}

impl Scenario {
    /// Reads the first ScaledObject with an `external` or `external-push` trigger; the
    /// built-in side takes the same keys and spec.
    pub fn from_yaml(text: &str, overrides: &Overrides) -> anyhow::Result<Self> {
        for doc in scaledobject::documents(text)? {
            if doc.kind != "ScaledObject" {
                continue;
            }
            let triggers = doc.triggers();
            let Some(trigger) = triggers.iter().find(|t| t.is_external()) else {
                continue;
            };
            return Self::from_document(&doc, trigger, triggers.len(), overrides);
        }
        bail!("no ScaledObject with an `external` or `external-push` trigger found")
    }

    fn from_document(
        doc: &Document,
        trigger: &Trigger,
        trigger_count: usize,
        overrides: &Overrides,
    ) -> anyhow::Result<Self> {
        let name = format!("{}/{}", doc.namespace, doc.name);
        let trigger_type = trigger.kind.to_string();

        // The trigger's metadata, through the same parser `check` and `serve` use.
        let mut problems = trigger.problems.clone();
        let plan = match metadata::parse(&trigger.metadata, Origin::File, &Credentials::default()) {
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

        let mut notes = Vec::new();
        let (keda, hpa) = spec_settings(doc, overrides, &mut notes)?;
        if trigger_count > 1 {
            notes.push(format!(
                "{} other trigger(s) of this ScaledObject are left out of both configurations",
                trigger_count - 1
            ));
        }

        let rate = match (
            overrides.messages_per_second_per_replica,
            doc.annotation(RATE_ANNOTATION),
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
        let start = match (
            overrides.pod_start_seconds,
            doc.annotation(START_ANNOTATION),
        ) {
            (Some(s), _) => s,
            (None, Some(text)) => text.trim().parse().map_err(|_| {
                anyhow::anyhow!("annotation {START_ANNOTATION}: `{text}` is not whole seconds")
            })?,
            (None, None) => DEFAULT_POD_START_SECONDS,
        };
        let settings = Settings {
            keda,
            hpa,
            workload: Workload {
                messages_per_second_per_replica: rate,
                pod_start_seconds: start,
            },
            blend: BlendSettings {
                refresh_interval: overrides.refresh_interval.unwrap_or(5),
                push: trigger_type == "external-push",
            },
        };
        Ok(Self {
            name,
            trigger_type,
            builtin: BuiltIns::from_plan(&plan),
            builtin_settings: settings.clone(),
            plan,
            settings,
            baseline: None,
            notes,
        })
    }

    /// Replaces the built-in side with the first ScaledObject of `text` that has a built-in
    /// `azure-servicebus`, `prometheus` or `cron` trigger: its triggers, spec and behavior,
    /// worked by the same pods.
    pub fn with_baseline(mut self, text: &str, overrides: &Overrides) -> anyhow::Result<Self> {
        const BUILT_IN: [&str; 3] = ["azure-servicebus", "prometheus", "cron"];
        let doc = scaledobject::documents(text)?
            .into_iter()
            .find(|d| {
                d.kind == "ScaledObject" && d.triggers().iter().any(|t| BUILT_IN.contains(&t.kind))
            })
            .context(
                "no ScaledObject with an azure-servicebus, prometheus or cron trigger found",
            )?;
        let mut notes = Vec::new();
        let (keda, hpa) = spec_settings(&doc, overrides, &mut notes)?;
        let mut builtin = BuiltIns::default();
        for t in doc.triggers() {
            let at = format!("spec.triggers[{}] ({})", t.position - 1, t.kind);
            if !t.problems.is_empty() {
                bail!("{at}: {}", t.problems.join("; "));
            }
            match t.kind {
                "azure-servicebus" => {
                    if builtin.servicebus.is_some() {
                        notes.push(format!(
                            "{at}: only the first azure-servicebus trigger is modelled"
                        ));
                        continue;
                    }
                    builtin.servicebus = Some((
                        number(&t, "messageCount", Some(5.0), &at)?,
                        number(&t, "activationMessageCount", Some(0.0), &at)?,
                    ));
                }
                "prometheus" => {
                    if builtin.prometheus.is_some() {
                        notes.push(format!(
                            "{at}: only the first prometheus trigger is modelled"
                        ));
                        continue;
                    }
                    builtin.prometheus = Some((
                        number(&t, "threshold", None, &at)?,
                        number(&t, "activationThreshold", Some(0.0), &at)?,
                    ));
                }
                "cron" => builtin.cron.push(cron(&t, &at)?),
                other => notes.push(format!(
                    "baseline {at}: a `{other}` trigger is not modelled and is left out"
                )),
            }
        }
        self.baseline = Some(format!("{}/{}", doc.namespace, doc.name));
        self.builtin = builtin;
        self.builtin_settings = Settings {
            keda,
            hpa,
            ..self.settings.clone()
        };
        self.notes
            .extend(notes.into_iter().map(|n| format!("baseline: {n}")));
        Ok(self)
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

/// KEDA's and the HPA's settings from a ScaledObject's `spec`, with the overrides.
fn spec_settings(
    doc: &Document,
    overrides: &Overrides,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Keda, Hpa)> {
    let spec = doc.spec();
    let d = Keda::default();
    let keda = Keda {
        polling_interval: match overrides.polling_interval {
            Some(p) => p,
            None => whole(spec, "pollingInterval", d.polling_interval)?,
        },
        cooldown_period: whole(spec, "cooldownPeriod", d.cooldown_period)?,
        min_replicas: whole(spec, "minReplicaCount", d.min_replicas.into())? as u32,
        max_replicas: whole(spec, "maxReplicaCount", d.max_replicas.into())? as u32,
    };
    if keda.polling_interval == 0 {
        bail!("spec.pollingInterval must be at least 1 second");
    }
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
    let d = Hpa::default();
    let hpa = Hpa {
        sync_period: overrides.hpa_sync_period.unwrap_or(d.sync_period),
        behavior: behavior
            .map(|b| Behavior::from_yaml(b, d.downscale_stabilization))
            .transpose()
            .map_err(|e| anyhow::anyhow!("spec.advanced.horizontalPodAutoscalerConfig.{e}"))?,
        ..d
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
    Ok((keda, hpa))
}

/// A whole number field of `parent`, or `default` when absent.
fn whole(parent: Option<&Value>, key: &str, default: u64) -> anyhow::Result<u64> {
    match parent.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= u64::from(u32::MAX))
            .with_context(|| format!("spec.{key} must be a whole number >= 0")),
    }
}

/// A built-in trigger's number, as KEDA parses it.
fn number(t: &Trigger, key: &str, default: Option<f64>, at: &str) -> anyhow::Result<f64> {
    match (t.metadata.get(key).map(|v| v.trim()), default) {
        (None | Some(""), Some(d)) => Ok(d),
        (None | Some(""), None) => bail!("{at}: metadata.{key} is required"),
        (Some(text), _) => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .with_context(|| format!("{at}: metadata.{key} `{text}` is not a number >= 0")),
    }
}

/// A KEDA `cron` trigger: one window.
fn cron(t: &Trigger, at: &str) -> anyhow::Result<CronPlan> {
    let get = |k: &str| {
        t.metadata
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{at}: metadata.{k} is required"))
    };
    let tz = get("timezone")?;
    let timezone = tz
        .parse()
        .map_err(|_| anyhow::anyhow!("{at}: metadata.timezone `{tz}` is not an IANA time zone"))?;
    let replicas = get("desiredReplicas")?;
    let replicas = replicas.parse().map_err(|_| {
        anyhow::anyhow!("{at}: metadata.desiredReplicas `{replicas}` is not a whole number")
    })?;
    let window = Window::new(get("start")?, get("end")?, replicas)
        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    Ok(CronPlan {
        timezone,
        windows: vec![window],
    })
}
