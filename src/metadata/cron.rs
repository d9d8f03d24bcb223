//! The cron keys: time zone, one window or several.

use super::*;

impl Parser<'_> {
    pub(super) fn cron(&mut self) -> Option<CronPlan> {
        let tz_text = self.get(keys::TIMEZONE).unwrap_or("UTC").to_string();
        let timezone = match tz_text.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.err(
                    keys::TIMEZONE,
                    format!("`{tz_text}` is not an IANA time zone such as `Europe/Berlin`"),
                );
                None
            }
        };
        let windows = if let Some(text) = self.get(keys::WINDOWS).map(str::to_string) {
            for key in [keys::START, keys::END, keys::DESIRED_REPLICAS] {
                if self.m.contains_key(key) {
                    self.err(key, "cannot be set together with `windows`");
                }
            }
            match crate::cron::parse_windows(&text) {
                Ok(w) => Some(w),
                Err(e) => {
                    self.err(keys::WINDOWS, e);
                    None
                }
            }
        } else {
            let start = self.required(keys::START, "for the cron signal");
            let end = self.required(keys::END, "with `start`");
            let replicas = if self.has(keys::DESIRED_REPLICAS) {
                self.whole(keys::DESIRED_REPLICAS)
            } else {
                self.err(keys::DESIRED_REPLICAS, "is required with `start`");
                None
            };
            let (start, end, replicas) = (start?, end?, replicas?);
            let window = match (
                crate::cron::parse_expression(&start),
                crate::cron::parse_expression(&end),
            ) {
                (Err(e), _) => {
                    self.err(keys::START, e);
                    return None;
                }
                (_, Err(e)) => {
                    self.err(keys::END, e);
                    return None;
                }
                _ => crate::cron::Window::new(&start, &end, replicas),
            };
            match window {
                Ok(w) => Some(vec![w]),
                Err(e) => {
                    self.err(keys::END, e);
                    None
                }
            }
        };
        Some(CronPlan {
            timezone: timezone?,
            windows: windows?,
        })
    }
}
