//! `tern token` (API tokens, through the server's API) and `tern admin`
//! (the admin account, offline on the server's data directory).

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::access::{PASSWORD_ENV, PASSWORD_FILE_ENV, given_password};
use crate::server::api::types::{CreateToken, CreatedToken, TokenView};
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
        TokenCommand::Create { name } => {
            let created: CreatedToken = api.send("POST", "/api/tokens", &CreateToken { name })?;
            api.show(&created, |c| {
                println!("token {} ({})", c.id, c.name);
                println!();
                println!("{}", c.token);
                println!();
                println!("This is the only time it is shown: keep it (e.g. as TERN_TOKEN).");
            });
        }
        TokenCommand::List => {
            let list: Vec<TokenView> = api.get_as("/api/tokens")?;
            api.show(&list, |l| {
                println!("{:>4}  {:<32}  {:<20}  {:<20}  {:<20}", "ID", "NAME", "CREATED", "LAST USED", "REVOKED");
                for t in l {
                    // The id is not padded: this printed a JSON number,
                    // which ignores widths.
                    println!(
                        "{}  {:<32}  {:<20}  {:<20}  {:<20}",
                        t.id,
                        t.name,
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
            let ended = store.autocommit().reset_admin_password(&hash, now as i64)?;
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
