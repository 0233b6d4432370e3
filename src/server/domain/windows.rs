//! Deploy windows: the hours of the day a stack's deploy may start on an
//! environment ("01:00-05:00 UTC+02:00"), set per stack and per
//! environment.
//!
//! A deploy queued while a window that applies is closed (its stack's or
//! its environment's; both when both are set) is not sent: the deployment
//! waits (`waiting`, with `retry_at` at the next minute every window is
//! open), and the retry scheduler ([`super::stacks::retry_due`]) sends it
//! then, checking the windows again, so a window changed or a server down
//! across the opening only moves it to the next one. A deploy sent in its
//! window that the agent has not taken when the window closes (its link
//! down) is taken back and waits for the next one
//! ([`super::stacks::hold_closed`]). Removals are not held: taking a
//! stack off is the operator's call at once.
//!
//! Windows are written in a fixed offset from UTC, or in UTC: the server
//! cannot know a device's local time (an agent in a container runs in
//! UTC), and an offset reads the same on every replica. A window that
//! ends before it starts runs over midnight ("22:00-04:00").

use std::fmt;

/// The farthest ahead the next opening is looked for: two days covers any
/// two daily windows that meet at all.
const LOOK_AHEAD_MINUTES: i64 = 2 * 24 * 60;

/// When windows that never meet are looked at again (one may change).
pub const NEVER_RECHECK: i64 = 24 * 3600;

/// A daily window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its start, in minutes after midnight (local to `offset`).
    pub start: i64,
    /// Its end (exclusive), likewise; before `start`: over midnight.
    pub end: i64,
    /// Its time zone, in minutes east of UTC.
    pub offset: i64,
}

/// `HH:MM` as minutes of the day (`24:00` too, as an end).
fn hh_mm(text: &str) -> Option<i64> {
    let text = text.trim();
    let (h, m) = text.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    let ok = text.len() == 5 && (0..=24).contains(&h) && (0..60).contains(&m) && h * 60 + m <= 24 * 60;
    ok.then_some(h * 60 + m)
}

impl Window {
    /// Parses `HH:MM-HH:MM`, then `UTC`, `UTC+H[H][:MM]` or
    /// `UTC-H[H][:MM]` (no zone: UTC).
    ///
    /// # Errors
    /// What a window is, naming the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{:?} is not a window: write HH:MM-HH:MM, then UTC or UTC+HH:MM (\"01:00-05:00 UTC+02:00\"; \
                 22:00-04:00 runs over midnight)",
                text.chars().take(60).collect::<String>()
            )
        };
        let t = text.trim().replace('–', "-");
        let (hours, zone) = match t.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => (&t[..i], t[i..].trim()),
            None => (t.as_str(), ""),
        };
        let (a, b) = hours.split_once('-').ok_or_else(bad)?;
        let (start, end) = (hh_mm(a).ok_or_else(bad)?, hh_mm(b).ok_or_else(bad)?);
        let offset = match zone.to_ascii_uppercase().as_str() {
            "" | "UTC" | "Z" => 0,
            z => {
                let rest = z.strip_prefix("UTC").ok_or_else(bad)?;
                let (sign, rest) = match rest.as_bytes().first() {
                    Some(b'+') => (1, &rest[1..]),
                    Some(b'-') => (-1, &rest[1..]),
                    _ => return Err(bad()),
                };
                let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
                let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
                if !(0..=14).contains(&h) || !(0..60).contains(&m) || h * 60 + m > 14 * 60 {
                    return Err(bad());
                }
                sign * (h * 60 + m)
            }
        };
        let (start, end) = (start % (24 * 60), end % (24 * 60));
        if start == end {
            return Err(format!("{}: a window opens and closes at different times", bad()));
        }
        Ok(Self { start, end, offset })
    }

    /// Whether it is open at `t` (seconds since the epoch).
    #[must_use]
    pub fn contains(&self, t: i64) -> bool {
        let m = (t.div_euclid(60) + self.offset).rem_euclid(24 * 60);
        if self.start < self.end { (self.start..self.end).contains(&m) } else { m >= self.start || m < self.end }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}-{:02}:{:02} UTC", self.start / 60, self.start % 60, self.end / 60, self.end % 60)?;
        if self.offset != 0 {
            let a = self.offset.abs();
            write!(f, "{}{:02}:{:02}", if self.offset < 0 { '-' } else { '+' }, a / 60, a % 60)?;
        }
        Ok(())
    }
}

/// Checks a window as stored: empty (none) or one [`Window::parse`] takes;
/// returns it written the one way ([`Window`]'s `Display`).
///
/// # Errors
/// What a window is.
pub fn normalize(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    Window::parse(text).map(|w| w.to_string())
}

/// The windows among stored texts (empty ones and any that no longer parse
/// are none: a window is checked when it is set).
#[must_use]
pub fn windows(texts: &[&str]) -> Vec<Window> {
    texts.iter().filter(|t| !t.trim().is_empty()).filter_map(|t| Window::parse(t).ok()).collect()
}

/// When a deploy may start: `Some(now)` when every window is open now
/// (or there is none), else the next minute they all are, or `None` when
/// they never meet.
#[must_use]
pub fn next_open(windows: &[Window], now: i64) -> Option<i64> {
    if windows.iter().all(|w| w.contains(now)) {
        return Some(now);
    }
    let minute = now.div_euclid(60);
    (1..=LOOK_AHEAD_MINUTES).map(|k| (minute + k) * 60).find(|t| windows.iter().all(|w| w.contains(*t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-08 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_796_688_000;

    #[test]
    fn windows_parse_in_utc_or_an_offset_and_are_written_one_way() {
        for (text, shown) in [
            ("01:00-05:00", "01:00-05:00 UTC"),
            (" 01:00-05:30 utc ", "01:00-05:30 UTC"),
            ("01:00–05:00 UTC+2", "01:00-05:00 UTC+02:00"),
            ("22:00-04:00 UTC-05:30", "22:00-04:00 UTC-05:30"),
            ("20:00-24:00", "20:00-00:00 UTC"),
        ] {
            assert_eq!(normalize(text).as_deref(), Ok(shown), "{text}");
        }
        assert_eq!(normalize("  "), Ok(String::new()));
        for bad in [
            "1-5",
            "1:00-5:00",
            "01:00",
            "25:00-01:00",
            "01:60-02:00",
            "01:00-01:00",
            "01:00-02:00 CET",
            "01:00-02:00 UTC+15",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_next_opening_is_the_first_minute_every_window_is_open() {
        let w = Window::parse("01:00-05:00 UTC+02:00").unwrap(); // 23:00-03:00 UTC
        assert!(w.contains(MIDNIGHT) && w.contains(MIDNIGHT - 3600) && !w.contains(MIDNIGHT + 3 * 3600));
        assert_eq!(next_open(&[w], MIDNIGHT + 5), Some(MIDNIGHT + 5), "open now: now");
        assert_eq!(next_open(&[w], MIDNIGHT + 4 * 3600), Some(MIDNIGHT + 23 * 3600));
        let night = Window::parse("22:00-04:00").unwrap();
        assert_eq!(next_open(&[w, night], MIDNIGHT + 12 * 3600), Some(MIDNIGHT + 23 * 3600));
        let early = Window::parse("05:00-06:00").unwrap();
        assert_eq!(next_open(&[night, early], MIDNIGHT), None, "they never meet");
        assert_eq!(next_open(&[], MIDNIGHT + 7), Some(MIDNIGHT + 7));
    }
}
