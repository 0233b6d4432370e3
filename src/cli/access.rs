//! `tern token` (API tokens) and `tern user` (users and roles), through
//! the server's API, and `tern admin` (the admin account, offline on the
//! server's data directory).

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::access::{PASSWORD_ENV, PASSWORD_FILE_ENV, given_password};
use crate::server::api::teams::{TeamBody, TeamView};
use crate::server::api::types::{CreateToken, CreateUser, CreatedToken, TokenView, UpdateUser, UserChanged, UserView};
use crate::server::store::Store;
use crate::server::store::access::{ADMIN, generate_password, hash_password};
use crate::server::store::prelude::*;

/// `tern token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token for automation; prints it this once (only its
    /// hash is kept).
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        /// The most it may do: viewer, operator or admin (at most your
        /// own; default: as much as you, whatever that becomes).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: Option<String>,
    },
    /// List your API tokens (an admin's: every one), never their secrets.
    List,
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// Its id (from `tern token list`).
        id: u64,
    },
}

/// `tern user ...`
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated password this once, unless one
    /// is given in TERN_USER_PASSWORD.
    Create {
        /// Its name (letters, digits, . _ - @).
        name: String,
        /// viewer (looks), operator (acts on what runs) or admin.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List users and their roles.
    List,
    /// Change a user's role, or disable or enable it; either ends its
    /// sessions.
    Set {
        /// Its name or id.
        user: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: Option<String>,
        /// It can no longer log in and its tokens are refused.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// It may log in again.
        #[arg(long)]
        enable: bool,
        /// Set a new password: a generated one, printed, or the one in
        /// TERN_USER_PASSWORD.
        #[arg(long)]
        reset_password: bool,
    },
    /// Delete a user with its sessions and API tokens.
    Delete {
        /// Its name or id.
        user: String,
    },
}

/// `tern team ...`
#[derive(Debug, clap::Subcommand)]
pub enum TeamCommand {
    /// Create a team.
    Create {
        /// Its name.
        name: String,
        /// Its users, comma-separated names.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// Its groups, comma-separated names or ids.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// List teams with their users and groups.
    List,
    /// Change a team: each list given replaces the team's.
    Set {
        /// Its name or id.
        team: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Its users (comma-separated; empty: none).
        #[arg(long, value_delimiter = ',')]
        members: Option<Vec<String>>,
        /// Its groups (comma-separated; empty: none).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
    },
    /// Delete a team (its users and groups stay).
    Delete {
        /// Its name or id.
        team: String,
    },
}

/// The variable a new or reset user password is read from.
pub const USER_PASSWORD_ENV: &str = "TERN_USER_PASSWORD";

/// `tern admin ...`
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Set a new password for the admin account, on the server's data
    /// directory (the server may be running or not): a generated one,
    /// printed, or the one in TERN_ADMIN_PASSWORD / TERN_ADMIN_PASSWORD_FILE.
    /// Every admin session ends.
    ResetPassword {
        /// The server's data directory.
        #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
        data: std::path::PathBuf,
        /// The server's PostgreSQL database, if it has one.
        #[arg(long, env = "TERN_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
}

/// A Unix time as operators read it (UTC), or `-`.
fn when(t: Option<i64>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// Runs a `tern token` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses.
pub fn run_token(command: TokenCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        TokenCommand::Create { name, role } => {
            let created: CreatedToken = api.send("POST", "/api/tokens", &CreateToken { name, role })?;
            api.show(&created, |c| {
                println!("token {} ({}) of {}, {}", c.id, c.name, c.user, c.role.as_deref().unwrap_or("as its user"));
                println!();
                println!("{}", c.token);
                println!();
                println!("This is the only time it is shown: keep it (e.g. as TERN_TOKEN).");
            });
        }
        TokenCommand::List => {
            let list: Vec<TokenView> = api.get_as("/api/tokens")?;
            api.show(&list, |l| {
                println!(
                    "{:>4}  {:<32}  {:<16}  {:<8}  {:<20}  {:<20}  {:<20}",
                    "ID", "NAME", "USER", "LIMIT", "CREATED", "LAST USED", "REVOKED"
                );
                for t in l {
                    // The id is not padded: this printed a JSON number,
                    // which ignores widths.
                    println!(
                        "{}  {:<32}  {:<16}  {:<8}  {:<20}  {:<20}  {:<20}",
                        t.id,
                        t.name,
                        t.user.as_deref().unwrap_or("-"),
                        t.role.as_deref().unwrap_or("-"),
                        when(Some(t.created_at)),
                        when(t.last_used_at),
                        when(t.revoked_at),
                    );
                }
            });
        }
        TokenCommand::Revoke { id } => {
            let path = format!("/api/tokens/{id}");
            let t: TokenView = super::typed(api.call("DELETE", &path, None)?, "DELETE", &path)?;
            api.show(&t, |t| {
                println!("token {} ({}) revoked at {}", t.id, t.name, when(t.revoked_at));
                if t.data_directory {
                    println!("It was the data directory's admin token: the server writes a new one at its next start.");
                }
            });
        }
    }
    Ok(())
}

/// The id of a user given by name or id.
fn user_id(api: &mut Api, user: &str) -> anyhow::Result<u64> {
    if let Ok(id) = user.parse() {
        return Ok(id);
    }
    let users: Vec<UserView> = api.get_as("/api/users")?;
    users.iter().find(|u| u.name == user).map(|u| u.id).with_context(|| format!("no user {user:?}"))
}

fn user_line(u: &UserView) {
    let state = u.disabled_at.map_or_else(|| "enabled".to_owned(), |t| format!("disabled {}", when(Some(t))));
    println!("{}  {:<24}  {:<8}  {:<20}  {state}", u.id, u.name, u.role, when(Some(u.created_at)));
}

fn password_from_env() -> Option<String> {
    std::env::var(USER_PASSWORD_ENV).ok().filter(|p| !p.is_empty())
}

/// Runs a `tern user` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses (only an admin may).
pub fn run_user(command: UserCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    let changed = |c: &UserChanged| {
        user_line(&c.user);
        if let Some(p) = &c.password {
            println!();
            println!("password {p}");
            println!();
            println!("This is the only time it is shown: give it to the user, who changes it.");
        }
        if c.sessions_ended > 0 {
            println!("{} sessions ended", c.sessions_ended);
        }
    };
    match command {
        UserCommand::Create { name, role } => {
            let password = password_from_env();
            let c: UserChanged = api.send("POST", "/api/users", &CreateUser { name, role, password })?;
            api.show(&c, changed);
        }
        UserCommand::List => {
            let users: Vec<UserView> = api.get_as("/api/users")?;
            api.show(&users, |l| {
                println!("{:>4}  {:<24}  {:<8}  {:<20}  STATE", "ID", "NAME", "ROLE", "CREATED");
                for u in l {
                    user_line(u);
                }
            });
        }
        UserCommand::Set { user, role, disable, enable, reset_password } => {
            let id = user_id(&mut api, &user)?;
            let disabled = if disable {
                Some(true)
            } else if enable {
                Some(false)
            } else {
                None
            };
            let mut password = None;
            if reset_password {
                password = Some(password_from_env().unwrap_or_else(generate_password));
            }
            if role.is_none() && disabled.is_none() && password.is_none() {
                bail!("nothing to change: give --role, --disable, --enable or --reset-password");
            }
            let shown = password.clone().filter(|_| password_from_env().is_none());
            let path = format!("/api/users/{id}");
            let mut c: UserChanged = api.send("PATCH", &path, &UpdateUser { role, disabled, password })?;
            c.password = shown;
            api.show(&c, changed);
        }
        UserCommand::Delete { user } => {
            let id = user_id(&mut api, &user)?;
            let path = format!("/api/users/{id}");
            let c: UserChanged = super::typed(api.call("DELETE", &path, None)?, "DELETE", &path)?;
            api.show(&c, |c| {
                println!("user {} deleted, with its API tokens; {} sessions ended", c.user.name, c.sessions_ended);
            });
        }
    }
    Ok(())
}

fn group_refs(names: Vec<String>) -> Vec<crate::server::api::types::NameOrId> {
    use crate::server::api::types::NameOrId;
    names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().map_or(NameOrId::Name(n), NameOrId::Id))
        .collect()
}

fn clean(names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()
}

fn team_line(t: &TeamView) {
    println!("{}  {:<24}  members: {}  groups: {}", t.id, t.name, t.members.join(","), t.groups.join(","));
}

/// Runs a `tern team` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses (only an admin may).
pub fn run_team(command: TeamCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    let team_id = |api: &mut Api, team: &str| -> anyhow::Result<u64> {
        if let Ok(id) = team.parse() {
            return Ok(id);
        }
        let teams: Vec<TeamView> = api.get_as("/api/teams")?;
        teams.iter().find(|t| t.name == team).map(|t| t.id).with_context(|| format!("no team {team:?}"))
    };
    match command {
        TeamCommand::Create { name, members, groups } => {
            let body = TeamBody { name: Some(name), members: Some(clean(members)), groups: Some(group_refs(groups)) };
            let t: TeamView = api.send("POST", "/api/teams", &body)?;
            api.show(&t, team_line);
        }
        TeamCommand::List => {
            let teams: Vec<TeamView> = api.get_as("/api/teams")?;
            api.show(&teams, |l| l.iter().for_each(team_line));
        }
        TeamCommand::Set { team, name, members, groups } => {
            let id = team_id(&mut api, &team)?;
            let body = TeamBody { name, members: members.map(clean), groups: groups.map(group_refs) };
            let t: TeamView = api.send("PATCH", &format!("/api/teams/{id}"), &body)?;
            api.show(&t, team_line);
        }
        TeamCommand::Delete { team } => {
            let id = team_id(&mut api, &team)?;
            api.call("DELETE", &format!("/api/teams/{id}"), None)?;
            println!("team {team} deleted");
        }
    }
    Ok(())
}

/// Runs a `tern admin` subcommand.
///
/// # Errors
/// When the data directory holds no database, the given password is not
/// acceptable, or the database fails.
pub fn run_admin(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::ResetPassword { data, database } => {
            let db = data.join("tern.db");
            let database = database.filter(|u| !u.is_empty());
            if database.is_none() && !db.exists() {
                bail!("no server database in {} (--data, TERN_DATA; --database for PostgreSQL)", data.display());
            }
            let given = given_password(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
            let generated = given.is_none();
            let password = given.unwrap_or_else(generate_password);
            let hash = hash_password(&password)?;
            let store = match &database {
                Some(url) => Store::postgres(crate::server::store::postgres::PgPool::connect(url)?.get()?),
                None => Store::open(&db).with_context(|| format!("opening {}", db.display()))?,
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            // `tern admin` runs with the server stopped: nothing else holds it.
            let tx = store.autocommit();
            let ended = tx.reset_admin_password(&hash, now as i64)?;
            // Recorded as the API's changes are: who (the data directory's
            // holder, at this host), what, when; never the password.
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            tx.audit_append(&crate::server::store::audit::AuditEntry {
                id: 0,
                at: now as i64,
                actor: "cli:tern admin".into(),
                action: "reset-password".into(),
                target: format!("user:{ADMIN}"),
                status: 200,
                addr: if host.is_empty() { "local".into() } else { format!("local:{host}") },
            })?;
            if generated {
                println!("admin password {password}");
            } else {
                println!("admin password set from {PASSWORD_ENV} or {PASSWORD_FILE_ENV}");
            }
            println!("user {ADMIN}: {ended} sessions ended");
        }
    }
    Ok(())
}
