//! `tern registry`: private registries' credentials, through the server's
//! API. A password is read from standard input or `TERN_REGISTRY_PASSWORD`,
//! never from the command line (which `ps` and shell histories show).

use std::io::Read;

use anyhow::{Context, bail};

use super::{Api, ApiArgs};
use crate::server::api::types::{CreateRegistry, RegistryView, UpdateRegistry};

/// The variable a registry's password may come from.
pub const PASSWORD_ENV: &str = "TERN_REGISTRY_PASSWORD";

/// `tern registry ...`
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Register a private registry: stacks, image pulls and jobs whose
    /// image names it pull with these credentials. The password or token
    /// comes from standard input (`--password-stdin`) or
    /// TERN_REGISTRY_PASSWORD; it is stored encrypted and never shown.
    Add {
        /// A name for it.
        #[arg(long)]
        name: String,
        /// The registry as image references name it (10.0.0.5:5000,
        /// registry.example.com, docker.io).
        #[arg(long)]
        url: String,
        /// The user.
        #[arg(long)]
        username: String,
        /// Read the password or token from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the registries (never their passwords).
    List,
    /// Rename a registry, or change its user or password.
    Update {
        /// Its id (from `tern registry list`).
        id: u64,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new user.
        #[arg(long)]
        username: Option<String>,
        /// Read a new password or token from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget a registry: pulls from it go without credentials.
    Rm {
        /// Its id.
        id: u64,
    },
}

/// The password from standard input (its last line break dropped) or the
/// variable.
fn password(stdin: bool, required: bool) -> anyhow::Result<Option<String>> {
    if stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the password from standard input")?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        return Ok(Some(text.to_owned()));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ if required => bail!("give the password on standard input (--password-stdin) or in {PASSWORD_ENV}"),
        _ => Ok(None),
    }
}

fn line(r: &RegistryView) {
    println!("{}  {:<24}  {:<32}  {}", r.id, r.name, r.url, r.username);
}

/// Runs a `tern registry` subcommand.
///
/// # Errors
/// When the server cannot be reached or refuses, or no password is given.
pub fn run(command: RegistryCommand, args: &ApiArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args)?;
    match command {
        RegistryCommand::Add { name, url, username, password_stdin } => {
            let password = password(password_stdin, true)?.unwrap_or_default();
            let body = CreateRegistry { name, url, username, password };
            let r: RegistryView = api.send("POST", "/api/registries", &body)?;
            api.show(&r, |r| println!("registry {} ({}) for {}, user {}", r.id, r.name, r.url, r.username));
        }
        RegistryCommand::List => {
            let list: Vec<RegistryView> = api.get_as("/api/registries")?;
            api.show(&list, |l| {
                println!("{:>4}  {:<24}  {:<32}  USER", "ID", "NAME", "REGISTRY");
                l.iter().for_each(line);
            });
        }
        RegistryCommand::Update { id, name, username, password_stdin } => {
            let password = password(password_stdin, false)?;
            let body = UpdateRegistry { name, username, password };
            let r: RegistryView = api.send("PATCH", &format!("/api/registries/{id}"), &body)?;
            api.show(&r, line);
        }
        RegistryCommand::Rm { id } => {
            api.call("DELETE", &format!("/api/registries/{id}"), None)?;
            if !args.json {
                println!("registry {id} removed");
            }
        }
    }
    Ok(())
}
