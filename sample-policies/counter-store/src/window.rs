//! Fixed windows: calendar minutes, hours, days and months in UTC, or a number of seconds
//! counted from the Unix epoch.

use serde::Deserialize;

/// A fixed counting window. Every replica computes the same bounds from the same clock time.
///
/// ```
/// use counter_store::Window;
///
/// // 2026-12-06T10:39:09Z
/// let now = 1_796_553_549;
/// let (start, end) = Window::Month.bounds(now);
/// assert_eq!((start, end), (1_796_083_200, 1_798_761_600)); // Dec 1 .. Jan 1
/// assert_eq!(Window::Seconds(10).bounds(now), (1_796_553_540, 1_796_553_550));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WindowParam")]
pub enum Window {
    /// A calendar minute.
    Minute,
    /// A calendar hour.
    Hour,
    /// A calendar day (UTC).
    Day,
    /// A calendar month (UTC).
    Month,
    /// `N` seconds, aligned to the Unix epoch (at least 1).
    Seconds(u64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WindowParam {
    Name(String),
    Seconds { seconds: u64 },
}

impl TryFrom<WindowParam> for Window {
    type Error = String;

    fn try_from(param: WindowParam) -> Result<Self, String> {
        match param {
            WindowParam::Name(name) => match name.as_str() {
                "minute" => Ok(Window::Minute),
                "hour" => Ok(Window::Hour),
                "day" => Ok(Window::Day),
                "month" => Ok(Window::Month),
                other => Err(format!(
                    "unknown window `{other}`: use minute, hour, day, month or {{seconds: N}}"
                )),
            },
            WindowParam::Seconds { seconds: 0 } => Err("a window lasts at least 1 second".into()),
            WindowParam::Seconds { seconds } => Ok(Window::Seconds(seconds)),
        }
    }
}

const DAY: u64 = 86_400;

impl Window {
    /// The window holding `now` (seconds since the Unix epoch): `[start, end)`.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| {
            let start = now - now % len;
            (start, start.saturating_add(len))
        };
        match self {
            Window::Minute => fixed(60),
            Window::Hour => fixed(3_600),
            Window::Day => fixed(DAY),
            Window::Seconds(len) => fixed(len.max(1)),
            Window::Month => {
                let (year, month, _) = civil_from_days(now / DAY);
                let start = days_from_civil(year, month, 1) * DAY;
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (start, days_from_civil(next_year, next_month, 1) * DAY)
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), for dates from 1970 on (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01, for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows_start_and_end_on_utc_boundaries() {
        // 2024-02-29T23:59:59Z, a leap day.
        let t = 1_709_251_199;
        assert_eq!(Window::Minute.bounds(t), (t - 59, t + 1));
        assert_eq!(Window::Hour.bounds(t), (t - 3_599, t + 1));
        assert_eq!(Window::Day.bounds(t), (t + 1 - DAY, t + 1));
        // February 2024 .. March 2024.
        assert_eq!(Window::Month.bounds(t), (1_706_745_600, t + 1));
        // December rolls over to January of the next year.
        assert_eq!(
            Window::Month.bounds(1_798_761_599),
            (1_796_083_200, 1_798_761_600)
        );
        for days in [0, 59, 365, 10_000, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn windows_parse_from_names_or_seconds_and_reject_the_rest() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Window>(v);
        assert_eq!(parse(serde_json::json!("day")).ok(), Some(Window::Day));
        assert_eq!(
            parse(serde_json::json!({"seconds": 2})).ok(),
            Some(Window::Seconds(2))
        );
        assert!(parse(serde_json::json!({"seconds": 0})).is_err());
        let err = parse(serde_json::json!("week")).expect_err("no weeks");
        assert!(
            err.to_string().contains("minute, hour, day, month"),
            "{err}"
        );
    }
}
