//! Time windows: KEDA's cron rule, in an IANA time zone, with several windows per trigger.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Weak};

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use parking_lot::Mutex;

/// At most this many windows in one trigger (docs/security.md, "Capacity"): each holds two parsed expressions and
/// its own remembered search.
pub(crate) const MAX_WINDOWS: usize = 16;

/// An expression must occur within this many days of the parse (two years): one that does
/// not is a typo (31 February), and searching for it scans every year croner knows, about a
/// second of CPU on every call that asks.
const HORIZON_DAYS: u64 = 2 * 365;

/// Parsed expressions alive in this process, however many windows share each one.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many distinct parsed expressions the process holds now (the scaler caps it).
pub fn held_expressions() -> usize {
    HELD.load(Ordering::SeqCst)
}

/// A parsed expression, counted in [`held_expressions`] while it lives.
#[derive(Debug)]
pub struct Expr(Cron);

impl Expr {
    fn new(cron: Cron) -> Self {
        HELD.fetch_add(1, Ordering::SeqCst);
        Self(cron)
    }
}

impl Drop for Expr {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Deref for Expr {
    type Target = Cron;
    fn deref(&self) -> &Cron {
        &self.0
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// One window: active from each `start` until the following `end`.
#[derive(Clone, Debug)]
pub struct Window {
    start: Arc<Expr>,
    end: Arc<Expr>,
    start_text: Arc<str>,
    end_text: Arc<str>,
    pub(crate) replicas: u32,
    /// The last search for the next start and end: it holds until the earlier of them, so
    /// each occurrence is searched for once, not on every KEDA call.
    next: Arc<Mutex<Option<Next>>>,
}

/// The next start and end after `from`, in `tz` (`None`: never again).
#[derive(Clone, Copy, Debug)]
struct Next {
    tz: Tz,
    from: DateTime<Utc>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

impl Next {
    /// The same searches from `now` would find the same occurrences.
    fn holds_at(&self, now: DateTime<Utc>, tz: Tz) -> bool {
        self.tz == tz
            && self.from <= now
            && self.start.is_none_or(|s| now < s)
            && self.end.is_none_or(|e| now < e)
    }
}

/// Every window of one trigger, with the zone they are read in.
#[derive(Clone, Debug)]
pub struct CronPlan {
    pub(crate) timezone: Tz,
    pub(crate) windows: Vec<Window>,
}

/// What the windows say at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CronState {
    /// The largest `replicas` of the active windows, 0 when none is active.
    pub(crate) replicas: u32,
    pub(crate) active: bool,
}

/// Parsed expressions by their normalised text, shared by every window that uses one. A
/// parsed expression holds about 5 KB (croner keeps a byte for every year it could match),
/// and thousands of ScaledObjects use the same few expressions: 10,000 business-hours
/// windows held 100 MB before they shared them. Entries no window holds any more are dropped
/// as the table grows.
static PARSED: LazyLock<Mutex<HashMap<String, Weak<Expr>>>> = LazyLock::new(Default::default);

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week), the form
/// KEDA's cron scaler takes. Seconds and years are refused so a 6-field typo is not read as
/// something else, and so is an expression that does not occur within two years. Spellings
/// that differ only in white space or letter case (`0 8 * * mon`, `0  8 * * MON`) give the
/// same shared expression while any window holds it.
pub fn parse_expression(text: &str) -> Result<Arc<Expr>, String> {
    let key = canonical(text);
    if let Some(cron) = PARSED.lock().get(&key).and_then(Weak::upgrade) {
        return Ok(cron);
    }
    let cron = Arc::new(Expr::new(parse_new(&key)?));
    let mut parsed = PARSED.lock();
    // Two parses of one new text raced: keep the first, so they share it.
    if let Some(first) = parsed.get(&key).and_then(Weak::upgrade) {
        return Ok(first);
    }
    if parsed.len() >= 64 && parsed.len().is_power_of_two() {
        parsed.retain(|_, c| c.strong_count() > 0);
    }
    parsed.insert(key, Arc::downgrade(&cron));
    Ok(cron)
}

/// The text an expression is shared by: fields separated by one space, letters upper case
/// (croner reads names and `L`/`W` in either case).
fn canonical(text: &str) -> String {
    normalize(text).to_ascii_uppercase()
}

/// Whether `cron` matches any minute of the `days` days from `from` on. Every field below the
/// day has at least one value once parsed, so a matching day is a matching minute: a walk
/// over days (microseconds) instead of croner's search (which scans to the year 5000).
fn occurs_within(cron: &Cron, from: NaiveDate, days: u64) -> bool {
    from.iter_days().take(days as usize).any(|d| {
        let weekday = croner::Weekday::from_days_from_sunday(d.weekday().num_days_from_sunday());
        cron.pattern.month_match(d.month()).unwrap_or(false)
            && cron
                .pattern
                .day_match(d.year(), d.month(), d.day(), weekday)
                .unwrap_or(false)
    })
}

fn parse_new(text: &str) -> Result<Cron, String> {
    // croner reads an empty list item (`0 , * * *`) as a field that matches nothing, and
    // every later search for an occurrence then scans years ahead (about a second each time,
    // on every KEDA call): refused here, as standard cron does.
    for (i, field) in text.split_whitespace().enumerate() {
        if field.split(',').any(str::is_empty) {
            return Err(format!(
                "`{}` is not a 5-field cron expression: field {} (`{field}`) has an empty \
                 list item",
                normalize(text),
                i + 1
            ));
        }
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("`{text}` is not a 5-field cron expression: {e}"))?;
    // A day back, so a zone ahead of UTC sees today too.
    let from = Utc::now().date_naive().pred_opt().unwrap_or(NaiveDate::MIN);
    if !occurs_within(&cron, from, HORIZON_DAYS + 1) {
        return Err(format!(
            "`{text}` does not occur within two years (a date such as 31 February never \
             comes), so the window would never open"
        ));
    }
    Ok(cron)
}

impl Window {
    pub fn new(start: &str, end: &str, replicas: u32) -> Result<Self, String> {
        let start_cron = parse_expression(start)?;
        let end_cron = parse_expression(end)?;
        if start_cron == end_cron {
            return Err(format!(
                "start and end are the same (`{}`): the window would never be open",
                start.trim()
            ));
        }
        Ok(Self {
            start: start_cron,
            end: end_cron,
            start_text: crate::intern::intern(&normalize(start)),
            end_text: crate::intern::intern(&normalize(end)),
            replicas,
            next: Arc::new(Mutex::new(None)),
        })
    }

    /// KEDA's rule: the window is active when its next end comes no later than its next start.
    /// An expression with no next occurrence (such as 30 February) never opens the window.
    pub fn is_active(&self, now: DateTime<Utc>, tz: Tz) -> bool {
        let cached = *self.next.lock();
        let next = match cached {
            Some(n) if n.holds_at(now, tz) => n,
            _ => {
                let local = now.with_timezone(&tz);
                let find = |c: &Expr| {
                    c.find_next_occurrence(&local, false)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                };
                let n = Next {
                    tz,
                    from: now,
                    start: find(&self.start),
                    end: find(&self.end),
                };
                *self.next.lock() = Some(n);
                n
            }
        };
        match (next.start, next.end) {
            (_, None) => false,
            (None, Some(_)) => false,
            (Some(start), Some(end)) => start >= end,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} = {}",
            self.start_text, self.end_text, self.replicas
        )
    }
}

impl CronPlan {
    /// Whether [`CronPlan::state`] at `now` has to search for occurrences (some window's
    /// remembered ones have passed): a search can take milliseconds, so the engine runs it
    /// off the async workers, and the state after it is a lookup.
    pub(crate) fn needs_search(&self, now: DateTime<Utc>) -> bool {
        self.windows.iter().any(|w| {
            !w.next
                .lock()
                .is_some_and(|n| n.holds_at(now, self.timezone))
        })
    }

    pub(crate) fn state(&self, now: DateTime<Utc>) -> CronState {
        let replicas = self
            .windows
            .iter()
            .filter(|w| w.is_active(now, self.timezone))
            .map(|w| w.replicas)
            .max();
        CronState {
            replicas: replicas.unwrap_or(0),
            active: replicas.is_some(),
        }
    }
}

/// Parses the `windows` key: entries separated by `;` or new lines, each
/// `START -> END = REPLICAS`, for example
/// `0 8 * * 1-5 -> 0 20 * * 1-5 = 5; 0 20 * * 1-5 -> 0 23 * * 1-5 = 2`.
pub fn parse_windows(text: &str) -> Result<Vec<Window>, String> {
    let entries: Vec<&str> = text
        .split([';', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("no window given; expected `START -> END = REPLICAS`".into());
    }
    // Counted before any is parsed: refused input costs nothing.
    if entries.len() > MAX_WINDOWS {
        return Err(format!(
            "has {} windows; at most {MAX_WINDOWS} are accepted in one trigger",
            entries.len()
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| parse_window_entry(entry).map_err(|e| format!("window {}: {e}", i + 1)))
        .collect()
}

fn parse_window_entry(entry: &str) -> Result<Window, String> {
    let (range, replicas) = entry
        .rsplit_once('=')
        .ok_or_else(|| format!("`{entry}` has no `= REPLICAS`"))?;
    let (start, end) = range
        .split_once("->")
        .ok_or_else(|| format!("`{entry}` has no `START -> END`"))?;
    let replicas = replicas.trim();
    let replicas: u32 = replicas
        .parse()
        .map_err(|_| format!("replicas `{replicas}` is not a whole number"))?;
    Window::new(start, end, replicas)
}

fn normalize(expr: &str) -> String {
    expr.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
