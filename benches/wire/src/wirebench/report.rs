//! The benchmark's tables (markdown) and its chart (SVG).

use std::fmt::Write as _;

use super::{Report, SessionFigures, Side};

/// `12307` as `12,307`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as B, KB or MB (powers of 1,000, as data plans count).
pub fn size(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        _ => format!("{:.2} MB", n as f64 / 1e6),
    }
}

fn ratio(baseline: u64, tern: u64) -> String {
    if tern == 0 { "–".into() } else { format!("{:.1}×", baseline as f64 / tern as f64) }
}

fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn row(out: &mut String, name: &str, polls: &str, t: &Side, b: &Side) {
    let _ = writeln!(
        out,
        "| {name} | {polls} | {} | {} | {} | {} | {} | {} | {} |",
        thousands(t.up.bytes),
        thousands(t.down.bytes),
        thousands(t.bytes()),
        thousands(t.packets()),
        thousands(b.bytes()),
        thousands(b.packets()),
        ratio(b.bytes(), t.bytes())
    );
}

/// One run's table, with its link, machine and the notes that go with it.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let p = &r.profile;
    let _ = writeln!(
        out,
        "**{}**; polls every {} s (ping, snapshot and command timers together); {}; {}.\n",
        p.label,
        p.interval,
        r.machine,
        r.date.get(..10).unwrap_or(&r.date)
    );
    let _ = writeln!(
        out,
        "| scenario | polls (tern / baseline) | tern up | tern down | tern total | tern packets | baseline total | baseline packets | baseline ÷ tern |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &r.scenarios {
        row(&mut out, &s.name, &format!("{} / {}", s.tern.polls, s.baseline.polls), &s.tern, &s.baseline);
        if s.key.starts_with("idle_") {
            let (t, b) = (s.tern.per_poll(), s.baseline.per_poll());
            let _ = writeln!(
                out,
                "| … one poll (median cycle) | | | | **{}** | | {} | | {} |",
                thousands(t),
                thousands(b),
                ratio(b, t)
            );
        }
    }
    for (name, new) in [("kept alive", false), ("new connection every poll", true)] {
        // Left out of a run with --skip-new-connection: no row, not 0 B.
        if new && r.scenario("idle_new_connection").is_none() {
            continue;
        }
        let (t, b) = (r.tern_per_day(new), r.baseline_per_day(new));
        let _ = writeln!(
            out,
            "| **bytes per day, idle, 60 s intervals, {name}** | 1,440 | | | **{}** | | {} | | {} |",
            size(t),
            size(b),
            ratio(b, t)
        );
    }
    if let Some(b) = r.baseline_aged_per_day() {
        let t = r.tern_per_day(false);
        let _ = writeln!(
            out,
            "| **bytes per day, idle, 60 s intervals, kept alive, the baseline's host as in the field** | 1,440 | | | **{}** | | {} | | {} |",
            size(t),
            size(b),
            ratio(b, t)
        );
    }
    let (t, b) = r.churn_above_idle();
    let _ = writeln!(
        out,
        "\nThe churn trace above idling (its bytes minus as many idle polls): tern {} B, baseline {} B ({}).",
        thousands(t),
        thousands(b),
        ratio(b, t)
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "Host: {}. Event to server (churn trace), median / 90th percentile / max: from the docker command's \
         return, tern {} / {} / {} ms, baseline {} / {} / {} ms; from the start of the poll that carries it \
         (the delivery), tern {} / {} / {} ms, baseline {} / {} / {} ms{}.",
        r.host,
        thousands(percentile(&l.tern_ms, 0.5)),
        thousands(percentile(&l.tern_ms, 0.9)),
        thousands(l.tern_ms.iter().copied().max().unwrap_or(0)),
        thousands(percentile(&l.baseline_ms, 0.5)),
        thousands(percentile(&l.baseline_ms, 0.9)),
        thousands(l.baseline_ms.iter().copied().max().unwrap_or(0)),
        thousands(percentile(&l.tern_delivery_ms, 0.5)),
        thousands(percentile(&l.tern_delivery_ms, 0.9)),
        thousands(l.tern_delivery_ms.iter().copied().max().unwrap_or(0)),
        thousands(percentile(&l.baseline_delivery_ms, 0.5)),
        thousands(percentile(&l.baseline_delivery_ms, 0.9)),
        thousands(l.baseline_delivery_ms.iter().copied().max().unwrap_or(0)),
        if l.missed.is_empty() { String::new() } else { format!("; not seen in time: {}", l.missed.join(", ")) }
    );
    let a = &r.agent;
    if a.idle_polls > 0 {
        let _ = writeln!(
            out,
            "The agent ({} build, a {:.1} MB binary; its threads included): {:.2} ms of CPU per idle poll, \
             {:.2} ms per poll during the churn trace; {:.1} MB resident after the trace ({:.1} MB anonymous, \
             {:.1} MB of mapped files; peak {:.1} MB).",
            if a.release { "release" } else { "debug" },
            a.binary_bytes as f64 / 1e6,
            a.idle_per_poll(),
            a.churn_per_poll(),
            a.rss_kib as f64 / 1024.0,
            a.anon_kib as f64 / 1024.0,
            a.file_kib as f64 / 1024.0,
            a.peak_rss_kib as f64 / 1024.0
        );
    }
    if let Some(x) = &r.session {
        session_markdown(&mut out, r, x);
    }
    let c = &r.crosscheck;
    let _ = writeln!(
        out,
        "Link counters against the TUN devices' own (whole run): up {} / {} B, {} / {} packets; down {} / {} B, \
         {} / {} packets; {} packets of neither flow. Host built in {:.0} s, run {:.0} s.",
        thousands(c.up_bytes.0),
        thousands(c.up_bytes.1),
        thousands(c.up_packets.0),
        thousands(c.up_packets.1),
        thousands(c.down_bytes.0),
        thousands(c.down_bytes.1),
        thousands(c.down_packets.0),
        thousands(c.down_packets.1),
        c.other_packets,
        r.setup_s,
        r.total_s
    );
    out
}

/// The held session against polling, on the same run.
fn session_markdown(out: &mut String, r: &Report, x: &SessionFigures) {
    let interval = r.profile.interval;
    let idle_poll = r.scenario("idle_kept_alive").map_or(0, |s| s.tern.per_poll());
    let churn = r.scenario("churn_trace").map(|s| &s.tern);
    let p = |v: &[u64], q: f64| thousands(percentile(v, q));
    let _ = writeln!(
        out,
        "\n**Held session against polling** (the same agent restarted with `EDGE_SESSION=on`; idle keepalives \
         of {} s, capped by the ping interval; then the ping interval off, as a field agent behind a NAT runs, \
         for the commands and the churn trace: keepalive {} s, snapshot and command intervals {interval} s; {} \
         commands each, `container.logs` of one line, spread over the interval):\n",
        x.keepalive_s,
        x.held_s,
        x.polling_commands.result_ms.len()
    );
    let _ = writeln!(out, "| | polling every {interval} s | held session |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| idle: one poll / one keepalive (median cycle) | {} B | {} B |",
        thousands(idle_poll),
        thousands(x.idle.per_poll())
    );
    let (pc, sc) = (&x.polling_commands, &x.session_commands);
    let _ = writeln!(
        out,
        "| command queued → delivered, p50 / p99 | {} / {} ms | {} / {} ms |",
        p(&pc.delivered_ms, 0.5),
        p(&pc.delivered_ms, 0.99),
        p(&sc.delivered_ms, 0.5),
        p(&sc.delivered_ms, 0.99)
    );
    let _ = writeln!(
        out,
        "| command queued → result at the server, p50 / p99 | {} / {} ms | {} / {} ms |",
        p(&pc.result_ms, 0.5),
        p(&pc.result_ms, 0.99),
        p(&sc.result_ms, 0.5),
        p(&sc.result_ms, 0.99)
    );
    let _ = writeln!(
        out,
        "| the commands' bytes (polls meanwhile) | {} B ({}) | {} B ({}) |",
        thousands(pc.bytes),
        pc.polls,
        thousands(sc.bytes),
        sc.polls
    );
    if let Some(c) = churn {
        let _ = writeln!(
            out,
            "| churn trace ({} events): bytes (polls) | {} B ({}) | {} B ({}) |",
            r.events.len(),
            thousands(c.bytes()),
            c.polls,
            thousands(x.churn.bytes()),
            x.churn.polls
        );
    }
    let _ = writeln!(
        out,
        "| churn: event to server, median / 90th percentile | {} / {} ms | {} / {} ms |",
        p(&r.latency.tern_ms, 0.5),
        p(&r.latency.tern_ms, 0.9),
        p(&x.churn_ms, 0.5),
        p(&x.churn_ms, 0.9)
    );
    let _ = writeln!(out, "| reconnects during the session's scenarios | | {} |", x.reconnects);
    let _ = writeln!(out);
}

/// The profiles side by side.
pub fn summary_markdown(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| link | idle poll, kept alive | idle poll, new connection | per day, kept alive (tern / baseline) | per day, new connections (tern / baseline) | churn trace (tern / baseline) | delivery of an event, median (tern / baseline) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let per_poll = |k: &str| r.scenario(k).map_or(0, |s| s.tern.per_poll());
        let churn = r.scenario("churn_trace");
        let _ = writeln!(
            out,
            "| {} | {} B | {} | {} / {} | {} / {} | {} / {} | {} / {} ms |",
            r.profile.name,
            thousands(per_poll("idle_kept_alive")),
            // Left out of a run with --skip-new-connection.
            r.scenario("idle_new_connection")
                .map_or_else(|| "—".to_owned(), |s| format!("{} B", thousands(s.tern.per_poll()))),
            size(r.tern_per_day(false)),
            size(r.baseline_per_day(false)),
            r.scenario("idle_new_connection").map_or_else(|| "—".to_owned(), |_| size(r.tern_per_day(true))),
            r.scenario("idle_new_connection").map_or_else(|| "—".to_owned(), |_| size(r.baseline_per_day(true))),
            size(churn.map_or(0, |s| s.tern.bytes())),
            size(churn.map_or(0, |s| s.baseline.bytes())),
            thousands(percentile(&r.latency.tern_delivery_ms, 0.5)),
            thousands(percentile(&r.latency.baseline_delivery_ms, 0.5)),
        );
    }
    out
}

/// A profile's name as the chart shows it.
fn short(name: &str) -> &str {
    match name {
        "2g" => "2G link",
        "clean" => "clean link",
        other => other,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A bar chart of bytes per day, idle at 60 s intervals, for tern and the
/// baseline, per link profile, kept alive and with a new connection every
/// poll.
pub fn chart_svg(reports: &[Report]) -> String {
    let bars: Vec<(String, u64, u64)> = reports
        .iter()
        .flat_map(|r| {
            [
                (format!("{}, kept alive", short(&r.profile.name)), r.tern_per_day(false), r.baseline_per_day(false)),
                (
                    format!("{}, new connection every poll", short(&r.profile.name)),
                    r.tern_per_day(true),
                    r.baseline_per_day(true),
                ),
            ]
        })
        .collect();
    let max = bars.iter().map(|(_, t, b)| (*t).max(*b)).max().unwrap_or(1).max(1);
    let (left, width, bar, gap, top) = (230.0, 440.0, 16.0, 14.0, 64.0);
    let height = top + bars.len() as f64 * (2.0 * bar + gap) + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="780" height="{height}" viewBox="0 0 780 {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="780" height="{height}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="16" y="24" font-size="15" font-weight="bold">Bytes per day, idle host, polls every 60 s (every IP byte, both ways)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="16" y="36" width="12" height="12" fill="#1b7f79"/><text x="34" y="46">tern</text><rect x="84" y="36" width="12" height="12" fill="#c8553d"/><text x="102" y="46">Portainer async agent request (baseline)</text>"##
    );
    let mut y = top;
    for (label, t, b) in &bars {
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 8.0, y + bar + 4.0, escape(label));
        for (v, color) in [(*t, "#1b7f79"), (*b, "#c8553d")] {
            let w = (v as f64 / max as f64 * width).max(1.0);
            let _ = writeln!(s, r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{bar}" fill="{color}"/>"#);
            let _ = writeln!(s, r#"<text x="{:.1}" y="{}">{}</text>"#, left + w + 6.0, y + bar - 4.0, size(v));
            y += bar;
        }
        y += gap;
    }
    let _ = writeln!(
        s,
        r##"<text x="16" y="{}" fill="#555555">Measured by tern bench wire on emulated links; see the README's "On-wire benchmark".</text>"##,
        height - 14.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_the_readme_writes_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_307), "12,307");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(274_000), "274.0 KB");
        assert_eq!(size(4_320_000), "4.32 MB");
        assert_eq!(percentile(&[5, 1, 3], 0.5), 3);
    }
}
