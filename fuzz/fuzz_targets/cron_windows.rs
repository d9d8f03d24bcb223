//! Cron windows: `parse_windows` and `parse_expression` on arbitrary text, then
//! `Window::is_active` at arbitrary instants in arbitrary IANA zones (DST gaps included).
#![no_main]

use arbitrary::Arbitrary;
use blend_scaler::cron::{self, Window};
use chrono::{DateTime, Utc};
use chrono_tz::{TZ_VARIANTS, Tz};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    windows: String,
    start: String,
    end: String,
    /// Seconds since the epoch, folded into 1900..2200.
    instant: i64,
    /// A later instant, this many seconds on (folded into 0..10 days).
    later: u32,
    zone: u16,
}

fn instant(secs: i64) -> DateTime<Utc> {
    const FROM: i64 = -2_208_988_800; // 1900-01-01
    const SPAN: i64 = 9_467_280_000; // 300 years
    DateTime::from_timestamp(FROM + secs.rem_euclid(SPAN), 0).expect("in range")
}

fuzz_target!(|input: Input| {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{input:?}");
    }
    let now = instant(input.instant);
    let tz: Tz = TZ_VARIANTS[input.zone as usize % TZ_VARIANTS.len()];
    if let Ok(windows) = cron::parse_windows(&input.windows) {
        assert!(!windows.is_empty(), "an accepted `windows` has a window");
        for w in &windows {
            let _ = w.is_active(now, tz);
            let _ = w.to_string();
        }
    }
    let _ = cron::parse_expression(&input.start);
    if let Ok(w) = Window::new(&input.start, &input.end, 1) {
        let _ = w.is_active(now, tz);
        // The window remembers its last search: a later answer agrees with a fresh window's.
        let later = now + chrono::Duration::seconds(i64::from(input.later % 864_000));
        let fresh = Window::new(&input.start, &input.end, 1).expect("parsed once");
        assert_eq!(
            w.is_active(later, tz),
            fresh.is_active(later, tz),
            "remembered and fresh disagree at {later} in {tz}"
        );
    }
});
