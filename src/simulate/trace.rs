//! Traces: the traffic a simulation replays.
//!
//! A trace is a CSV file (documented in `docs/simulate.md`):
//!
//! ```text
//! # blend-scaler trace
//! # timezone: Europe/London
//! time,messages_per_second,requests_per_second
//! 2026-06-03T00:00:00,4.2,120
//! 2026-06-03T00:01:00,4.0,118
//! ```
//!
//! Lines starting with `#` are comments; a `# timezone: ZONE` comment (IANA name, default
//! `UTC`) says how times without an offset are read. `time` is a local date-time
//! (`YYYY-MM-DDTHH:MM:SS`) or an RFC 3339 instant with an offset. Each row's rates hold from its
//! time until the next row's; the last row lasts as long as the one before it.
//! `messages_per_second` is the arrival rate at the Service Bus entity, `requests_per_second`
//! the value the Prometheus query returns.

#[cfg(test)]
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The longest trace accepted: a week, at one-second resolution.
pub const MAX_SECONDS: usize = 7 * 24 * 3600;

/// A trace expanded to one value per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The instant of the first second.
    pub start: DateTime<Utc>,
    /// How the trace's local times were written; the report prints times in it.
    pub timezone: Tz,
    /// Message arrivals during each second.
    pub messages: Vec<f64>,
    /// The Prometheus query's value during each second.
    pub requests: Vec<f64>,
}

impl Trace {
    pub fn seconds(&self) -> usize {
        self.messages.len()
    }

    /// The instant `t` seconds after the start.
    pub fn at(&self, t: u64) -> DateTime<Utc> {
        self.start + chrono::Duration::seconds(t as i64)
    }

    /// Parses the CSV form. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut timezone: Tz = chrono_tz::UTC;
        let mut rows: Vec<(usize, &str)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some((key, value)) = comment.split_once(':')
                    && key.trim().eq_ignore_ascii_case("timezone")
                {
                    let value = value.trim();
                    timezone = value.parse().map_err(|_| {
                        format!("line {}: `{value}` is not an IANA time zone", i + 1)
                    })?;
                }
                continue;
            }
            if !line.is_empty() {
                rows.push((i + 1, line));
            }
        }
        let Some(((header_line, header), rows)) = rows.split_first() else {
            return Err("the trace is empty".into());
        };
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let want = ["time", "messages_per_second", "requests_per_second"];
        if columns != want {
            return Err(format!(
                "line {header_line}: the header must be `{}`",
                want.join(",")
            ));
        }
        if rows.is_empty() {
            return Err("the trace has a header but no rows".into());
        }

        let mut points: Vec<(DateTime<Utc>, f64, f64)> = Vec::with_capacity(rows.len());
        for (line_no, line) in rows {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [time, messages, requests] = fields[..] else {
                return Err(format!(
                    "line {line_no}: expected 3 fields, found {}",
                    fields.len()
                ));
            };
            let at = parse_time(time, timezone).map_err(|e| format!("line {line_no}: {e}"))?;
            let rate = |name: &str, text: &str| -> Result<f64, String> {
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    _ => Err(format!(
                        "line {line_no}: {name} `{text}` is not a number >= 0"
                    )),
                }
            };
            let messages = rate("messages_per_second", messages)?;
            let requests = rate("requests_per_second", requests)?;
            if let Some((prev, _, _)) = points.last()
                && at <= *prev
            {
                return Err(format!(
                    "line {line_no}: `{time}` is not after the row before it"
                ));
            }
            points.push((at, messages, requests));
        }

        let start = points[0].0;
        let mut trace = Trace {
            start,
            timezone,
            messages: Vec::new(),
            requests: Vec::new(),
        };
        for (i, (at, m, r)) in points.iter().enumerate() {
            let length = match points.get(i + 1) {
                Some((next, _, _)) => (*next - *at).num_seconds(),
                None if i > 0 => (*at - points[i - 1].0).num_seconds(),
                None => 1,
            };
            if trace.messages.len() + length as usize > MAX_SECONDS {
                return Err(format!(
                    "the trace is longer than {} days",
                    MAX_SECONDS / 86_400
                ));
            }
            for _ in 0..length {
                trace.messages.push(*m);
                trace.requests.push(*r);
            }
        }
        Ok(trace)
    }
}

fn parse_time(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .map_err(|_| {
            format!("`{text}` is not a time (YYYY-MM-DDTHH:MM:SS, or RFC 3339 with an offset)")
        })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("`{text}` does not exist in {tz} (a daylight-saving gap)"))
}

/// Writes rows of `(local time, messages/s, requests/s)` in the CSV form, times without offset.
#[cfg(test)]
pub fn to_csv(comments: &[String], timezone: Tz, rows: &[(NaiveDateTime, f64, f64)]) -> String {
    let mut out = String::new();
    for c in comments {
        let _ = writeln!(out, "# {c}");
    }
    let _ = writeln!(out, "# timezone: {timezone}");
    out.push_str("time,messages_per_second,requests_per_second\n");
    for (t, m, r) in rows {
        let _ = writeln!(out, "{},{m},{r}", t.format("%Y-%m-%dT%H:%M:%S"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_holds_until_the_next_and_the_last_as_long_as_the_one_before() {
        let t = Trace::parse(
            "# timezone: Europe/London\n\
             time,messages_per_second,requests_per_second\n\
             2026-06-03T08:00:00,2,100\n\
             2026-06-03T08:00:10,0.5,50\n\
             2026-06-03T08:00:15,7,70\n",
        )
        .unwrap();
        assert_eq!(t.seconds(), 20);
        assert_eq!(t.messages[9], 2.0);
        assert_eq!(t.messages[10], 0.5);
        assert_eq!(t.requests[19], 70.0);
        // 08:00 in London in June is 07:00 UTC.
        assert_eq!(t.start.to_rfc3339(), "2026-06-03T07:00:00+00:00");
    }

    #[test]
    fn rfc3339_times_carry_their_own_offset() {
        let t = Trace::parse(
            "time,messages_per_second,requests_per_second\n\
             2026-06-03T08:00:00+02:00,1,1\n\
             2026-06-03T06:00:30Z,1,1\n",
        )
        .unwrap();
        assert_eq!(t.seconds(), 60);
        assert_eq!(t.timezone, chrono_tz::UTC);
    }

    #[test]
    fn bad_traces_name_the_line_and_the_problem() {
        let head = "time,messages_per_second,requests_per_second\n";
        let err = Trace::parse(&format!(
            "{head}2026-06-03T08:00:00,1,1\n2026-06-03T07:59:00,1,1\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("line 3:") && err.contains("not after"),
            "{err}"
        );
        let err = Trace::parse(&format!("{head}2026-06-03T08:00:00,-1,1\n")).unwrap_err();
        assert!(err.contains("messages_per_second"), "{err}");
        let err = Trace::parse("time,messages\n").unwrap_err();
        assert!(err.contains("header"), "{err}");
        let err = Trace::parse("# timezone: Mars/Olympus\n").unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
        // 2026-03-29 01:30 does not exist in London.
        let err = Trace::parse(&format!(
            "# timezone: Europe/London\n{head}2026-03-29T01:30:00,1,1\n"
        ))
        .unwrap_err();
        assert!(err.contains("daylight-saving"), "{err}");
    }

    #[test]
    fn what_to_csv_writes_parses_back_to_the_same_rates() {
        let start =
            NaiveDateTime::parse_from_str("2026-06-03T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
        let rows: Vec<_> = (0..3)
            .map(|i| (start + chrono::Duration::minutes(i), i as f64 * 1.5, 10.0))
            .collect();
        let csv = to_csv(&["test".into()], chrono_tz::Asia::Tokyo, &rows);
        let t = Trace::parse(&csv).unwrap();
        assert_eq!(t.timezone, chrono_tz::Asia::Tokyo);
        assert_eq!(t.seconds(), 180);
        assert_eq!(t.messages[179], 3.0);
    }
}
