//! `tern usage`: what each environment's polls cost on the wire, per day
//! and in total, to check against a data plan. Units are decimal (1 KB is
//! 1,000 bytes), as data plans count them.

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::types::{EnvironmentUsageView, EnvironmentView, FleetUsageView, UsageView};

/// `tern usage [ENV] [--days N]`
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// An environment, by id or name; without one, every environment.
    pub environment: Option<String>,
    /// How many UTC days, today included (1 to 30: usage is kept 30 days).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
}

/// Runs `tern usage`.
///
/// # Errors
/// When the server cannot be reached, refuses, or has no such environment.
pub fn run(args: &UsageArgs, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    match &args.environment {
        Some(env) => {
            let id = resolve(&mut api, env)?;
            let report: EnvironmentUsageView =
                api.get_as(&format!("/api/environments/{id}/usage?days={}", args.days))?;
            api.show(&report, |r| print!("{}", environment_table(r)));
        }
        None => {
            let fleet: FleetUsageView = api.get_as(&format!("/api/usage?days={}", args.days))?;
            api.show(&fleet, |f| print!("{}", fleet_table(f)));
        }
    }
    Ok(())
}

/// An environment's id from its id or name.
fn resolve(api: &mut Api, env: &str) -> anyhow::Result<u64> {
    if let Ok(id) = env.parse() {
        return Ok(id);
    }
    let list: Vec<EnvironmentView> = api.get_as("/api/environments")?;
    let found: Vec<u64> = list.iter().filter(|e| e.name == env).map(|e| e.id).collect();
    match found[..] {
        [id] => Ok(id),
        [] => bail!("no environment named {env:?}"),
        _ => bail!("{} environments are named {env:?}; give the id", found.len()),
    }
}

/// Bytes in decimal units: `999 B`, `12.3 KB`, `4.0 MB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    // Round first, so 999,950 B shows as 1.0 MB rather than 1000.0 KB.
    while (value * 10.0).round() / 10.0 >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Lays out rows: the first column left-aligned, the others right-aligned.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                line.push_str(&format!("{cell:<w$}", w = widths[0]));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn usage_cells(u: &UsageView) -> Vec<String> {
    vec![
        human(u.tls_up),
        human(u.tls_down),
        human(u.tls_up + u.tls_down),
        human(u.body_up),
        human(u.body_down),
        u.polls.to_string(),
    ]
}

const USAGE_HEADER: [&str; 6] = ["up", "down", "total", "body up", "body down", "polls"];

/// The text `tern usage ENV` prints.
pub fn environment_table(r: &EnvironmentUsageView) -> String {
    let mut rows = vec![std::iter::once("day (UTC)").chain(USAGE_HEADER).map(str::to_owned).collect::<Vec<_>>()];
    for day in &r.per_day {
        rows.push(std::iter::once(day.day.clone()).chain(usage_cells(&day.usage)).collect());
    }
    rows.push(std::iter::once(format!("total, {} days", r.days)).chain(usage_cells(&r.total)).collect());
    format!(
        "{} (environment {}): data usage at the TLS socket (up: from the agent) and in poll bodies\n\n{}",
        r.name,
        r.environment,
        table(&rows)
    )
}

/// The text `tern usage` prints.
pub fn fleet_table(f: &FleetUsageView) -> String {
    let period = format!("{} days", f.days);
    let mut rows = vec![
        ["environment", "today up", "today down", &format!("{period} up"), &format!("{period} down"), "polls"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let line = |name: String, today: &UsageView, period: &UsageView| {
        vec![
            name,
            human(today.tls_up),
            human(today.tls_down),
            human(period.tls_up),
            human(period.tls_down),
            period.polls.to_string(),
        ]
    };
    for e in &f.environments {
        rows.push(line(format!("{} ({})", e.name, e.id), &e.usage.today, &e.usage.period));
    }
    rows.push(line("total".into(), &f.total.today, &f.total.period));
    let mut out = format!(
        "data usage at the TLS socket (up: from the agent), today and the last {period} (UTC days)\n\n{}",
        table(&rows)
    );
    let (today, over) = (&f.unattributed.today, &f.unattributed.period);
    if over.connections > 0 || over.tls_up + over.tls_down > 0 {
        out.push_str(&format!(
            "\nnot charged to any environment (polls that did not authenticate): {} up, {} down today; \
             {} up, {} down over {period}, {} connections\n",
            human(today.tls_up),
            human(today.tls_down),
            human(over.tls_up),
            human(over.tls_down),
            over.connections
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::types::{DayView, FleetLine, Span, UnattributedView};

    fn u(tls_up: u64, tls_down: u64, polls: u64) -> UsageView {
        UsageView { tls_up, tls_down, body_up: tls_up / 10, body_down: tls_down / 10, polls }
    }

    #[test]
    fn bytes_are_shown_in_decimal_units() {
        for (bytes, text) in [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 KB"),
            (12_345, "12.3 KB"),
            (999_949, "999.9 KB"),
            (999_950, "1.0 MB"),
            (4_000_000, "4.0 MB"),
            (2_500_000_000, "2.5 GB"),
            (u64::MAX, "18446.7 PB"),
        ] {
            assert_eq!(human(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn the_tables_show_each_day_and_the_totals() {
        let r = EnvironmentUsageView {
            environment: 3,
            name: "ship-1".into(),
            days: 2,
            from: 0,
            now: 0,
            total: u(12_300, 45_600, 9),
            today: u(300, 600, 1),
            per_day: vec![
                DayView { day: "2024-05-01".into(), start: 0, usage: u(12_000, 45_000, 8) },
                DayView { day: "2024-05-02".into(), start: 86_400, usage: u(300, 600, 1) },
            ],
            per_hour: vec![],
        };
        let text = environment_table(&r);
        assert!(text.starts_with("ship-1 (environment 3)"), "{text}");
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>()[..3], ["day", "(UTC)", "up"]);
        assert!(lines[1].starts_with("2024-05-01") && lines[1].contains("12.0 KB") && lines[1].contains("57.0 KB"));
        assert!(lines[2].ends_with(" 1") && lines[2].contains("300 B"), "{}", lines[2]);
        assert!(lines[3].starts_with("total, 2 days") && lines[3].contains("12.3 KB") && lines[3].ends_with(" 9"));
        assert_eq!(lines.len(), 4);

        let f = FleetUsageView {
            days: 30,
            from: 0,
            today_from: 0,
            now: 0,
            environments: vec![FleetLine {
                id: 3,
                name: "ship-1".into(),
                usage: Span { today: u(300, 600, 1), period: u(12_300, 45_600, 9) },
            }],
            total: Span { today: u(300, 600, 1), period: u(12_300, 45_600, 9) },
            unattributed: Span {
                today: UnattributedView::default(),
                period: UnattributedView { tls_up: 2000, tls_down: 3000, connections: 2 },
            },
        };
        let text = fleet_table(&f);
        assert!(text.contains("ship-1 (3)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("total") && l.contains("45.6 KB")), "{text}");
        assert!(text.contains("2.0 KB up, 3.0 KB down over 30 days, 2 connections"), "{text}");
    }
}
