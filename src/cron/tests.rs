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

/// docs/security.md "No tenant can stall another": 260 windows on 31 February made one IsActive search for 77 s.
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
