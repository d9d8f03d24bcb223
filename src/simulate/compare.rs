//! The fair comparison: both sides over several phases of the loops, each also with the slow
//! scale-down behavior, and `--tune`, the search on each side for the cheapest configuration
//! that meets the objective.

use super::hpa::{Behavior, Hpa, PolicyKind, Rules, ScalingPolicy, Select};
use super::model::{self, Outcome, Phase, Sides};
use super::report::{Averaged, Summary};
use super::scenario::Scenario;
use super::trace::Trace;
use crate::metadata::Policy;

/// Both sides over every phase.
#[derive(Clone, Debug)]
pub struct Compared {
    pub builtin: Averaged,
    /// The built-in side with [`slow_scale_down`] (its scale-up rules kept).
    pub builtin_slow: Averaged,
    pub blend: Averaged,
    /// blend-scaler's side with the same [`slow_scale_down`].
    pub blend_slow: Averaged,
    /// The first phase's per-second series, for the CSV and the chart.
    pub first: Outcome,
}

fn sides(s: &Scenario) -> Sides<'_> {
    Sides {
        builtin: &s.builtin,
        builtin_settings: &s.builtin_settings,
        plan: &s.plan,
        blend_settings: &s.settings,
    }
}

/// Runs both sides of `scenario` at each phase and averages.
pub fn compare(trace: &Trace, scenario: &Scenario, phases: &[Phase], objective: u64) -> Compared {
    let sides = sides(scenario);
    let slow = model::Settings {
        hpa: slowed(&scenario.builtin_settings.hpa),
        ..scenario.builtin_settings.clone()
    };
    let blend_slow_settings = model::Settings {
        hpa: slowed(&scenario.settings.hpa),
        ..scenario.settings.clone()
    };
    let mut first = None;
    let (mut builtin, mut builtin_slow, mut blend) = (Vec::new(), Vec::new(), Vec::new());
    let mut blend_slow = Vec::new();
    for &phase in phases {
        let out = model::simulate(trace, &sides, phase);
        builtin.push(Summary::of(&out.builtin, objective));
        blend.push(Summary::of(&out.blend, objective));
        let run = model::run(trace, &slow, phase, &mut scenario.builtin.clone());
        builtin_slow.push(Summary::of(&run, objective));
        let run = run_blend(trace, &scenario.plan, &blend_slow_settings, phase);
        blend_slow.push(Summary::of(&run, objective));
        first.get_or_insert(out);
    }
    Compared {
        builtin: Averaged::of(&builtin),
        builtin_slow: Averaged::of(&builtin_slow),
        blend: Averaged::of(&blend),
        blend_slow: Averaged::of(&blend_slow),
        first: first.unwrap_or_else(|| model::simulate(trace, &sides, Phase::FIXED)),
    }
}

fn run_blend(
    trace: &Trace,
    plan: &crate::metadata::Plan,
    settings: &model::Settings,
    phase: Phase,
) -> model::Run {
    let mut blend = model::Blend::new(plan, &settings.blend);
    model::run(trace, settings, phase, &mut blend)
}

/// One configuration `--tune` tries.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `messageCount 50, scale-down <rules>`, or `targetDrainSeconds 60, ...`.
    pub label: String,
    /// The built-in `azure-servicebus` trigger's `messageCount`.
    pub message_count: Option<f64>,
    /// blend-scaler's `targetDrainSeconds` (a `drainTime` trigger).
    pub target_drain_seconds: Option<f64>,
    pub hpa: Hpa,
}

/// The scale-down behaviors tried, beside the baseline's own: no window (100% per 15 s), a
/// 60 s window, and the Kubernetes documentation's "limit scale down rate" example (10% a
/// minute) with the default 300 s and a 600 s window.
pub fn scale_down_options() -> Vec<(&'static str, Rules)> {
    let percent = |value, period_seconds| ScalingPolicy {
        kind: PolicyKind::Percent,
        value,
        period_seconds,
    };
    let rules = |window, policy| Rules {
        stabilization_window: window,
        select: Select::Max,
        policies: vec![policy],
    };
    vec![
        ("window 0 s, 100%/15 s", rules(0, percent(100, 15))),
        ("window 60 s, 100%/15 s", rules(60, percent(100, 15))),
        ("window 300 s, 10%/60 s", rules(300, percent(10, 60))),
        ("window 600 s, 10%/60 s", rules(600, percent(10, 60))),
    ]
}

/// The slow scale-down behavior a KEDA user adds first, written as a ScaledObject's
/// `advanced.horizontalPodAutoscalerConfig.behavior` would default it.
pub fn slow_scale_down() -> Behavior {
    Behavior {
        scale_up: Behavior::default_scale_up(),
        scale_down: scale_down_options()
            .into_iter()
            .find(|(name, _)| *name == "window 300 s, 10%/60 s")
            .map(|(_, r)| r)
            .expect("the slow option exists"),
    }
}

/// `hpa` with the slow scale-down rules, its scale-up rules kept.
pub fn slowed(hpa: &Hpa) -> Hpa {
    let slow = slow_scale_down();
    Hpa {
        behavior: Some(Behavior {
            scale_up: hpa
                .behavior
                .as_ref()
                .map_or(slow.scale_up, |b| b.scale_up.clone()),
            scale_down: slow.scale_down,
        }),
        ..hpa.clone()
    }
}

/// Seconds of one pod's work a `messageCount` stands for, in the search.
pub const MESSAGE_COUNT_SECONDS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0];

/// Every configuration `--tune` tries: each `messageCount` (seconds of one pod's work, and the
/// baseline's own) with the baseline's behavior and each scale-down option.
pub fn candidates(scenario: &Scenario) -> Vec<Candidate> {
    let base = &scenario.builtin_settings.hpa;
    let rate = scenario
        .builtin_settings
        .workload
        .messages_per_second_per_replica;
    let mut counts: Vec<Option<f64>> = match scenario.builtin.servicebus {
        None => vec![None],
        Some((own, _)) => {
            let mut c: Vec<f64> = MESSAGE_COUNT_SECONDS
                .iter()
                .map(|s| (s * rate).round().max(1.0))
                .chain([own])
                .collect();
            c.sort_by(f64::total_cmp);
            c.dedup();
            c.into_iter().map(Some).collect()
        }
    };
    counts.dedup();
    let mut out = Vec::new();
    for count in &counts {
        for (name, hpa) in behaviors(base) {
            out.push(Candidate {
                label: match count {
                    Some(c) => format!("messageCount {c}, {name}"),
                    None => name,
                },
                message_count: *count,
                target_drain_seconds: None,
                hpa,
            });
        }
    }
    out
}

/// `base` as configured and with each of [`scale_down_options`] (its scale-up rules kept).
fn behaviors(base: &Hpa) -> Vec<(String, Hpa)> {
    let mut out = vec![("as configured".to_string(), base.clone())];
    for (name, rules) in scale_down_options() {
        let scale_up = base
            .behavior
            .as_ref()
            .map_or_else(Behavior::default_scale_up, |b| b.scale_up.clone());
        out.push((
            format!("scale-down {name}"),
            Hpa {
                behavior: Some(Behavior {
                    scale_up,
                    scale_down: rules,
                }),
                ..base.clone()
            },
        ));
    }
    out
}

/// Every configuration `--tune` tries on blend-scaler's side, on the same grid as the
/// built-in side's: a `drainTime` trigger's `targetDrainSeconds` of 1, 2, 5 ... 240 s (and its
/// own), the seconds of backlog it runs at as `messageCount` is for the built-in trigger, each
/// with the configured behavior and each scale-down option. Other policies try the behaviors.
pub fn blend_candidates(scenario: &Scenario) -> Vec<Candidate> {
    let targets: Vec<Option<f64>> = match scenario.plan.policy {
        Policy::DrainTime {
            target_drain_seconds,
            ..
        } => {
            let mut t: Vec<f64> = MESSAGE_COUNT_SECONDS
                .iter()
                .copied()
                .chain([target_drain_seconds])
                .collect();
            t.sort_by(f64::total_cmp);
            t.dedup();
            t.into_iter().map(Some).collect()
        }
        _ => vec![None],
    };
    let mut out = Vec::new();
    for target in &targets {
        for (name, hpa) in behaviors(&scenario.settings.hpa) {
            out.push(Candidate {
                label: match target {
                    Some(t) => format!("targetDrainSeconds {t}, {name}"),
                    None => name,
                },
                message_count: None,
                target_drain_seconds: *target,
                hpa,
            });
        }
    }
    out
}

/// The outcome of `--tune`.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub tried: usize,
    /// The cheapest configuration whose mean p95 oldest-message age is within the objective;
    /// `None` when none is.
    pub best: Option<(Candidate, Averaged)>,
    /// The lowest mean p95 age any configuration reached (shown when none met the objective).
    pub lowest_p95_age: f64,
}

/// Searches the built-in side over [`candidates`], each over every phase.
pub fn tune(trace: &Trace, scenario: &Scenario, phases: &[Phase], objective: u64) -> Tuned {
    search(candidates(scenario), objective, |c| {
        let mut builtin = scenario.builtin.clone();
        if let (Some(count), Some(sb)) = (c.message_count, builtin.servicebus.as_mut()) {
            sb.0 = count;
        }
        let settings = model::Settings {
            hpa: c.hpa.clone(),
            ..scenario.builtin_settings.clone()
        };
        phases
            .iter()
            .map(|&phase| {
                let run = model::run(trace, &settings, phase, &mut builtin.clone());
                Summary::of(&run, objective)
            })
            .collect()
    })
}

/// Searches blend-scaler's side over [`blend_candidates`], each over every phase.
pub fn tune_blend(trace: &Trace, scenario: &Scenario, phases: &[Phase], objective: u64) -> Tuned {
    search(blend_candidates(scenario), objective, |c| {
        let mut plan = scenario.plan.clone();
        if let (
            Some(t),
            Policy::DrainTime {
                target_drain_seconds,
                ..
            },
        ) = (c.target_drain_seconds, &mut plan.policy)
        {
            *target_drain_seconds = t;
        }
        let settings = model::Settings {
            hpa: c.hpa.clone(),
            ..scenario.settings.clone()
        };
        phases
            .iter()
            .map(|&phase| Summary::of(&run_blend(trace, &plan, &settings, phase), objective))
            .collect()
    })
}

/// The cheapest of `all` (fewest mean replica-minutes) whose mean p95 age is within the
/// objective, `runs` giving each one's summaries over the phases.
fn search(all: Vec<Candidate>, objective: u64, runs: impl Fn(&Candidate) -> Vec<Summary>) -> Tuned {
    let mut best: Option<(Candidate, Averaged)> = None;
    let mut lowest = f64::INFINITY;
    for c in &all {
        let avg = Averaged::of(&runs(c));
        lowest = lowest.min(avg.p95_age.mean);
        let meets = avg.p95_age.mean <= objective as f64;
        let cheaper = best
            .as_ref()
            .is_none_or(|(_, b)| avg.replica_minutes.mean < b.replica_minutes.mean);
        if meets && cheaper {
            best = Some((c.clone(), avg));
        }
    }
    Tuned {
        tried: all.len(),
        best,
        lowest_p95_age: lowest,
    }
}
