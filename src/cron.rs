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

/// At most this many windows in one trigger (SPEC 7): each holds two parsed expressions and
/// its own remembered search.
pub const MAX_WINDOWS: usize = 16;

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
    start_text: String,
    end_text: String,
    pub replicas: u32,
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
    pub timezone: Tz,
    pub windows: Vec<Window>,
}

/// What the windows say at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CronState {
    /// The largest `replicas` of the active windows, 0 when none is active.
    pub replicas: u32,
    pub active: bool,
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
            start_text: normalize(start),
            end_text: normalize(end),
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
    pub fn needs_search(&self, now: DateTime<Utc>) -> bool {
        self.windows.iter().any(|w| {
            !w.next
                .lock()
                .is_some_and(|n| n.holds_at(now, self.timezone))
        })
    }

    pub fn state(&self, now: DateTime<Utc>) -> CronState {
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
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Found by the `cron_windows` fuzz target: `,` fields were accepted as matching
    /// nothing, and `is_active` then took about a second (nine in a debug build) per call.
    #[test]
    fn an_empty_list_item_is_refused_rather_than_matching_nothing() {
        for expr in [
            "* , * * *",
            "0 0 , * *",
            "0 0 * , *",
            "0 0 * * ,",
            "5, * * * *",
            ",5 * * * *",
        ] {
            let e = parse_expression(expr).expect_err(expr);
            assert!(e.contains("empty list item"), "{expr}: {e}");
        }
        // The fuzzer's input, form feeds and all.
        let start = "*\u{c},\u{c}\n*\u{c},\u{c},\n";
        let end = "\n,\n*\u{c},\u{c}\n*\u{c}0";
        assert!(Window::new(start, end, 1).is_err());
        assert!(parse_windows("* , * * * -> 0 1 * * * = 2").is_err());
        // Lists with every item present still parse.
        assert!(parse_expression("0,30 8,12 * * 1,3,5").is_ok());
    }

    #[test]
    fn a_remembered_search_gives_the_same_answers_as_a_fresh_one() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let cases = [
            ("0 8 * * 1-5", "0 20 * * 1-5"),
            ("30 1 * * *", "30 3 * * *"), // across the DST change in Berlin
            ("0 22 * * *", "0 6 * * *"),  // over midnight
        ];
        let from = at(tz, 2026, 3, 28, 0, 0);
        for (start, end) in cases {
            let remembered = Window::new(start, end, 1).unwrap();
            // Every 13 minutes for three days: forward, as a clock goes.
            for step in 0..(3 * 24 * 60 / 13) {
                let now = from + chrono::Duration::minutes(13 * step);
                let fresh = Window::new(start, end, 1).unwrap().is_active(now, tz);
                assert_eq!(
                    remembered.is_active(now, tz),
                    fresh,
                    "{start} -> {end} at {now}"
                );
            }
            // Back in time, or in another zone: searched again.
            assert_eq!(
                remembered.is_active(from, chrono_tz::UTC),
                Window::new(start, end, 1)
                    .unwrap()
                    .is_active(from, chrono_tz::UTC)
            );
        }
    }

    /// Found by the audit (H4): 260 windows on 31 February made one IsActive search for 77 s.
    #[test]
    fn an_expression_that_never_comes_within_two_years_is_refused_at_parse() {
        for never in ["0 0 30 2 *", "0 0 31 2 *", "0 0 31 4 *", "0 0 31 6,9,11 *"] {
            let e = parse_expression(never).expect_err(never);
            assert!(
                e.contains("does not occur within two years"),
                "{never}: {e}"
            );
        }
        let e = Window::new("0 0 1 1 *", "0 0 31 2 *", 1).unwrap_err();
        assert!(e.contains("`0 0 31 2 *`"), "{e}");
        // Rare but real dates are kept: once a year, the last day of February, a fifth Friday.
        for rare in [
            "0 0 1 1 *",
            "0 0 L 2 *",
            "0 0 * * 5#5",
            "0 0 31 12 *",
            "0 0 15W 2 *",
        ] {
            assert!(parse_expression(rare).is_ok(), "{rare}");
        }
    }

    #[test]
    fn more_than_sixteen_windows_are_refused_before_any_is_parsed() {
        let one = "0 8 * * * -> 0 9 * * * = 1";
        assert!(parse_windows(&vec![one; MAX_WINDOWS].join(";")).is_ok());
        // The 17th is not even an expression: refused for the count, not for what it says.
        let mut many = vec![one; MAX_WINDOWS];
        many.push("0 0 31 2 * -> nonsense = 1");
        let e = parse_windows(&many.join(";")).unwrap_err();
        assert!(e.contains("17 windows; at most 16"), "{e}");
    }

    #[test]
    fn spellings_of_one_expression_share_one_parse() {
        let a = parse_expression("0 8 * * mon-fri").unwrap();
        let b = parse_expression("  0   8 *\t* MON-FRI ").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = parse_expression("0 8 * * 1-5").unwrap();
        assert_eq!(*a, *c, "the same times");
    }

    #[test]
    fn a_plan_needs_a_search_only_when_its_remembered_occurrences_have_passed() {
        let plan = business_hours(chrono_tz::UTC);
        let now = Utc.with_ymd_and_hms(2026, 6, 3, 9, 0, 0).unwrap();
        assert!(plan.needs_search(now));
        plan.state(now);
        assert!(!plan.needs_search(now + chrono::Duration::minutes(30)));
        // Past 20:00 the remembered end has come: searched again.
        assert!(plan.needs_search(now + chrono::Duration::hours(11)));
    }

    #[test]
    fn is_active_answers_quickly_for_every_accepted_expression_kind() {
        let now = Utc::now();
        for start in [
            "0 8 * * 1-5",
            "0 0 L 2 *",
            "0 0 * * 5#5",
            "0 0 15W 2 *",
            "*/60 * * * *",
        ] {
            let w = Window::new(start, "0 1 * * *", 1).unwrap();
            let started = std::time::Instant::now();
            for _ in 0..10 {
                w.is_active(now, chrono_tz::Europe::Berlin);
            }
            let each = started.elapsed() / 10;
            assert!(
                each < std::time::Duration::from_millis(50),
                "{start}: {each:?}"
            );
        }
    }

    fn at(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .expect("valid local time")
            .with_timezone(&Utc)
    }

    fn business_hours(tz: Tz) -> CronPlan {
        CronPlan {
            timezone: tz,
            windows: vec![Window::new("0 8 * * 1-5", "0 20 * * 1-5", 5).unwrap()],
        }
    }

    #[test]
    fn a_weekday_window_is_active_inside_and_inactive_outside() {
        let plan = business_hours(chrono_tz::America::New_York);
        let ny = chrono_tz::America::New_York;
        // Wednesday 2026-11-25.
        assert!(plan.state(at(ny, 2026, 11, 25, 9, 0)).active);
        assert_eq!(plan.state(at(ny, 2026, 11, 25, 9, 0)).replicas, 5);
        assert!(!plan.state(at(ny, 2026, 11, 25, 7, 59)).active);
        assert!(!plan.state(at(ny, 2026, 11, 25, 20, 0)).active);
        // Saturday: the weekday range keeps it closed.
        assert!(!plan.state(at(ny, 2026, 11, 28, 12, 0)).active);
        assert_eq!(plan.state(at(ny, 2026, 11, 28, 12, 0)).replicas, 0);
    }

    #[test]
    fn the_window_opens_exactly_at_its_start_minute() {
        let ny = chrono_tz::America::New_York;
        let plan = business_hours(ny);
        assert!(plan.state(at(ny, 2026, 11, 25, 8, 0)).active);
    }

    #[test]
    fn the_same_local_hours_hold_across_new_york_dst_changes() {
        let ny = chrono_tz::America::New_York;
        let plan = business_hours(ny);
        // Spring forward: Sunday 2026-03-08; Monday 9:00 local is 13:00 UTC (EDT).
        assert!(plan.state(at(ny, 2026, 3, 9, 9, 0)).active);
        assert_eq!(at(ny, 2026, 3, 9, 9, 0).format("%H").to_string(), "13");
        assert!(
            !plan
                .state(Utc.with_ymd_and_hms(2026, 3, 9, 11, 30, 0).unwrap())
                .active
        );
        // Fall back: Sunday 2026-11-01; Monday 8:00 local is 13:00 UTC (EST).
        assert!(
            !plan
                .state(Utc.with_ymd_and_hms(2026, 11, 2, 12, 30, 0).unwrap())
                .active
        );
        assert!(
            plan.state(Utc.with_ymd_and_hms(2026, 11, 2, 13, 0, 0).unwrap())
                .active
        );
    }

    #[test]
    fn a_window_that_starts_in_the_skipped_hour_still_opens_in_berlin() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-03-29 02:00-03:00 does not exist in Berlin; a window opening 02:30 must not be
        // lost for the day.
        let plan = CronPlan {
            timezone: berlin,
            windows: vec![Window::new("30 2 * * *", "0 6 * * *", 3).unwrap()],
        };
        assert!(plan.state(at(berlin, 2026, 3, 29, 4, 0)).active);
        assert!(!plan.state(at(berlin, 2026, 3, 29, 7, 0)).active);
        // Fall back on 2026-10-25: 02:30 happens twice; the window is open after it either way.
        assert!(plan.state(at(berlin, 2026, 10, 25, 4, 0)).active);
        assert!(!plan.state(at(berlin, 2026, 10, 25, 1, 0)).active);
    }

    #[test]
    fn a_window_that_crosses_midnight_is_active_on_both_sides() {
        let plan = CronPlan {
            timezone: chrono_tz::UTC,
            windows: vec![Window::new("0 22 * * *", "0 6 * * *", 2).unwrap()],
        };
        let utc = chrono_tz::UTC;
        assert!(plan.state(at(utc, 2026, 6, 1, 23, 0)).active);
        assert!(plan.state(at(utc, 2026, 6, 2, 3, 0)).active);
        assert!(!plan.state(at(utc, 2026, 6, 2, 12, 0)).active);
    }

    #[test]
    fn the_largest_active_window_wins() {
        let plan = CronPlan {
            timezone: chrono_tz::UTC,
            windows: parse_windows("0 8 * * * -> 0 20 * * * = 3\n0 11 * * * -> 0 14 * * * = 9")
                .unwrap(),
        };
        let utc = chrono_tz::UTC;
        assert_eq!(plan.state(at(utc, 2026, 6, 1, 9, 0)).replicas, 3);
        assert_eq!(plan.state(at(utc, 2026, 6, 1, 12, 0)).replicas, 9);
        assert_eq!(plan.state(at(utc, 2026, 6, 1, 21, 0)).replicas, 0);
    }

    #[test]
    fn a_window_whose_start_equals_its_end_is_refused() {
        let err = Window::new("0 8 * * *", "0  8 * * *", 1).unwrap_err();
        assert!(err.contains("same"), "{err}");
    }

    #[test]
    fn bad_windows_name_the_entry_and_the_problem() {
        let err = parse_windows("0 8 * * * -> 0 9 * * * = 2; 0 8 * * * = 2").unwrap_err();
        assert!(err.starts_with("window 2:"), "{err}");
        let err = parse_windows("0 8 * * * -> 0 9 * * * = lots").unwrap_err();
        assert!(err.contains("lots"), "{err}");
        assert!(parse_windows(" ; ").is_err());
        assert!(
            parse_expression("0 0 8 * * *").is_err(),
            "6 fields are refused"
        );
    }

    #[test]
    fn windows_share_the_parse_of_an_expression() {
        let a = Window::new("0 8 * * 1-5", "0 20 * * 1-5", 3).unwrap();
        let b = Window::new("0 8 * * 1-5", "0 21 * * 1-5", 4).unwrap();
        assert!(Arc::ptr_eq(&a.start, &b.start));
        assert!(!Arc::ptr_eq(&a.end, &b.end));
        // Shared, yet each window keeps its own remembered occurrences and answers.
        let now = Utc.with_ymd_and_hms(2026, 6, 3, 20, 30, 0).unwrap();
        assert!(!a.is_active(now, chrono_tz::UTC));
        assert!(b.is_active(now, chrono_tz::UTC));
        // Once no window holds an expression, the table lets it go.
        let text = "17 3 * * 2";
        let weak = Arc::downgrade(&parse_expression(text).unwrap());
        assert_eq!(weak.strong_count(), 0);
        assert!(parse_expression(text).is_ok());
    }

    #[test]
    fn the_table_of_parsed_expressions_stays_bounded() {
        for i in 0..1_000 {
            parse_expression(&format!("{} {} * * *", i % 60, i / 60)).unwrap();
        }
        // Nothing holds them: pruned whenever the table doubles.
        assert!(PARSED.lock().len() < 600, "{}", PARSED.lock().len());
    }

    #[test]
    fn windows_display_in_their_own_syntax() {
        let w = parse_windows("0 8  * * 1-5 -> 0 20 * * 1-5 = 5").unwrap();
        assert_eq!(w[0].to_string(), "0 8 * * 1-5 -> 0 20 * * 1-5 = 5");
    }
}
