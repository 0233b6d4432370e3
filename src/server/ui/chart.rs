//! The data usage chart: bytes per hour over the last 7 days, upload and
//! download stacked, drawn as SVG on the server (no script, no library:
//! the page arrives with its chart). Colours are SVG attributes, which the
//! strict Content-Security-Policy allows (inline `style` it would not).

use super::bytes;
use crate::server::api::types::{EnvironmentUsageView, HourView};
use maud::{Markup, html};

/// Chart geometry: one column per hour.
const COL: u32 = 5;
const HOURS: u32 = 7 * 24;
const LEFT: u32 = 64;
const TOP: u32 = 12;
const PLOT_H: u32 = 160;
const BOTTOM: u32 = 28;

/// Upload and download colours (distinct in colour and lightness, so the
/// chart reads in grey too).
pub const UP_COLOUR: &str = "#1f6feb";
/// See [`UP_COLOUR`].
pub const DOWN_COLOUR: &str = "#f0a020";

/// A ceiling above `max` that reads well on an axis: 1, 2 or 5 times a
/// power of ten.
pub fn nice_ceiling(max: u64) -> u64 {
    let mut p = 1u64;
    loop {
        for m in [1, 2, 5] {
            if let Some(v) = p.checked_mul(m)
                && v >= max
            {
                return v;
            }
        }
        match p.checked_mul(10) {
            Some(q) => p = q,
            None => return u64::MAX,
        }
    }
}

/// The SVG chart of `per_hour` (`[{hour, tls_up, tls_down}, ...]`, oldest
/// first), as a string.
pub fn svg(per_hour: &[HourView]) -> String {
    let width = LEFT + COL * HOURS + 8;
    let height = TOP + PLOT_H + BOTTOM;
    let max = per_hour.iter().map(|h| h.usage.tls_up + h.usage.tls_down).max().unwrap_or(0);
    let top = nice_ceiling(max.max(1000));
    let total_up: u64 = per_hour.iter().map(|h| h.usage.tls_up).sum();
    let total_down: u64 = per_hour.iter().map(|h| h.usage.tls_down).sum();
    let y = |v: u64| -> f64 { f64::from(PLOT_H) * (v as f64 / top as f64) };
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(&format!(
        "<svg class=\"chart\" id=\"usage-chart\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-labelledby=\"usage-title usage-desc\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"usage-title\">Data usage per hour, last 7 days</title>\
         <desc id=\"usage-desc\">{} up and {} down in total; the tallest hour is {}.</desc>",
        bytes(total_up),
        bytes(total_down),
        bytes(max)
    ));
    // Grid and the y axis: 0, half, top.
    for (frac, label) in [(0.0, "0 B".to_owned()), (0.5, bytes(top / 2)), (1.0, bytes(top))] {
        let gy = f64::from(TOP + PLOT_H) - f64::from(PLOT_H) * frac;
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\" stroke=\"#d0d7de\" stroke-width=\"1\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#57606a\">{label}</text>",
            LEFT + COL * HOURS,
            LEFT - 6,
            gy + 4.0
        ));
    }
    // Day boundaries (UTC midnights) with the day's date.
    for (i, h) in per_hour.iter().enumerate() {
        let t = h.hour;
        if t.rem_euclid(86_400) == 0 {
            let x = LEFT + COL * i as u32;
            let label = time::OffsetDateTime::from_unix_timestamp(t)
                .map(|d| format!("{} {:02}-{:02}", &d.weekday().to_string()[..3], u8::from(d.month()), d.day()))
                .unwrap_or_default();
            out.push_str(&format!(
                "<line x1=\"{x}\" x2=\"{x}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#d0d7de\" stroke-width=\"1\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#57606a\">{label}</text>",
                TOP + PLOT_H,
                x + 3,
                TOP + PLOT_H + 16
            ));
        }
    }
    // The bars: upload at the bottom, download above it.
    for (i, h) in per_hour.iter().enumerate() {
        let (up, down) = (h.usage.tls_up, h.usage.tls_down);
        if up + down == 0 {
            continue;
        }
        let x = LEFT + COL * i as u32;
        let base = f64::from(TOP + PLOT_H);
        let (hu, hd) = (y(up), y(down));
        let when = super::utc(h.hour);
        out.push_str(&format!(
            "<g class=\"bar\"><title>{when}: {} up, {} down</title>\
             <rect x=\"{x}\" y=\"{:.2}\" width=\"{}\" height=\"{hu:.2}\" fill=\"{UP_COLOUR}\"/>\
             <rect x=\"{x}\" y=\"{:.2}\" width=\"{}\" height=\"{hd:.2}\" fill=\"{DOWN_COLOUR}\"/></g>",
            bytes(up),
            bytes(down),
            base - hu,
            COL - 1,
            base - hu - hd,
            COL - 1,
        ));
    }
    out.push_str(&format!(
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#57606a\" stroke-width=\"1\"/></svg>",
        TOP + PLOT_H
    ));
    out
}

/// The usage section of an environment's page: totals, the chart with its
/// legend, and the days as a table (what a screen reader reads).
/// `None` when the usage could not be read.
pub fn usage_section(usage: Option<&EnvironmentUsageView>, _now: i64) -> Markup {
    let Some(usage) = usage else {
        return html! { p.muted { "Usage is not available." } };
    };
    let (today, total) = (&usage.today, &usage.total);
    html! {
        p {
            "Today: " strong { (bytes(today.tls_up)) } " up, " strong { (bytes(today.tls_down)) } " down, "
            (today.polls) @if today.polls == 1 { " poll" } @else { " polls" } ". Last 7 days: " strong { (bytes(total.tls_up + total.tls_down)) } "."
        }
        p.legend {
            span.swatch.up {} " upload (agent to server) "
            span.swatch.down {} " download"
        }
        div.chartbox { (super::raw(svg(&usage.per_hour))) }
        details {
            summary { "Per day" }
            table.list {
                thead { tr { th { "Day (UTC)" } th.num { "Up" } th.num { "Down" } th.num { "Polls" } } }
                tbody { @for d in &usage.per_day {
                    tr { td { (d.day) } td.num { (bytes(d.usage.tls_up)) } td.num { (bytes(d.usage.tls_down)) } td.num { (d.usage.polls) } }
                } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::types::UsageView;

    #[test]
    fn the_axis_ceiling_is_1_2_or_5_times_a_power_of_ten() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1000), 1000);
        assert_eq!(nice_ceiling(1001), 2000);
        assert_eq!(nice_ceiling(3100), 5000);
        assert_eq!(nice_ceiling(7_000_000), 10_000_000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_chart_draws_one_bar_per_hour_with_traffic_and_days() {
        let midnight = 1_764_288_000; // 2025-11-28 00:00 UTC
        let hours: Vec<HourView> = (0..168)
            .map(|i| {
                let t = midnight - 24 * 3600 + i * 3600;
                let (up, down) = if i % 10 == 0 { (500, 300) } else { (0, 0) };
                HourView { hour: t, usage: UsageView { tls_up: up, tls_down: down, ..UsageView::default() } }
            })
            .collect();
        let svg = svg(&hours);
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 17);
        assert_eq!(svg.matches(&format!("fill=\"{UP_COLOUR}\"")).count(), 17);
        assert!(svg.contains("500 B up, 300 B down"));
        assert!(svg.contains("Fri 11-28"), "{svg}");
        assert!(!svg.contains("style="), "the CSP refuses inline style");
    }
}
