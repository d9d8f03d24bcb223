//! `blend-scaler simulate`: replays a trace through the real metadata parser and decision on
//! a virtual clock, beside KEDA's built-in triggers, and compares the two over several phases
//! of the loops.
//!
//! [`model::simulate`], [`compare`] and [`report`] are pure; [`run`] only reads the inputs and
//! writes the outputs. See `docs/simulate.md`.

pub(crate) mod cache;
pub(crate) mod compare;
pub mod generate;
pub mod hpa;
pub(crate) mod model;
pub(crate) mod queue;
pub(crate) mod report;
pub(crate) mod scenario;
pub(crate) mod trace;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::output::{out, outln};

#[cfg(test)]
use compare::Compared;
use model::Phase;
pub(crate) use scenario::{Overrides, Scenario};
use trace::Trace;

#[derive(Args, Debug, Clone)]
pub(crate) struct SimulateArgs {
    /// The trace to replay: CSV of message arrivals and request rate over time
    /// (see docs/simulate.md).
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: PathBuf,
    /// The ScaledObject: its first `external`/`external-push` trigger is blend-scaler's.
    #[arg(long, value_name = "YAML")]
    pub(crate) scaledobject: PathBuf,
    /// The ScaledObject the team runs today, with KEDA's built-in triggers (azure-servicebus,
    /// prometheus, cron), its own spec and behavior: the built-in side [default: the same keys
    /// and spec as --scaledobject].
    #[arg(long, value_name = "YAML")]
    pub(crate) baseline: Option<PathBuf>,
    /// Where to write `minutes.csv` and `chart.svg` [default: simulate-<trace name>].
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Messages one ready pod completes per second; overrides the ScaledObject's
    /// `blend-scaler.io/messages-per-second-per-replica` annotation.
    #[arg(long, value_name = "RATE")]
    pub(crate) messages_per_second_per_replica: Option<f64>,
    /// Seconds from a pod's creation until it takes work; overrides the
    /// `blend-scaler.io/pod-start-seconds` annotation [default: 30]. A list sweeps.
    #[arg(long, value_name = "SECONDS", value_delimiter = ',')]
    pub(crate) pod_start_seconds: Vec<u64>,
    /// KEDA's `pollingInterval` for both sides, overriding the ScaledObjects. A list sweeps.
    #[arg(long, value_name = "SECONDS", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) polling_interval: Vec<u64>,
    /// The HPA controller's `--horizontal-pod-autoscaler-sync-period`.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) hpa_sync_period: u64,
    /// The backlog-age objective: minutes in which the oldest message is older are counted,
    /// and `--tune` looks for a p95 oldest-message age within it.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = whole_seconds)]
    pub(crate) objective: Duration,
    /// blend-scaler's `--refresh-interval`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_whole_seconds)]
    pub(crate) refresh_interval: Duration,
    /// How many phases of KEDA's poll and the HPA's sync to average over.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) phases: u64,
    /// The seed the phases are drawn from.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also search each side (the built-in side over `messageCount`, blend-scaler's over a
    /// `drainTime` trigger's `targetDrainSeconds`, both over the same scale-down behaviors) and
    /// show each side's cheapest configuration whose p95 oldest-message age meets the objective.
    #[arg(long)]
    pub(crate) tune: bool,
}

pub(crate) const BUILTIN_LABEL: &str = "built-in triggers";
pub(crate) const SLOW_LABEL: &str = "built-in, slow scale-down";
pub(crate) const TUNED_LABEL: &str = "built-in, tuned";
pub(crate) const BLEND_SLOW_LABEL: &str = "blend-scaler, slow scale-down";
pub(crate) const BLEND_TUNED_LABEL: &str = "blend-scaler, tuned";

/// Everything a simulation produces, before anything is written.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// The first scenario (of a sweep, the first combination) compared.
    #[cfg(test)]
    pub(crate) compared: Compared,
    /// The text printed to stdout.
    pub(crate) text: String,
    pub(crate) csv: String,
    pub(crate) svg: String,
}

/// What a simulation is asked to do, besides the scenarios.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) objective: u64,
    pub(crate) phases: Vec<Phase>,
    pub(crate) seed: u64,
    pub(crate) tune: bool,
}

/// Simulates every scenario of a sweep and renders: a pure function of its inputs.
pub(crate) fn report(
    trace: &Trace,
    scenarios: &[Scenario],
    trace_name: &str,
    options: &Options,
) -> anyhow::Result<Report> {
    let first = scenarios.first().context("nothing to simulate")?;
    let objective = options.objective;
    let local = |t: u64| {
        trace
            .at(t)
            .with_timezone(&trace.timezone)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    let mut text = format!(
        "{} ({}) on {trace_name}: {} to {} {}\n",
        first.name,
        first.trigger_type,
        local(0),
        local(trace.seconds() as u64),
        trace.timezone,
    );
    let blend_label = first.blend_label();
    let sweep = scenarios.len() > 1;
    let mut rows = Vec::new();
    for s in scenarios {
        let compared = compare::compare(trace, s, &options.phases, objective);
        let tuned = options
            .tune
            .then(|| compare::tune(trace, s, &options.phases, objective));
        let tuned_blend = options
            .tune
            .then(|| compare::tune_blend(trace, s, &options.phases, objective));
        if sweep {
            let _ = writeln!(
                text,
                "\n== pollingInterval {} s, pods ready {} s after creation",
                s.settings.keda.polling_interval, s.settings.workload.pod_start_seconds
            );
        }
        if !sweep || rows.is_empty() {
            describe(&mut text, s, options);
        }
        text.push('\n');
        let mut table_rows = vec![
            (BUILTIN_LABEL, &compared.builtin),
            (SLOW_LABEL, &compared.builtin_slow),
            (blend_label.as_str(), &compared.blend),
            (BLEND_SLOW_LABEL, &compared.blend_slow),
        ];
        for (label, t) in [(TUNED_LABEL, &tuned), (BLEND_TUNED_LABEL, &tuned_blend)] {
            if let Some((_, avg)) = t.as_ref().and_then(|t| t.best.as_ref()) {
                table_rows.push((label, avg));
            }
        }
        text.push_str(&report::averaged_table(&table_rows, objective));
        for (label, side, t) in [
            (TUNED_LABEL, "built-in", &tuned),
            (BLEND_TUNED_LABEL, "blend-scaler", &tuned_blend),
        ] {
            match t.as_ref().map(|t| (t, &t.best)) {
                Some((t, Some((c, _)))) => {
                    let _ = writeln!(
                        text,
                        "{label}: the cheapest of {} {side} configurations with a mean p95 age \
                         <= {objective} s: {}",
                        t.tried, c.label
                    );
                }
                Some((t, None)) => {
                    let _ = writeln!(
                        text,
                        "{label}: none of {} {side} configurations has a mean p95 age <= \
                         {objective} s (the lowest is {:.0} s)",
                        t.tried, t.lowest_p95_age
                    );
                }
                None => {}
            }
        }
        for (label, run) in [
            (BUILTIN_LABEL, &compared.first.builtin),
            (blend_label.as_str(), &compared.first.blend),
        ] {
            if run.metric_errors > 0 {
                let _ = writeln!(
                    text,
                    "note: {label}: {} HPA syncs got no metric (first phase)",
                    run.metric_errors
                );
            }
        }
        rows.push(compared);
    }
    let outcome = &rows[0].first;
    let csv = report::csv(trace, outcome);
    let svg = report::chart(
        trace,
        outcome,
        (BUILTIN_LABEL, &blend_label),
        &format!("{} on {trace_name}", first.name),
        objective,
    )
    .map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
    Ok(Report {
        #[cfg(test)]
        compared: rows.swap_remove(0),
        text,
        csv,
        svg,
    })
}

/// The settings of both sides, the phases and the notes.
fn describe(text: &mut String, s: &Scenario, options: &Options) {
    let w = &s.settings.workload;
    let reads = if s.settings.blend.push {
        "every second (the stream is open)".to_string()
    } else {
        format!(
            "as KEDA asks, at least {} s apart",
            s.settings.blend.refresh_interval
        )
    };
    let _ = writeln!(
        text,
        "pods: {} messages/s each, ready {} s after creation; blend-scaler reads {reads}",
        w.messages_per_second_per_replica, w.pod_start_seconds
    );
    let side = |settings: &model::Settings| {
        let k = &settings.keda;
        format!(
            "KEDA: polling {} s, cooldown {} s, replicas {}..{}; HPA: {}",
            k.polling_interval,
            k.cooldown_period,
            k.min_replicas,
            k.max_replicas,
            settings.hpa.describe()
        )
    };
    let builtin_source = match &s.baseline {
        Some(name) => format!("the baseline {name}"),
        None => "the same keys and spec".into(),
    };
    let _ = writeln!(
        text,
        "{BUILTIN_LABEL} ({builtin_source}): {}",
        side(&s.builtin_settings)
    );
    let _ = writeln!(
        text,
        "{SLOW_LABEL}: the same, with behavior.scaleDown {}",
        compare::slow_scale_down().scale_down.describe()
    );
    let _ = writeln!(text, "{}: {}", s.blend_label(), side(&s.settings));
    let _ = writeln!(
        text,
        "{BLEND_SLOW_LABEL}: the same, with the slow scale-down of the built-in side"
    );
    let _ = writeln!(
        text,
        "phases: {} of KEDA's poll and the HPA's sync, drawn from seed {}; \
         each cell: the mean (lowest-highest phase)",
        options.phases.len(),
        options.seed
    );
    for note in &s.notes {
        let _ = writeln!(text, "note: {note}");
    }
}

/// Reads the files, simulates, and renders; writes nothing.
pub(crate) fn report_for_files(args: &SimulateArgs) -> anyhow::Result<Report> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let trace = Trace::parse(&read(&args.trace)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.trace.display()))?;
    let yaml = read(&args.scaledobject)?;
    let baseline = args.baseline.as_deref().map(read).transpose()?;
    let optional = |v: &[u64]| -> Vec<Option<u64>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().copied().map(Some).collect()
        }
    };
    let mut scenarios = Vec::new();
    for pod_start_seconds in optional(&args.pod_start_seconds) {
        for polling_interval in optional(&args.polling_interval) {
            let overrides = Overrides {
                messages_per_second_per_replica: args.messages_per_second_per_replica,
                pod_start_seconds,
                refresh_interval: Some(args.refresh_interval.as_secs()),
                polling_interval,
                hpa_sync_period: Some(args.hpa_sync_period),
            };
            let mut scenario = Scenario::from_yaml(&yaml, &overrides)
                .with_context(|| args.scaledobject.display().to_string())?;
            if let (Some(text), Some(path)) = (&baseline, &args.baseline) {
                scenario = scenario
                    .with_baseline(text, &overrides)
                    .with_context(|| path.display().to_string())?;
            }
            scenarios.push(scenario);
        }
    }
    let options = Options {
        objective: args.objective.as_secs(),
        phases: Phase::draw(args.seed, args.phases as usize),
        seed: args.seed,
        tune: args.tune,
    };
    report(&trace, &scenarios, &file_name(&args.trace), &options)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// A duration the simulator can use: it steps once a second, so a fraction would be dropped
/// (`1500ms` read as 1 s, `500ms` as 0). clap names the flag in the error.
fn whole_seconds(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "`{text}` is not a whole number of seconds (the simulator steps once a second)"
        ));
    }
    Ok(d)
}

/// [`whole_seconds`], at least one.
fn positive_whole_seconds(text: &str) -> Result<Duration, String> {
    match whole_seconds(text)? {
        d if d.is_zero() => Err(format!("`{text}` must be at least 1s")),
        d => Ok(d),
    }
}

/// `blend-scaler simulate`.
pub(crate) fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
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
    out!("{}", report.text)?;
    outln!(
        "\nwrote {} and {} (the first phase)",
        csv.display(),
        svg.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
