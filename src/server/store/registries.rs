//! Private registries (migration 12): a name, the registry as image
//! references name it (one row per registry), a user, and the password or
//! token sealed under the server key (`server::secrets`): the store keeps
//! ciphertext only and never sees the key.

use super::sql::{OptionalExtension, Row, params};

use super::{StoreError, Tx, sql_id};

/// What can go wrong with a registry, apart from the database.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// No such registry.
    #[error("no registry {0}")]
    NotFound(u64),
    /// Another registry has this name.
    #[error("a registry named {0:?} exists already")]
    NameTaken(String),
    /// Another registry has this address.
    #[error("registry {0} has credentials already")]
    ServerTaken(String),
}

impl From<super::sql::Error> for RegistryError {
    fn from(e: super::sql::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A registry as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryRecord {
    /// Its id.
    pub id: u64,
    /// Its name, for operators.
    pub name: String,
    /// The registry as references name it (`10.0.0.5:5000`).
    pub server: String,
    /// The user.
    pub username: String,
    /// The sealed password or token.
    pub sealed: Vec<u8>,
    /// When created.
    pub created_at: i64,
    /// When last changed.
    pub updated_at: i64,
}

impl std::fmt::Debug for RegistryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Private registries and their sealed credentials.
pub trait RegistryStore {
    /// Stores a registry; `sealed` is made by the caller, for the row's
    /// owner text (see `domain::registries`), which includes the id it
    /// gets: so it is given as a function of that id.
    ///
    /// # Errors
    /// [`RegistryError::NameTaken`], [`RegistryError::ServerTaken`], or
    /// when the database fails.
    fn create_registry(
        &self,
        name: &str,
        server: &str,
        username: &str,
        seal: &dyn Fn(u64) -> Vec<u8>,
        now: i64,
    ) -> Result<u64, RegistryError>;

    /// Changes a registry's name, user and/or sealed secret.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], [`RegistryError::NameTaken`], or when
    /// the database fails.
    fn update_registry(
        &self,
        id: u64,
        name: Option<&str>,
        username: Option<&str>,
        sealed: Option<&[u8]>,
        now: i64,
    ) -> Result<(), RegistryError>;

    /// Deletes a registry. False when there is none.
    ///
    /// # Errors
    /// When the database fails.
    fn remove_registry(&self, id: u64) -> Result<bool, StoreError>;

    /// One registry.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], or when the database fails.
    fn registry(&self, id: u64) -> Result<RegistryRecord, RegistryError>;

    /// Every registry, by id.
    ///
    /// # Errors
    /// When the database fails.
    fn registries(&self) -> Result<Vec<RegistryRecord>, StoreError>;

    /// The registries with these addresses (those that have credentials).
    ///
    /// # Errors
    /// When the database fails.
    fn registries_for(&self, servers: &[String]) -> Result<Vec<RegistryRecord>, StoreError>;
}

const COLUMNS: &str = "id, name, server, username, secret, created_at, updated_at";

fn row(r: &Row) -> super::sql::Result<RegistryRecord> {
    Ok(RegistryRecord {
        id: r.get::<i64>(0)? as u64,
        name: r.get(1)?,
        server: r.get(2)?,
        username: r.get(3)?,
        sealed: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

impl Tx<'_> {
    fn taken(&self, name: &str, server: Option<&str>, except: u64) -> Result<Option<RegistryError>, StoreError> {
        let by_name: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM registries WHERE name = ?1 COLLATE NOCASE AND id != ?2",
                params![name, sql_id(except)],
                |r| r.get(0),
            )
            .optional()?;
        if by_name.is_some() {
            return Ok(Some(RegistryError::NameTaken(name.to_owned())));
        }
        if let Some(server) = server {
            let by_server: Option<i64> = self
                .conn
                .query_row("SELECT id FROM registries WHERE server = ?1", [server], |r| r.get(0))
                .optional()?;
            if by_server.is_some() {
                return Ok(Some(RegistryError::ServerTaken(server.to_owned())));
            }
        }
        Ok(None)
    }
}

impl RegistryStore for Tx<'_> {
    fn create_registry(
        &self,
        name: &str,
        server: &str,
        username: &str,
        seal: &dyn Fn(u64) -> Vec<u8>,
        now: i64,
    ) -> Result<u64, RegistryError> {
        if let Some(e) = self.taken(name, Some(server), 0)? {
            return Err(e);
        }
        let tx = self.tx()?;
        let id = tx.insert(
            "INSERT INTO registries (name, server, username, secret, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?5, ?4, ?4)",
            params![name, server, username, now, Vec::<u8>::new()],
        )? as u64;
        tx.execute("UPDATE registries SET secret = ?2 WHERE id = ?1", params![sql_id(id), seal(id)])?;
        tx.commit()?;
        Ok(id)
    }

    fn update_registry(
        &self,
        id: u64,
        name: Option<&str>,
        username: Option<&str>,
        sealed: Option<&[u8]>,
        now: i64,
    ) -> Result<(), RegistryError> {
        self.registry(id)?;
        if let Some(name) = name
            && let Some(e) = self.taken(name, None, id)?
        {
            return Err(e);
        }
        self.conn.execute(
            "UPDATE registries SET name = COALESCE(?2, name), username = COALESCE(?3, username),
                    secret = COALESCE(?4, secret), updated_at = ?5 WHERE id = ?1",
            params![sql_id(id), name, username, sealed, now],
        )?;
        Ok(())
    }

    fn remove_registry(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM registries WHERE id = ?1", [sql_id(id)])? == 1)
    }

    fn registry(&self, id: u64) -> Result<RegistryRecord, RegistryError> {
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM registries WHERE id = ?1"), [sql_id(id)], row)
            .optional()?
            .ok_or(RegistryError::NotFound(id))
    }

    fn registries(&self) -> Result<Vec<RegistryRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM registries ORDER BY id"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn registries_for(&self, servers: &[String]) -> Result<Vec<RegistryRecord>, StoreError> {
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM registries WHERE server = ?1"))?;
        for s in servers {
            if let Some(r) = stmt.query_row([s], row).optional()? {
                out.push(r);
            }
        }
        Ok(out)
    }
}
