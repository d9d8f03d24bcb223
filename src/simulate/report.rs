//! What a simulation shows: the summary table, the per-minute CSV and the chart.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::model::{Outcome, Run};
use super::trace::Trace;

/// One configuration's day in numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Pod-minutes: every pod counts from its creation, ready or not.
    pub replica_minutes: f64,
    /// The oldest waiting message's age: highest, and 95th percentile over the seconds of the
    /// trace (nearest rank), in seconds.
    pub peak_age: u64,
    pub p95_age: u64,
    /// The 95th percentile of the messages' waits, from arrival to done, in seconds.
    pub p95_wait: u64,
    /// Minutes in which the oldest message was older than the objective at some second.
    pub minutes_over_objective: u32,
    /// Changes of the deployment's replica count.
    pub scale_events: u32,
    pub peak_backlog: u64,
    pub peak_replicas: u32,
}

impl Summary {
    pub fn of(run: &Run, objective: u64) -> Self {
        let replica_seconds: u64 = run.replicas.iter().map(|&r| u64::from(r)).sum();
        let mut ages = run.oldest_age.clone();
        ages.sort_unstable();
        let p95_age = if ages.is_empty() {
            0
        } else {
            ages[(ages.len() * 95).div_ceil(100) - 1]
        };
        let minutes_over_objective = run
            .oldest_age
            .chunks(60)
            .filter(|m| m.iter().any(|&a| a > objective))
            .count() as u32;
        let scale_events = run.replicas.windows(2).filter(|w| w[0] != w[1]).count() as u32;
        let messages: u64 = run.waits.iter().sum();
        let mut seen = 0;
        let p95_wait = run
            .waits
            .iter()
            .position(|&n| {
                seen += n;
                seen * 100 >= messages * 95
            })
            .unwrap_or(0) as u64;
        Self {
            replica_minutes: replica_seconds as f64 / 60.0,
            peak_age: run.oldest_age.iter().copied().max().unwrap_or(0),
            p95_age,
            p95_wait,
            minutes_over_objective,
            scale_events,
            peak_backlog: run.backlog.iter().copied().max().unwrap_or(0),
            peak_replicas: run.replicas.iter().copied().max().unwrap_or(0),
        }
    }
}

/// One figure over the phases: its mean, lowest and highest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let (mut n, mut sum, mut min, mut max) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            n += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        if n == 0 {
            return Self {
                mean: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        Self {
            mean: sum / n as f64,
            min,
            max,
        }
    }

    /// `mean (lowest-highest)`, or the mean alone when every phase gave the same.
    fn cell(&self, unit: &str) -> String {
        if self.min == self.max {
            format!("{:.0}{unit}", self.mean)
        } else {
            format!("{:.0}{unit} ({:.0}-{:.0})", self.mean, self.min, self.max)
        }
    }
}

/// One configuration's day averaged over the phases of the loops.
#[derive(Clone, Debug, PartialEq)]
pub struct Averaged {
    pub phases: usize,
    pub replica_minutes: Stat,
    pub peak_age: Stat,
    pub p95_age: Stat,
    pub p95_wait: Stat,
    pub minutes_over_objective: Stat,
    pub scale_events: Stat,
    pub peak_replicas: Stat,
    pub peak_backlog: Stat,
}

impl Averaged {
    pub fn of(runs: &[Summary]) -> Self {
        let stat = |f: fn(&Summary) -> f64| Stat::of(runs.iter().map(f));
        Self {
            phases: runs.len(),
            replica_minutes: stat(|s| s.replica_minutes),
            peak_age: stat(|s| s.peak_age as f64),
            p95_age: stat(|s| s.p95_age as f64),
            p95_wait: stat(|s| s.p95_wait as f64),
            minutes_over_objective: stat(|s| f64::from(s.minutes_over_objective)),
            scale_events: stat(|s| f64::from(s.scale_events)),
            peak_replicas: stat(|s| f64::from(s.peak_replicas)),
            peak_backlog: stat(|s| s.peak_backlog as f64),
        }
    }
}

/// The side-by-side table over phases: each cell the mean, and the lowest and highest phase.
pub fn averaged_table(rows: &[(&str, &Averaged)], objective: u64) -> String {
    let over = format!("min > {objective} s");
    let headers = [
        "configuration",
        "replica-min",
        "p95 age",
        "p95 wait",
        "peak age",
        over.as_str(),
        "scale events",
        "peak replicas",
        "peak backlog",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, a)| {
            vec![
                name.to_string(),
                a.replica_minutes.cell(""),
                a.p95_age.cell(" s"),
                a.p95_wait.cell(" s"),
                a.peak_age.cell(" s"),
                a.minutes_over_objective.cell(""),
                format!("{:.0}", a.scale_events.mean),
                format!("{:.0}", a.peak_replicas.mean),
                format!("{:.0}", a.peak_backlog.mean),
            ]
        })
        .collect();
    render(&headers, &cells)
}

fn render(headers: &[&str], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                let _ = write!(text, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(text, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, headers);
    for r in cells {
        let row: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &row);
    }
    out
}

/// One minute of one configuration: the highest value of each series in that minute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Minute {
    pub replicas: u32,
    pub ready: u32,
    pub backlog: u64,
    pub oldest_age: u64,
}

pub fn minutes(run: &Run) -> Vec<Minute> {
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    (0..run.replicas.len().div_ceil(60))
        .map(|m| {
            let r = m * 60..((m + 1) * 60).min(run.replicas.len());
            Minute {
                replicas: run.replicas[r.clone()].iter().copied().max().unwrap_or(0),
                ready: run.ready[r.clone()].iter().copied().max().unwrap_or(0),
                backlog: max(&run.backlog[r.clone()]),
                oldest_age: max(&run.oldest_age[r]),
            }
        })
        .collect()
}

/// The per-minute CSV: the trace's mean rates, then each configuration's highest values.
pub fn csv(trace: &Trace, outcome: &Outcome) -> String {
    let (a, b) = (minutes(&outcome.builtin), minutes(&outcome.blend));
    let mut out = String::from(
        "minute,time,messages_per_second,requests_per_second,\
         builtin_replicas,builtin_ready,builtin_backlog,builtin_oldest_age_s,\
         blend_replicas,blend_ready,blend_backlog,blend_oldest_age_s\n",
    );
    for (m, (x, y)) in a.iter().zip(&b).enumerate() {
        let r = m * 60..((m + 1) * 60).min(trace.seconds());
        let len = r.len() as f64;
        let messages: f64 = trace.messages[r.clone()].iter().sum::<f64>() / len;
        let requests: f64 = trace.requests[r.clone()].iter().sum::<f64>() / len;
        let time = trace
            .at(r.start as u64)
            .with_timezone(&trace.timezone)
            .format("%Y-%m-%dT%H:%M:%S%:z");
        let _ = writeln!(
            out,
            "{m},{time},{messages:.2},{requests:.2},{},{},{},{},{},{},{},{}",
            x.replicas,
            x.ready,
            x.backlog,
            x.oldest_age,
            y.replicas,
            y.ready,
            y.backlog,
            y.oldest_age
        );
    }
    out
}

const BUILTIN_COLOR: RGBColor = RGBColor(213, 94, 0);
const BLEND_COLOR: RGBColor = RGBColor(0, 114, 178);
const OBJECTIVE_COLOR: RGBColor = RGBColor(120, 120, 120);

/// The chart: replicas, backlog and oldest-message age per minute, both configurations, as
/// SVG (text is left to the viewer's fonts, so nothing is needed to draw it).
pub fn chart(
    trace: &Trace,
    outcome: &Outcome,
    labels: (&str, &str),
    title: &str,
    objective: u64,
) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, trace, outcome, labels, title, objective).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    trace: &Trace,
    outcome: &Outcome,
    labels: (&str, &str),
    title: &str,
    objective: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = (minutes(&outcome.builtin), minutes(&outcome.blend));
    let hours = trace.seconds() as f64 / 3600.0;
    let root = SVGBackend::with_string(svg, (1200, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));

    let start = trace.start.with_timezone(&trace.timezone);
    let clock = |x: &f64| {
        (start + chrono::Duration::seconds((x * 3600.0).round() as i64))
            .format("%H:%M")
            .to_string()
    };
    let x_of = |m: usize| m as f64 / 60.0;

    type Series<'s> = (&'s str, Vec<(f64, f64)>, RGBColor);
    let panel = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                 caption: &str,
                 y_desc: &str,
                 series: Vec<Series>,
                 line: Option<f64>|
     -> Result<(), Box<dyn std::error::Error>> {
        let top = series
            .iter()
            .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
            .chain(line)
            .fold(1.0f64, f64::max)
            * 1.08;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .margin_right(28)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..hours.max(1.0 / 60.0), 0f64..top)?;
        chart
            .configure_mesh()
            .x_labels(13)
            .x_label_formatter(&clock)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (name, pts, color) in series {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(1)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        if let Some(y) = line {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, y), (hours, y)],
                    OBJECTIVE_COLOR.stroke_width(1),
                ))?
                .label("objective")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], OBJECTIVE_COLOR));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    };

    let pts = |v: &[Minute], f: fn(&Minute) -> f64| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(m, x)| (x_of(m), f(x))).collect()
    };
    panel(
        &panels[0],
        "replicas (highest in each minute)",
        "replicas",
        vec![
            (labels.0, pts(&a, |m| f64::from(m.replicas)), BUILTIN_COLOR),
            (labels.1, pts(&b, |m| f64::from(m.replicas)), BLEND_COLOR),
        ],
        None,
    )?;
    panel(
        &panels[1],
        "backlog (messages waiting)",
        "messages",
        vec![
            (labels.0, pts(&a, |m| m.backlog as f64), BUILTIN_COLOR),
            (labels.1, pts(&b, |m| m.backlog as f64), BLEND_COLOR),
        ],
        None,
    )?;
    panel(
        &panels[2],
        "oldest message age",
        "seconds",
        vec![
            (labels.0, pts(&a, |m| m.oldest_age as f64), BUILTIN_COLOR),
            (labels.1, pts(&b, |m| m.oldest_age as f64), BLEND_COLOR),
        ],
        Some(objective as f64),
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(replicas: Vec<u32>, ages: Vec<u64>) -> Run {
        Run {
            ready: replicas.clone(),
            replicas,
            backlog: ages.iter().map(|a| a * 10).collect(),
            oldest_age: ages,
            waits: vec![10, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            metric_errors: 0,
        }
    }

    #[test]
    fn the_summary_counts_pod_minutes_percentiles_and_scale_events() {
        // Two minutes: 3 pods for 60 s, then 6 pods for 60 s; ages 0..120.
        let replicas: Vec<u32> = (0..120).map(|t| if t < 60 { 3 } else { 6 }).collect();
        let ages: Vec<u64> = (0..120).collect();
        let s = Summary::of(&run(replicas, ages), 100);
        assert_eq!(s.replica_minutes, 9.0);
        assert_eq!(s.peak_age, 119);
        // Nearest rank: the 114th of 120 sorted values.
        assert_eq!(s.p95_age, 113);
        assert_eq!(s.minutes_over_objective, 1);
        assert_eq!(s.scale_events, 1);
        assert_eq!((s.peak_replicas, s.peak_backlog), (6, 1190));
        // 10 of 11 messages waited 0 s: 91%, so the 95th percentile is the one that waited 9 s.
        assert_eq!(s.p95_wait, 9);
    }

    #[test]
    fn the_table_aligns_columns_and_names_the_objective() {
        let s = Summary::of(&run(vec![1; 60], vec![0; 60]), 120);
        let one_phase = Averaged::of(&[s]);
        let t = averaged_table(
            &[
                ("built-in triggers", &one_phase),
                ("blend-scaler (max)", &one_phase),
            ],
            120,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("min > 120 s"), "{t}");
        assert_eq!(lines[1].len(), lines[2].len(), "{t}");
        assert!(lines[1].starts_with("built-in triggers "), "{t}");
    }
}
