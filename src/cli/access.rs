//! `tern token` (API tokens, through the server's API) and `tern admin`
//! (the admin account, offline on the server's data directory).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Api, ApiArgs};
use crate::server::api::access::{PASSWORD_ENV, PASSWORD_FILE_ENV, given_password};
use crate::server::store::Store;
use crate::server::store::access::{ADMIN, generate_password, hash_password};

/// `tern token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token for automation; prints it this once (only its
    /// hash is kept).
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
    },
    /// List the API tokens (never their secrets).
    List,
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// Its id (from `tern token list`).
        id: u64,
    },
}

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
    },
}

/// A Unix time as operators read it (UTC), or `-`.
fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
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
        TokenCommand::Create { name } => {
            let created = api.post("/api/tokens", &json!({ "name": name }))?;
            api.print(&created, |c| {
                println!("token {} ({})", c["id"], c["name"].as_str().unwrap_or_default());
                println!();
                println!("{}", c["token"].as_str().unwrap_or_default());
                println!();
                println!("This is the only time it is shown: keep it (e.g. as TERN_TOKEN).");
            });
        }
        TokenCommand::List => {
            let list = api.get("/api/tokens")?;
            api.print(&list, |l| {
                println!("{:>4}  {:<32}  {:<20}  {:<20}  {:<20}", "ID", "NAME", "CREATED", "LAST USED", "REVOKED");
                for t in l.as_array().into_iter().flatten() {
                    println!(
                        "{:>4}  {:<32}  {:<20}  {:<20}  {:<20}",
                        t["id"],
                        t["name"].as_str().unwrap_or_default(),
                        when(&t["created_at"]),
                        when(&t["last_used_at"]),
                        when(&t["revoked_at"]),
                    );
                }
            });
        }
        TokenCommand::Revoke { id } => {
            let t = api.call("DELETE", &format!("/api/tokens/{id}"), None)?;
            api.print(&t, |t| {
                println!(
                    "token {} ({}) revoked at {}",
                    t["id"],
                    t["name"].as_str().unwrap_or_default(),
                    when(&t["revoked_at"])
                );
                if t["data_directory"] == true {
                    println!("It was the data directory's admin token: the server writes a new one at its next start.");
                }
            });
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
        AdminCommand::ResetPassword { data } => {
            let db = data.join("tern.db");
            if !db.exists() {
                bail!("no server database in {} (--data, TERN_DATA)", data.display());
            }
            let given = given_password(|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
            let generated = given.is_none();
            let password = given.unwrap_or_else(generate_password);
            let hash = hash_password(&password)?;
            let store = Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let ended = store.reset_admin_password(&hash, now as i64)?;
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
