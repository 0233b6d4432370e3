//! `tern group`, `tern tag`, `tern settings`, `tern cmd` and `tern
//! commands`, and what `tern env` shares with them: intervals as operators
//! write them (`90`, `5m`, `1h`, `1d`, `1w`, `off`, `default`), ages, tables,
//! and environments named by id or name.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::types::{
    CommandView, CreateCommand, DefaultIntervalsBody, EnvironmentView, LabelBody, LabelView, NameOrId, SettingsBody,
    SettingsView,
};

/// Parses an interval: seconds (`90`, `90s`), minutes (`5m`), hours
/// (`1h`), days (`1d`), weeks (`1w`), `off` (or `disabled`, `0`), and, when
/// `default_ok`, `default` (`None`: follow the server default).
///
/// # Errors
/// When it is none of those.
pub fn parse_interval(text: &str, default_ok: bool) -> anyhow::Result<Option<u32>> {
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "default" if default_ok => return Ok(None),
        "off" | "disabled" | "0" => return Ok(Some(0)),
        _ => {}
    }
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let scale = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => 0,
    };
    match digits.parse::<u32>().ok().and_then(|n| n.checked_mul(scale)) {
        Some(v) if scale > 0 => Ok(Some(v)),
        _ => {
            let also = if default_ok { ", default" } else { "" };
            bail!("interval {text:?}: seconds, or 5m, 1h, 1d, 1w, off{also}")
        }
    }
}

/// An interval for people: `60 s`, `5 min`, `1 h`, `1 d`, `1 w`, `off`.
pub fn fmt_interval(secs: u64) -> String {
    match secs {
        0 => "off".into(),
        s if s % (7 * 86_400) == 0 => format!("{} w", s / (7 * 86_400)),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// An age for people: `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never`.
pub fn fmt_age(secs: Option<i64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) if s < 172_800 => format!("{}h ago", s / 3600),
        Some(s) => format!("{}d ago", s / 86_400),
    }
}

/// Prints rows as a table with aligned columns (the first row is the
/// header).
pub fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Percent-encodes a query-string value.
pub fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An environment named by id or by its exact name.
///
/// # Errors
/// When no environment has that name, or the server refuses.
pub fn env_id(api: &mut Api, env: &str) -> anyhow::Result<u64> {
    if let Ok(id) = env.parse::<u64>() {
        return Ok(id);
    }
    let list: Vec<EnvironmentView> = api.get_as(&format!("/api/environments?name={}", encode_query(env)))?;
    list.iter().find(|e| e.name == env).map(|e| e.id).with_context(|| format!("no environment named {env:?}"))
}

/// A group or tag reference: an id when it is a number, else the name.
pub fn label_ref(text: &str) -> NameOrId {
    text.parse::<u64>().map_or_else(|_| NameOrId::Name(text.to_owned()), NameOrId::Id)
}

/// `tern group ...` and `tern tag ...`
#[derive(Debug, clap::Subcommand)]
pub enum LabelCommand {
    /// Create one.
    Add {
        /// Its name (unique regardless of case).
        name: String,
    },
    /// List them, with how many environments each holds.
    List,
    /// Rename one (by id or name).
    Rename {
        /// Its id or current name.
        label: String,
        /// The new name.
        name: String,
    },
    /// Delete one (by id or name): for a group, its environments fall back
    /// to no group; a tag is taken off every environment.
    Rm {
        /// Its id or name.
        label: String,
    },
}

/// Which of the two.
#[derive(Debug, Clone, Copy)]
pub enum LabelKind {
    /// `tern group`.
    Group,
    /// `tern tag`.
    Tag,
}

impl LabelKind {
    fn path(self) -> &'static str {
        match self {
            Self::Group => "/api/groups",
            Self::Tag => "/api/tags",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Tag => "tag",
        }
    }
}

fn label_id(api: &mut Api, kind: LabelKind, label: &str) -> anyhow::Result<u64> {
    let all: Vec<LabelView> = api.get_as(kind.path())?;
    all.iter()
        .find(|l| l.name.eq_ignore_ascii_case(label))
        .or_else(|| all.iter().find(|l| l.id.to_string() == label))
        .map(|l| l.id)
        .with_context(|| format!("no {} {label:?}", kind.word()))
}

/// Runs `tern group ...` or `tern tag ...`.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run_label(kind: LabelKind, command: LabelCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    let word = kind.word();
    match command {
        LabelCommand::Add { name } => {
            let l: LabelView = api.send("POST", kind.path(), &LabelBody { name })?;
            api.show(&l, |l| println!("{word} {} ({}) created", l.id, l.name));
        }
        LabelCommand::List => {
            let list: Vec<LabelView> = api.get_as(kind.path())?;
            api.show(&list, |list| {
                let mut rows = vec![vec!["ID".to_owned(), "NAME".to_owned(), "ENVIRONMENTS".to_owned()]];
                for l in list {
                    rows.push(vec![l.id.to_string(), l.name.clone(), l.environments.to_string()]);
                }
                print_table(&rows);
            });
        }
        LabelCommand::Rename { label, name } => {
            let id = label_id(&mut api, kind, &label)?;
            let l: LabelView = api.send("PATCH", &format!("{}/{id}", kind.path()), &LabelBody { name })?;
            api.show(&l, |l| println!("{word} {id} renamed to {}", l.name));
        }
        LabelCommand::Rm { label } => {
            let id = label_id(&mut api, kind, &label)?;
            api.call("DELETE", &format!("{}/{id}", kind.path()), None)?;
            if !api.json {
                println!("{word} {id} deleted");
            }
        }
    }
    Ok(())
}

/// `tern settings ...`
#[derive(Debug, clap::Subcommand)]
pub enum SettingsCommand {
    /// The default intervals, and whether an AGENT_SECRET is set.
    Show,
    /// Change the default intervals (each: seconds, 5m, 1h, 1d, 1w or off)
    /// or the AGENT_SECRET. Environments that follow a default get the new
    /// value in their next reply.
    Set {
        /// Default heartbeat interval.
        #[arg(long)]
        ping: Option<String>,
        /// Default snapshot interval.
        #[arg(long)]
        snapshot: Option<String>,
        /// Default command-check interval.
        #[arg(long)]
        command: Option<String>,
        /// The server's AGENT_SECRET ("" removes it; "-" reads it from
        /// standard input, which keeps it out of the process list and the
        /// shell's history). Every agent must then be redeployed with it:
        /// agents without it are refused at once.
        #[arg(long)]
        agent_secret: Option<String>,
    },
}

fn print_settings(s: &SettingsView) {
    let (i, f) = (&s.intervals, &s.following_defaults);
    for (name, value, following) in
        [("ping", i.ping, f.ping), ("snapshot", i.snapshot, f.snapshot), ("command", i.command, f.command)]
    {
        println!(
            "{:<14}{:<10}(followed by {following} environments)",
            format!("{name}:"),
            fmt_interval(u64::from(value)),
        );
    }
    let secret = if s.agent_secret_set { "set" } else { "not set" };
    println!("{:<14}{secret}", "agent secret:");
}

/// Runs `tern settings ...`.
///
/// # Errors
/// When an interval does not parse, or the server cannot be reached or
/// refuses.
pub fn run_settings(command: SettingsCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let body = match &command {
        SettingsCommand::Show => None,
        SettingsCommand::Set { ping, snapshot, command, agent_secret } => {
            let parse = |v: &Option<String>| v.as_deref().map(|v| parse_interval(v, false)).transpose();
            let intervals = DefaultIntervalsBody {
                ping: parse(ping)?.flatten(),
                snapshot: parse(snapshot)?.flatten(),
                command: parse(command)?.flatten(),
            };
            let given = intervals.ping.is_some() || intervals.snapshot.is_some() || intervals.command.is_some();
            let mut body = SettingsBody { intervals: given.then_some(intervals), agent_secret: None };
            if let Some(s) = agent_secret {
                let s = if s == "-" {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                } else {
                    s.clone()
                };
                body.agent_secret = Some(Some(s));
            }
            if body.intervals.is_none() && body.agent_secret.is_none() {
                bail!("nothing to set: give --ping, --snapshot, --command or --agent-secret");
            }
            Some(body)
        }
    };
    let mut api = Api::new(args)?;
    let s: SettingsView = match &body {
        None => api.get_as("/api/settings")?,
        Some(b) => api.send("PUT", "/api/settings", b)?,
    };
    api.show(&s, print_settings);
    if body.as_ref().is_some_and(|b| b.agent_secret.is_some()) && !api.json {
        eprintln!(
            "note: the AGENT_SECRET applies at once; agents deployed without it are refused until redeployed \
             (`tern env deploy ID` prints the commands)"
        );
    }
    Ok(())
}

/// `tern cmd ENV ACTION TARGET`
#[derive(Debug, clap::Args)]
pub struct CmdArgs {
    /// The environment: id or name.
    pub env: String,
    /// container.start, .stop, .restart, .kill, .pause, .unpause, .remove,
    /// container.logs, image.pull, image.remove, volume.remove,
    /// network.remove.
    pub action: String,
    /// The container or network (name, id or id prefix), image reference or
    /// volume name.
    pub target: String,
    /// For container.logs: how many lines from the end.
    #[arg(long)]
    pub tail: Option<u32>,
    /// Follow the command until it is done, printing each status; exits
    /// non-zero when it fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (the command goes on).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

fn print_command(c: &CommandView) {
    let error = c.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
    println!("command {} {} {} {}{error}", c.id, c.action, c.target, c.status);
}

/// Runs `tern cmd ...`: queues a command, and with `--wait` follows it.
///
/// # Errors
/// When the server refuses, or (with `--wait`) the command fails or the
/// wait runs out.
pub fn run_cmd(args: &CmdArgs, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    let env = env_id(&mut api, &args.env)?;
    let body = CreateCommand { action: args.action.clone(), target: args.target.clone(), tail: args.tail };
    let c: CommandView = api.send("POST", &format!("/api/environments/{env}/commands"), &body)?;
    api.show(&c, print_command);
    if !args.wait {
        return Ok(());
    }
    let id = c.id;
    let start = Instant::now();
    let mut last = c.status;
    loop {
        let c: CommandView = api.get_as(&format!("/api/commands/{id}"))?;
        if c.status != last {
            last.clone_from(&c.status);
            api.show(&c, print_command);
        }
        match c.status.as_str() {
            "ok" => {
                if let Some(out) = c.output.as_deref().filter(|_| !api.json) {
                    print!("{out}");
                }
                return Ok(());
            }
            s @ ("failed" | "rejected" | "cancelled") => {
                bail!("command {id} {s}: {}", c.error.as_deref().unwrap_or_default())
            }
            _ if start.elapsed() > Duration::from_secs(args.timeout) => {
                // Quoted, as the JSON string it is.
                bail!("command {id} is still {last:?} after {} s; it goes on (tern commands {})", args.timeout, env)
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Runs `tern commands ENV`: the environment's commands, newest first.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run_commands(env: &str, api_args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(api_args)?;
    let env = env_id(&mut api, env)?;
    let list: Vec<CommandView> = api.get_as(&format!("/api/environments/{env}/commands"))?;
    api.show(&list, |list| {
        let mut rows = vec![["ID", "ACTION", "TARGET", "STATUS", "QUEUED", "ERROR"].map(String::from).to_vec()];
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        for c in list {
            let target = &c.target;
            let short = if target.len() == 64 { target[..12].to_owned() } else { target.clone() };
            rows.push(vec![
                c.id.to_string(),
                c.action.clone(),
                short,
                c.status.clone(),
                fmt_age(Some((now - c.created_at).max(0))),
                c.error.clone().unwrap_or_default(),
            ]);
        }
        print_table(&rows);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_written_the_way_operators_say_them() {
        for (text, want) in [
            ("90", Some(90)),
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("1h", Some(3600)),
            ("1d", Some(86_400)),
            ("1w", Some(604_800)),
            ("off", Some(0)),
            ("0", Some(0)),
            ("Disabled", Some(0)),
        ] {
            assert_eq!(parse_interval(text, true).unwrap(), want, "{text}");
        }
        assert_eq!(parse_interval("default", true).unwrap(), None);
        for bad in ["default", "1y", "", "h", "-5", "99999999999"] {
            assert!(parse_interval(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            [0, 45, 60, 300, 3600, 86_400, 604_800].map(fmt_interval),
            ["off", "45 s", "60 s", "5 min", "1 h", "1 d", "1 w"]
        );
        assert_eq!(
            [None, Some(5), Some(600), Some(10_000), Some(500_000)].map(fmt_age),
            ["never", "5s ago", "10m ago", "2h ago", "5d ago"]
        );
        assert_eq!(encode_query("ship 1/ä"), "ship%201%2F%C3%A4");
    }
}
