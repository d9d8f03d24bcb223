//! The HPA controller's replica rule, as `kube-controller-manager` applies it to the HPA KEDA
//! creates for a ScaledObject (kubernetes `pkg/controller/podautoscaler/horizontal.go`,
//! `reconcileAutoscaler` and the functions it calls; the defaults of
//! `pkg/apis/autoscaling/v2/defaults.go`). See `docs/simulate.md`, "The HPA".
//!
//! Two paths, as in the controller:
//! - **no `behavior`** (the legacy path): the highest recommendation of the last
//!   `--horizontal-pod-autoscaler-downscale-stabilization` (5 min) and a scale-up limit of
//!   `max(2 x current, 4)` per sync;
//! - **`behavior` set**: the API server fills what is missing with the defaults, then each sync
//!   stabilizes (the lowest recommendation of the scale-up window, the highest of the
//!   scale-down window) and limits the change by the policies, counting the scale events of
//!   each policy's last `periodSeconds` (the event-history rule).
//!
//! Times are whole seconds of the simulation's clock.

use serde_yaml::Value;

/// An `AverageValue` metric as the HPA reads it: KEDA's value and the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    pub value: f64,
    pub target: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    Pods,
    Percent,
}

/// One `behavior.scaleUp|scaleDown.policies[]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScalingPolicy {
    pub(crate) kind: PolicyKind,
    pub(crate) value: u32,
    pub(crate) period_seconds: u64,
}

/// `selectPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Select {
    Max,
    Min,
    Disabled,
}

/// One direction's rules, with the API server's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    pub(crate) stabilization_window: u64,
    pub(crate) select: Select,
    pub(crate) policies: Vec<ScalingPolicy>,
}

/// `spec.behavior` of the HPA (KEDA copies it from
/// `advanced.horizontalPodAutoscalerConfig.behavior`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Behavior {
    pub(crate) scale_up: Rules,
    pub(crate) scale_down: Rules,
}

/// The API server's limits (`pkg/apis/autoscaling/validation`).
const MAX_STABILIZATION_WINDOW: u64 = 3600;
const MAX_PERIOD_SECONDS: u64 = 1800;

impl Behavior {
    /// The scale-up rules the API server fills in: 4 pods or 100% per 15 s, whichever is
    /// more, no stabilization.
    pub(crate) fn default_scale_up() -> Rules {
        Rules {
            stabilization_window: 0,
            select: Select::Max,
            policies: vec![
                ScalingPolicy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_seconds: 15,
                },
                ScalingPolicy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// The scale-down rules the API server fills in: 100% per 15 s; the window is the
    /// controller's `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub(crate) fn default_scale_down(downscale_stabilization: u64) -> Rules {
        Rules {
            stabilization_window: downscale_stabilization,
            select: Select::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            }],
        }
    }

    /// Reads `behavior` as the API server defaults and validates it: a missing direction gets
    /// the defaults, and each missing field of a given direction its default. Errors name the
    /// field below `behavior`.
    pub(crate) fn from_yaml(value: &Value, downscale_stabilization: u64) -> Result<Self, String> {
        if !value.is_mapping() {
            return Err("behavior: must be a mapping".into());
        }
        Ok(Self {
            scale_up: rules(value.get("scaleUp"), "scaleUp", Self::default_scale_up())?,
            scale_down: rules(
                value.get("scaleDown"),
                "scaleDown",
                Self::default_scale_down(downscale_stabilization),
            )?,
        })
    }

    /// A one-line description, as the report prints it.
    pub(crate) fn describe(&self) -> String {
        format!(
            "scaleUp {}; scaleDown {}",
            self.scale_up.describe(),
            self.scale_down.describe()
        )
    }
}

impl Rules {
    pub(crate) fn describe(&self) -> String {
        let select = match self.select {
            Select::Max => "Max",
            Select::Min => "Min",
            Select::Disabled => return "Disabled".into(),
        };
        let policies: Vec<String> = self
            .policies
            .iter()
            .map(|p| {
                let unit = match p.kind {
                    PolicyKind::Pods => " pods",
                    PolicyKind::Percent => "%",
                };
                format!("{}{unit}/{}s", p.value, p.period_seconds)
            })
            .collect();
        format!(
            "window {}s, {select} of [{}]",
            self.stabilization_window,
            policies.join(", ")
        )
    }

    fn longest_period(&self) -> u64 {
        self.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

fn rules(value: Option<&Value>, dir: &str, defaults: Rules) -> Result<Rules, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(defaults);
    };
    if !value.is_mapping() {
        return Err(format!("behavior.{dir}: must be a mapping"));
    }
    let field = |name: &str| value.get(name).filter(|v| !v.is_null());
    let whole = |name: &str, v: &Value, max: u64| -> Result<u64, String> {
        v.as_u64()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("behavior.{dir}.{name}: must be a whole number 0..={max}"))
    };
    let stabilization_window = match field("stabilizationWindowSeconds") {
        None => defaults.stabilization_window,
        Some(v) => whole("stabilizationWindowSeconds", v, MAX_STABILIZATION_WINDOW)?,
    };
    let select = match field("selectPolicy") {
        None => defaults.select,
        Some(v) => match v.as_str() {
            Some("Max") => Select::Max,
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => {
                return Err(format!(
                    "behavior.{dir}.selectPolicy: must be Max, Min or Disabled"
                ));
            }
        },
    };
    let policies = match field("policies") {
        None => defaults.policies,
        Some(v) => {
            let list = v
                .as_sequence()
                .ok_or_else(|| format!("behavior.{dir}.policies: must be a list"))?;
            if list.is_empty() {
                return Err(format!(
                    "behavior.{dir}.policies: must specify at least one policy"
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| policy(p, &format!("behavior.{dir}.policies[{i}]")))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Rules {
        stabilization_window,
        select,
        policies,
    })
}

fn policy(v: &Value, path: &str) -> Result<ScalingPolicy, String> {
    let kind = match v.get("type").and_then(Value::as_str) {
        Some("Pods") => PolicyKind::Pods,
        Some("Percent") => PolicyKind::Percent,
        _ => return Err(format!("{path}.type: must be Pods or Percent")),
    };
    let value = v
        .get("value")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0 && n <= u64::from(i32::MAX as u32))
        .ok_or_else(|| format!("{path}.value: must be a whole number greater than 0"))?
        as u32;
    let period_seconds = v
        .get("periodSeconds")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0 && n <= MAX_PERIOD_SECONDS)
        .ok_or_else(|| format!("{path}.periodSeconds: must be a whole number 1..=1800"))?;
    Ok(ScalingPolicy {
        kind,
        value,
        period_seconds,
    })
}

/// The controller's flags and the HPA's `behavior`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Hpa {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub(crate) sync_period: u64,
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub(crate) tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`, used without `behavior` and as
    /// the default scale-down window with it.
    pub(crate) downscale_stabilization: u64,
    /// `None`: the legacy path.
    pub(crate) behavior: Option<Behavior>,
}

impl Default for Hpa {
    fn default() -> Self {
        Self {
            sync_period: 15,
            tolerance: 0.1,
            downscale_stabilization: 300,
            behavior: None,
        }
    }
}

impl Hpa {
    /// A one-line description, as the report prints it.
    pub(crate) fn describe(&self) -> String {
        let behavior = match &self.behavior {
            None => format!(
                "no behavior (scale-down window {} s, scale-up limit max(2x, 4))",
                self.downscale_stabilization
            ),
            Some(b) => b.describe(),
        };
        format!(
            "sync {} s, tolerance {}%, {behavior}",
            self.sync_period,
            self.tolerance * 100.0
        )
    }
}

/// The HPA's replica count for one `AverageValue` metric over `current` pods, in the HPA's
/// milli-units (`GetExternalPerPodMetricReplicas`): within the tolerance it stays; otherwise
/// `ceil(value / target)`.
pub fn proposal(metric: Metric, current: u32, tolerance: f64) -> u32 {
    // KEDA hands the HPA milli-quantities, truncated (`int64(value * 1000)`).
    let value = (metric.value * 1000.0) as i64;
    let target = ((metric.target * 1000.0) as i64).max(1);
    let ratio = value as f64 / (target as f64 * f64::from(current.max(1)));
    if (1.0 - ratio).abs() <= tolerance {
        return current;
    }
    let value = value.max(0);
    let r = value / target + i64::from(value % target != 0);
    r.min(i64::from(i32::MAX)) as u32
}

#[derive(Clone, Copy, Debug)]
struct Recommendation {
    replicas: u32,
    at: u64,
}

#[derive(Clone, Copy, Debug)]
struct ScaleEvent {
    change: u32,
    at: u64,
    outdated: bool,
}

/// The controller's memory of one HPA between syncs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Controller {
    /// `None` until the first sync, which records the current count as a recommendation
    /// (`recordInitialRecommendation`).
    recommendations: Option<Vec<Recommendation>>,
    scale_up_events: Vec<ScaleEvent>,
    scale_down_events: Vec<ScaleEvent>,
}

/// The replica changes of `events` in the last `period` seconds (`getReplicasChangePerPeriod`:
/// strictly after `now - period`).
fn change_in_period(events: &[ScaleEvent], period: u64, t: u64) -> i64 {
    events
        .iter()
        .filter(|e| e.at + period > t)
        .map(|e| i64::from(e.change))
        .sum()
}

impl Controller {
    /// One sync of an HPA with `min..=max` replicas (KEDA sets `min` to
    /// `max(minReplicaCount, 1)`): the replica count it leaves the target at, or `None` when
    /// it could not compute one from the metrics (and so changes nothing).
    pub(crate) fn sync(
        &mut self,
        t: u64,
        current: u32,
        metrics: &[Result<Metric, ()>],
        hpa: &Hpa,
        min: u32,
        max: u32,
    ) -> Option<u32> {
        self.recommendations.get_or_insert_with(|| {
            vec![Recommendation {
                replicas: current,
                at: t,
            }]
        });
        let desired = if current == 0 && min != 0 {
            // Scaling is disabled while the target is at zero: KEDA wakes it.
            return Some(0);
        } else if current > max {
            max
        } else if current < min {
            min
        } else {
            let mut replicas = 0;
            let mut invalid = 0;
            for m in metrics {
                match m {
                    Ok(m) => replicas = replicas.max(proposal(*m, current, hpa.tolerance)),
                    Err(()) => invalid += 1,
                }
            }
            // With every metric missing, or some missing and the rest asking to scale down,
            // the controller gives up on this sync.
            if invalid >= metrics.len() || (invalid > 0 && replicas < current) {
                return None;
            }
            match &hpa.behavior {
                None => self.legacy(t, current, replicas, hpa, min, max),
                Some(b) => self.with_behavior(t, current, replicas, b, min, max),
            }
        };
        if desired != current {
            self.store_scale_event(hpa.behavior.as_ref(), t, current, desired);
        }
        Some(desired)
    }

    /// `normalizeDesiredReplicas`: no `behavior`.
    fn legacy(&mut self, t: u64, current: u32, desired: u32, hpa: &Hpa, min: u32, max: u32) -> u32 {
        // stabilizeRecommendation: the highest recommendation not older than the window
        // (`!Before(cutoff)`: one exactly as old counts), this one included.
        let recs = self.recommendations.get_or_insert_with(Vec::new);
        let window = hpa.downscale_stabilization;
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in recs.iter().enumerate() {
            if r.at + window < t {
                old = Some(i);
            } else {
                stabilized = stabilized.max(r.replicas);
            }
        }
        replace_or_push(
            recs,
            old,
            Recommendation {
                replicas: desired,
                at: t,
            },
        );
        // convertDesiredReplicasWithRules.
        let scale_up_limit = (2 * u64::from(current)).max(4).min(u64::from(u32::MAX)) as u32;
        let highest = max.min(scale_up_limit);
        if stabilized < min {
            min
        } else if stabilized > highest {
            highest
        } else {
            stabilized
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors`.
    fn with_behavior(
        &mut self,
        t: u64,
        current: u32,
        desired: u32,
        b: &Behavior,
        min: u32,
        max: u32,
    ) -> u32 {
        let stabilized = self.stabilize(t, current, desired, b);
        self.limit_rate(t, current, stabilized, b, min, max)
    }

    /// `stabilizeRecommendationWithBehaviors`: the current count, raised to the lowest
    /// recommendation of the scale-up window and lowered to the highest of the scale-down
    /// window (this one included in both); records this recommendation.
    fn stabilize(&mut self, t: u64, current: u32, desired: u32, b: &Behavior) -> u32 {
        let recs = self.recommendations.get_or_insert_with(Vec::new);
        let (up_window, down_window) = (
            b.scale_up.stabilization_window,
            b.scale_down.stabilization_window,
        );
        let (mut up, mut down) = (desired, desired);
        let mut old = None;
        for (i, r) in recs.iter().enumerate() {
            if r.at + up_window > t {
                up = up.min(r.replicas);
            }
            if r.at + down_window > t {
                down = down.max(r.replicas);
            }
            if r.at + up_window < t && r.at + down_window < t {
                old = Some(i);
            }
        }
        replace_or_push(
            recs,
            old,
            Recommendation {
                replicas: desired,
                at: t,
            },
        );
        current.max(up).min(down)
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn limit_rate(
        &self,
        t: u64,
        current: u32,
        desired: u32,
        b: &Behavior,
        min: u32,
        max: u32,
    ) -> u32 {
        let cur = i64::from(current);
        if desired > current {
            let limit = self.limit(t, cur, &b.scale_up, true).max(cur);
            let allowed = i64::from(max).min(limit);
            if i64::from(desired) > allowed {
                return allowed as u32;
            }
        } else if desired < current {
            let limit = self.limit(t, cur, &b.scale_down, false).min(cur);
            let allowed = i64::from(min).max(limit);
            if i64::from(desired) < allowed {
                return allowed as u32;
            }
        }
        desired
    }

    /// The replicas at the start of `policy`'s period: today's, less what was added in it,
    /// plus what was removed.
    fn period_start(&self, t: u64, current: i64, policy: &ScalingPolicy) -> i64 {
        current - change_in_period(&self.scale_up_events, policy.period_seconds, t)
            + change_in_period(&self.scale_down_events, policy.period_seconds, t)
    }

    /// How far `rules` let the replicas move from `current`: upwards
    /// (`calculateScaleUpLimitWithScalingRules`) or downwards
    /// (`calculateScaleDownLimitWithBehaviors`). `selectPolicy: Max` takes the policy that
    /// allows the biggest change: the highest limit going up, the lowest going down.
    fn limit(&self, t: u64, current: i64, rules: &Rules, up: bool) -> i64 {
        let (mut result, pick): (i64, fn(i64, i64) -> i64) = match (rules.select, up) {
            (Select::Disabled, _) => return current,
            (Select::Min, true) | (Select::Max, false) => (i64::from(i32::MAX), i64::min),
            (Select::Max, true) | (Select::Min, false) => (i64::from(i32::MIN), i64::max),
        };
        for p in &rules.policies {
            let start = self.period_start(t, current, p);
            let proposed = match (p.kind, up) {
                (PolicyKind::Pods, true) => start + i64::from(p.value),
                (PolicyKind::Pods, false) => start - i64::from(p.value),
                // Rounded up, so a small percentage still adds a pod; the same floating-point
                // steps as the controller.
                (PolicyKind::Percent, true) => {
                    (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
                }
                // Truncated (Go's `int32(float64)`): the change is rounded up.
                (PolicyKind::Percent, false) => {
                    (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    /// `storeScaleEvent`: only with `behavior`; an event older than the direction's longest
    /// policy period is marked outdated and the last outdated one is reused.
    fn store_scale_event(&mut self, behavior: Option<&Behavior>, t: u64, from: u32, to: u32) {
        let Some(b) = behavior else { return };
        let (events, rules, change) = if to > from {
            (&mut self.scale_up_events, &b.scale_up, to - from)
        } else {
            (&mut self.scale_down_events, &b.scale_down, from - to)
        };
        let longest = rules.longest_period();
        let mut old = None;
        for (i, e) in events.iter_mut().enumerate() {
            if e.at + longest < t {
                e.outdated = true;
            }
            if e.outdated {
                old = Some(i);
            }
        }
        let event = ScaleEvent {
            change,
            at: t,
            outdated: false,
        };
        match old {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

fn replace_or_push(recs: &mut Vec<Recommendation>, old: Option<usize>, new: Recommendation) {
    match old {
        Some(i) => recs[i] = new,
        None => recs.push(new),
    }
}

#[cfg(test)]
mod tests;
