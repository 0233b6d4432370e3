//! `tern server migrate-db`, `backup` and `restore`: whole databases moved
//! between SQLite and PostgreSQL, or into and out of a backup file, with
//! the server running or not (see `store::copy`).
//!
//! A backup is a SQLite file of the server's schema, whichever database
//! it came from, plus the data directory's identity: its certificate and
//! key (agents pin the certificate: a server restored with another one
//! would lose every agent), the server key that seals registry passwords,
//! and the admin token. It holds every secret the server has, so it is
//! written mode 0600; keep it as carefully as the data directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::store::{Store, copy, postgres::PgPool};

/// The data directory's files a backup carries, beside the database.
const FILES: &[&str] = &["cert.pem", "key.pem", "secret.key", "admin-token"];

/// `tern server`'s maintenance subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServerCommand {
    /// Copy an installation's SQLite database into a new PostgreSQL
    /// database, then start the server with --database. Stop the server
    /// first: what it writes after the copy began is not carried.
    MigrateDb {
        /// The SQLite database: sqlite:PATH (the data directory's tern.db).
        #[arg(long)]
        from: String,
        /// The PostgreSQL database, empty: postgres://user:password@host/db.
        #[arg(long, env = "TERN_DATABASE_URL", hide_env_values = true)]
        to: String,
    },
    /// Write an online, consistent backup of the server's database and its
    /// identity (certificate, key, server key, admin token) to FILE, a new
    /// file. The server may keep running.
    Backup {
        /// The backup file to write (it must not exist).
        file: PathBuf,
        /// The server's data directory.
        #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
        data: PathBuf,
        /// The server's PostgreSQL database, if it has one.
        #[arg(long, env = "TERN_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
    /// Restore a backup into a new installation: an empty data directory
    /// (SQLite) or an empty PostgreSQL database (--database) with the data
    /// directory for the identity. Agents carry on with it as they did
    /// with the server the backup came from.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to restore into.
        #[arg(long, env = "TERN_DATA", default_value = "tern-data")]
        data: PathBuf,
        /// An empty PostgreSQL database to restore into, instead of SQLite
        /// in the data directory.
        #[arg(long, env = "TERN_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
}

/// Runs one.
///
/// # Errors
/// What went wrong, for the operator; nothing is half-written.
pub fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::MigrateDb { from, to } => {
            let Some(path) = from.strip_prefix("sqlite:") else {
                bail!("--from {from:?}: give the SQLite database as sqlite:PATH");
            };
            let path = Path::new(path);
            if !path.is_file() {
                bail!("--from: no database at {}", path.display());
            }
            let source = Store::open_reader(path).with_context(|| format!("opening {}", path.display()))?;
            let pg = PgPool::connect(&to).context("connecting to --to")?;
            let target = Store::postgres(pg.get()?);
            let copied = copy::copy(&source, &target).context("copying")?;
            report(&copied);
            println!("moved into {}; start the server with --database (TERN_DATABASE_URL)", pg.shown());
        }
        ServerCommand::Backup { file, data, database } => {
            if file.exists() {
                bail!("{} exists: a backup goes to a new file", file.display());
            }
            let (source, _pg) = open_source(&data, database.as_deref())?;
            let files: Vec<(&str, Vec<u8>)> = FILES
                .iter()
                .filter_map(|name| std::fs::read(data.join(name)).ok().map(|bytes| (*name, bytes)))
                .collect();
            let written = (|| -> anyhow::Result<copy::Copied> {
                let target = Store::open(&file)?;
                let copied = copy::copy(&source, &target)?;
                target.put_backup_files(&files)?;
                Ok(copied)
            })();
            let copied = written.inspect_err(|_| drop(Cleanup(file.clone())))?;
            report(&copied);
            println!(
                "backup {} ({} of the data directory's files); it holds every secret of the server: keep it safe",
                file.display(),
                files.len()
            );
        }
        ServerCommand::Restore { file, data, database } => {
            if !file.is_file() {
                bail!("no backup at {}", file.display());
            }
            // A backup from an older build is brought to this build's
            // schema first, in a copy: the backup itself is never changed.
            let scratch = std::env::temp_dir().join(format!("tern-restore-{}.db", std::process::id()));
            let _cleanup = Cleanup(scratch.clone());
            std::fs::copy(&file, &scratch).with_context(|| format!("reading {}", file.display()))?;
            let source = Store::open(&scratch).with_context(|| format!("opening {}", file.display()))?;
            let files = source.backup_files()?;
            // The identity first, and only into a directory without one:
            // a restore never mixes two servers' keys.
            std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
            }
            for (name, _) in &files {
                if data.join(name).exists() {
                    bail!("{} exists: restore into a new data directory", data.join(name).display());
                }
            }
            let (target, shown) = match &database {
                Some(url) => {
                    let pg = PgPool::connect(url).context("connecting to --database")?;
                    let shown = pg.shown().to_owned();
                    (Store::postgres(pg.get()?), shown)
                }
                None => {
                    let db = data.join("tern.db");
                    if db.exists() {
                        bail!("{} exists: restore into a new data directory", db.display());
                    }
                    (Store::open(&db)?, db.display().to_string())
                }
            };
            let copied = copy::copy(&source, &target).context("restoring")?;
            for (name, bytes) in &files {
                write_secret(&data.join(name), bytes)?;
            }
            report(&copied);
            println!("restored into {shown}, identity into {}", data.display());
        }
    }
    Ok(())
}

/// The server's database, to read from.
fn open_source(data: &Path, database: Option<&str>) -> anyhow::Result<(Store, Option<PgPool>)> {
    Ok(match database {
        Some(url) => {
            let pg = PgPool::connect(url).context("connecting to --database")?;
            (Store::postgres(pg.get()?), Some(pg))
        }
        None => {
            let db = data.join("tern.db");
            if !db.is_file() {
                bail!("no server database in {} (--data, or --database for PostgreSQL)", data.display());
            }
            (Store::open_reader(&db).with_context(|| format!("opening {}", db.display()))?, None)
        }
    })
}

/// Removes a scratch database (and its WAL) when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(path).with_context(|| format!("writing {}", path.display()))?, bytes)?;
    Ok(())
}

fn report(copied: &copy::Copied) {
    let rows: Vec<String> = copied.tables.iter().filter(|(_, n)| *n > 0).map(|(t, n)| format!("{t} {n}")).collect();
    println!("copied {} rows: {}", copied.rows(), rows.join(", "));
}
