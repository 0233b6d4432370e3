//! `tern fleet-token` and `tern device`: onboarding many devices with one
//! token, and the waiting room, through the server's API.

use anyhow::bail;

use super::{Api, ApiArgs};
use crate::server::api::admission::{AdmitBody, Admitted, CreateFleetToken, DeviceView, FleetTokenView, RejectBody};
use crate::server::api::types::NameOrId;
use crate::server::store::admission::AutoAdmit;

/// `tern fleet-token ...`
#[derive(Debug, clap::Subcommand)]
pub enum FleetTokenCommand {
    /// Make a fleet join token: one EDGE_KEY and one `docker run` command
    /// for a whole batch of devices. Each device asks to join and waits in
    /// the waiting room (`tern device list`) until admitted, unless the
    /// token's rule admits it.
    Create {
        /// A name for it (the batch, the site).
        name: String,
        /// The server URL as the devices see it (https://host:port).
        #[arg(long)]
        url: String,
        /// The group its devices are admitted into (a device's EDGE_GROUP
        /// wins).
        #[arg(long)]
        group: Option<String>,
        /// Tags its devices are admitted with, comma-separated (besides a
        /// device's EDGE_TAGS).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Admit without the operator: `all`, or `tags` (a device asking
        /// for one of --auto-tags).
        #[arg(long, value_parser = ["off", "all", "tags"])]
        auto_admit: Option<String>,
        /// With --auto-admit tags: the tags that admit a device.
        #[arg(long, value_delimiter = ',')]
        auto_tags: Vec<String>,
        /// How many devices may use it.
        #[arg(long)]
        max_uses: Option<u64>,
        /// How long it takes new devices: 90m, 12h, 7d, 2w.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the tokens, their use and state.
    List,
    /// One token with its EDGE_KEY and deploy commands.
    Show {
        /// Its id.
        id: u64,
    },
    /// Revoke a token: its devices are refused, waiting or new (admitted
    /// ones are environments and go on).
    Revoke {
        /// Its id.
        id: u64,
    },
}

/// `tern device ...`: the waiting room.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Devices that asked to join (default: those waiting).
    List {
        /// pending, admitted, rejected, decided (admitted or rejected) or all.
        #[arg(long, default_value = "pending", value_parser = ["pending", "admitted", "rejected", "decided", "all"])]
        status: String,
        /// How many (at most 1,000), the last to ask first.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        /// Skip this many (the next page: --offset 1000).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Admit a device: it becomes an environment and is told on its next
    /// request.
    Admit {
        /// Its id (from `tern device list`).
        id: u64,
        /// The environment's name (default: the device's hostname).
        #[arg(long)]
        name: Option<String>,
        /// Its group (default: the one it asked for, else the token's).
        #[arg(long)]
        group: Option<String>,
        /// Its tags, comma-separated (default: the token's and those it
        /// asked for).
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// Reject a device; it is told why in its health output.
    Reject {
        /// Its id.
        id: u64,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Forget a device; it may ask again.
    Forget {
        /// Its id.
        id: u64,
    },
}

fn when(t: Option<i64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(|| "-".into(), |d| d.format("%Y-%m-%d %H:%M").to_string())
}

fn token_line(t: &FleetTokenView) {
    let uses = t.max_uses.map_or_else(|| format!("{}", t.uses), |m| format!("{}/{m}", t.uses));
    let rule = match t.auto_admit {
        AutoAdmit::Tags => format!("tags:{}", t.auto_tags.join(",")),
        r => serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    };
    println!(
        "{:>4}  {:<20}  {:<8}  {:<14}  {:<16}  {}",
        t.id,
        t.name,
        uses,
        rule,
        when(t.expires_at),
        if t.state == "active" { "active" } else { &t.state }
    );
}

fn device_line(d: &DeviceView) {
    let status = match (d.status, d.environment) {
        (crate::server::store::admission::DeviceStatus::Admitted, Some(e)) => format!("admitted (env {e})"),
        (s, _) => serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    };
    println!(
        "{:>4}  {:<20}  {:<18}  {:<10}  {:<28}  {:<10}  {:<16}  {:<16}  {}",
        d.id,
        d.edge_id,
        d.hostname,
        d.agent_version,
        d.engine,
        d.group,
        d.tags.join(","),
        when(Some(d.last_seen)),
        status
    );
}

fn show_token(t: &FleetTokenView) {
    token_line(t);
    if let Some(key) = &t.edge_key {
        println!("\nEDGE_KEY={key}");
    }
    if let Some(c) = &t.commands {
        println!("\nOn each device (add -e EDGE_GROUP=... -e EDGE_TAGS=a,b to ask for a group and tags):\n{}", c.linux);
    }
}

/// Runs a `tern fleet-token` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses, or an option is bad.
pub fn run_token(command: FleetTokenCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        FleetTokenCommand::Create { name, url, group, tags, auto_admit, auto_tags, max_uses, expires } => {
            let expires_in = match expires {
                None => None,
                Some(e) => match super::fleet::parse_interval(&e, false)?.filter(|&s| s > 0) {
                    Some(s) => Some(u64::from(s)),
                    None => bail!("--expires {e:?}: a duration such as 90m, 12h or 7d"),
                },
            };
            let auto_admit = match auto_admit.as_deref() {
                None if !auto_tags.is_empty() => Some(AutoAdmit::Tags),
                None | Some("off") => None,
                Some("all") => Some(AutoAdmit::All),
                Some(_) => Some(AutoAdmit::Tags),
            };
            let body = CreateFleetToken {
                name,
                url,
                group: group.map(NameOrId::Name),
                tags: tags.into_iter().filter(|t| !t.trim().is_empty()).map(NameOrId::Name).collect(),
                auto_admit,
                auto_tags,
                max_uses,
                expires_in,
            };
            let t: FleetTokenView = api.send("POST", "/api/fleet-tokens", &body)?;
            api.show(&t, show_token);
        }
        FleetTokenCommand::List => {
            let list: Vec<FleetTokenView> = api.get_as("/api/fleet-tokens")?;
            api.show(&list, |l| {
                println!("{:>4}  {:<20}  {:<8}  {:<14}  {:<16}  STATE", "ID", "NAME", "USES", "AUTO-ADMIT", "EXPIRES");
                l.iter().for_each(token_line);
            });
        }
        FleetTokenCommand::Show { id } => {
            let t: FleetTokenView = api.get_as(&format!("/api/fleet-tokens/{id}"))?;
            api.show(&t, show_token);
        }
        FleetTokenCommand::Revoke { id } => {
            let t: FleetTokenView =
                serde_json::from_value(api.call("DELETE", &format!("/api/fleet-tokens/{id}"), None)?)?;
            api.show(&t, token_line);
        }
    }
    Ok(())
}

/// Runs a `tern device` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run_device(command: DeviceCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        DeviceCommand::List { status, limit, offset } => {
            let mut path = format!("/api/devices?limit={limit}&offset={offset}");
            if status != "all" {
                path.push_str(&format!("&status={status}"));
            }
            let list: Vec<DeviceView> = api.get_as(&path)?;
            api.show(&list, |l| {
                println!(
                    "{:>4}  {:<20}  {:<18}  {:<10}  {:<28}  {:<10}  {:<16}  {:<16}  STATUS",
                    "ID", "EDGE_ID", "HOSTNAME", "AGENT", "ENGINE", "GROUP", "TAGS", "LAST ASKED"
                );
                l.iter().for_each(device_line);
            });
        }
        DeviceCommand::Admit { id, name, group, tags } => {
            let body = AdmitBody {
                name,
                group: group.map(NameOrId::Name),
                tags: tags.map(|t| t.into_iter().filter(|t| !t.trim().is_empty()).map(NameOrId::Name).collect()),
            };
            let a: Admitted = api.send("POST", &format!("/api/devices/{id}/admit"), &body)?;
            api.show(&a, |a| {
                println!("device {} ({}) admitted as environment {}", id, a.device.edge_id, a.environment)
            });
        }
        DeviceCommand::Reject { id, reason } => {
            let d: DeviceView = api.send("POST", &format!("/api/devices/{id}/reject"), &RejectBody { reason })?;
            api.show(&d, device_line);
        }
        DeviceCommand::Forget { id } => {
            api.call("DELETE", &format!("/api/devices/{id}"), None)?;
            if !args.json {
                println!("device {id} forgotten; it may ask again");
            }
        }
    }
    Ok(())
}
