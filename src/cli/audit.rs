//! `tern audit`: the audit log, newest first, filtered; `--jsonl` exports
//! every matching entry as JSON lines (paged through the API).

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::audit::{AuditListView, AuditView};

/// `tern audit [--actor A] [--action A] [--target T] [--since 1d] [--limit N] [--jsonl]`
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Entries whose actor contains this (`user:admin`, `token:ci`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Entries whose action contains this (`login`, `POST /api/stacks`, `DELETE`).
    #[arg(long)]
    pub action: Option<String>,
    /// Entries whose target contains this (`/api/environments/3`).
    #[arg(long)]
    pub target: Option<String>,
    /// Only this recent: 90s, 30m, 12h, 7d, 2w.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (1 to 1000; not with --jsonl, which exports all).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Every matching entry as JSON lines, oldest last, for export.
    #[arg(long)]
    pub jsonl: bool,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs `tern audit`.
///
/// # Errors
/// A bad `--since`, or when the server cannot be reached or refuses.
pub fn run(args: &AuditArgs, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    let mut query = Vec::new();
    for (k, v) in [("actor", &args.actor), ("action", &args.action), ("target", &args.target)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(s) = &args.since {
        let Some(secs) = super::fleet::parse_interval(s, false)?.filter(|&s| s > 0) else {
            bail!("--since {s:?}: a duration such as 30m, 12h or 7d");
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        query.push(format!("since={}", now - i64::from(secs)));
    }
    if args.jsonl {
        let mut before: Option<u64> = None;
        loop {
            let mut q = query.clone();
            q.push("limit=1000".into());
            if let Some(b) = before {
                q.push(format!("before={b}"));
            }
            let page: AuditListView = api.get_as(&format!("/api/audit?{}", q.join("&")))?;
            for e in &page.entries {
                println!("{}", serde_json::to_string(e)?);
            }
            match page.next {
                Some(n) => before = Some(n),
                None => return Ok(()),
            }
        }
    }
    if !(1..=1000).contains(&args.limit) {
        bail!("--limit {}: 1 to 1000", args.limit);
    }
    query.push(format!("limit={}", args.limit));
    let page: AuditListView = api.get_as(&format!("/api/audit?{}", query.join("&")))?;
    api.show(&page, |p| print!("{}", table(&p.entries)));
    Ok(())
}

/// `WHEN  ACTOR  ACTION  TARGET  STATUS  FROM`.
pub fn table(entries: &[AuditView]) -> String {
    let mut rows = vec![["WHEN", "ACTOR", "ACTION", "TARGET", "STATUS", "FROM"].map(str::to_owned).to_vec()];
    for e in entries {
        rows.push(vec![
            crate::server::ui::utc(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.status.to_string(),
            e.addr.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if entries.is_empty() {
        out.push_str("(no entries)\n");
    }
    out
}
