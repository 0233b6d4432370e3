//! Images the server holds (migration 13): one row per reference an
//! operator asked for, its status while the server pulls it (`pulling`,
//! then `held` or `failed` with the registry's reason), and once held, its
//! image id (the config's digest) and layers (their `diff_id`s, the
//! digests of the layer tars the blob store keeps: `server::images`).

use super::sql::{OptionalExtension, Row, params};

use super::{StoreError, Tx, sql_id};

/// An image as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Its id.
    pub id: u64,
    /// The reference it was pulled by.
    pub reference: String,
    /// `pulling`, `held` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: String,
    /// `sha256:...` of its config, once held.
    pub image_id: Option<String>,
    /// Its layers' `diff_id`s, bottom first.
    pub layers: Vec<String>,
    /// The layers' bytes, uncompressed.
    pub size: u64,
    /// When asked for.
    pub created_at: i64,
    /// When its status last changed.
    pub updated_at: i64,
}

/// A staged agent update as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Its id.
    pub id: u64,
    /// The agent image's reference and id.
    pub reference: String,
    /// Its image id.
    pub image_id: String,
    /// The update's number (in every command it sends).
    pub update: u64,
    /// Seconds each new agent has to poll (0: the agent's default).
    pub timeout_s: u32,
    /// `first` (the first wave is updating), `rest`, `done` or `halted`.
    pub status: String,
    /// Why it halted.
    pub reason: String,
    /// When it was made.
    pub created_at: i64,
    /// When its status last changed.
    pub updated_at: i64,
    /// Its environments: (environment, wave 1 or 2, command once sent,
    /// that command's status).
    pub members: Vec<(u64, u8, Option<u64>, Option<String>)>,
}

/// Images the server holds.
pub trait ImageStore {
    /// Asks for `reference`: a new row, or the existing one set back to
    /// `pulling` (a moving tag is pulled again). Returns its id and whether
    /// a pull was already under way (then nothing changes).
    ///
    /// # Errors
    /// When the database fails.
    fn request_image(&self, reference: &str, now: i64) -> Result<(u64, bool), StoreError>;

    /// Records a pull's success.
    ///
    /// # Errors
    /// When the database fails.
    fn image_held(&self, id: u64, image_id: &str, layers: &[String], size: u64, now: i64) -> Result<(), StoreError>;

    /// Records a pull's failure.
    ///
    /// # Errors
    /// When the database fails.
    fn image_failed(&self, id: u64, error: &str, now: i64) -> Result<(), StoreError>;

    /// One image.
    ///
    /// # Errors
    /// When the database fails.
    fn image(&self, id: u64) -> Result<Option<ImageRecord>, StoreError>;

    /// Every image, by id.
    ///
    /// # Errors
    /// When the database fails.
    fn images(&self) -> Result<Vec<ImageRecord>, StoreError>;

    /// Marks the pulls under way since before `started_before` as failed:
    /// a server that stops drops them (at its start, so that asking again
    /// pulls again; with replicas on one database, only pulls older than
    /// any a live replica would still run). Returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn interrupt_pulls(&self, started_before: i64, now: i64) -> Result<usize, StoreError>;

    /// Forgets an image. False when there is none.
    ///
    /// # Errors
    /// When the database fails.
    fn remove_image(&self, id: u64) -> Result<bool, StoreError>;

    /// The held image with this image id (`sha256:` of its config), if any.
    ///
    /// # Errors
    /// When the database fails.
    fn held_image(&self, image_id: &str) -> Result<Option<ImageRecord>, StoreError>;

    /// The image id of the held image of this reference, if the server
    /// holds one (what a stack naming it is sent as a transfer).
    ///
    /// # Errors
    /// When the database fails.
    fn held_reference(&self, reference: &str) -> Result<Option<String>, StoreError>;

    /// Makes a rollout (status `first`) of these environments in waves.
    ///
    /// # Errors
    /// When the database fails.
    fn insert_rollout(&self, r: &RolloutRecord, now: i64) -> Result<u64, StoreError>;

    /// Records the command that carries the update to a member.
    ///
    /// # Errors
    /// When the database fails.
    fn set_rollout_command(&self, rollout: u64, environment: u64, command: u64) -> Result<(), StoreError>;

    /// The rollout (and wave) a command belongs to, if any.
    ///
    /// # Errors
    /// When the database fails.
    fn rollout_of_command(&self, command: u64) -> Result<Option<(u64, u8)>, StoreError>;

    /// Sets a rollout's status and reason.
    ///
    /// # Errors
    /// When the database fails.
    fn set_rollout_status(&self, rollout: u64, status: &str, reason: &str, now: i64) -> Result<(), StoreError>;

    /// One rollout with its members.
    ///
    /// # Errors
    /// When the database fails.
    fn rollout(&self, id: u64) -> Result<Option<RolloutRecord>, StoreError>;

    /// Every rollout's id, newest first.
    ///
    /// # Errors
    /// When the database fails.
    fn rollout_ids(&self) -> Result<Vec<u64>, StoreError>;

    /// Accepts a transfer request's counter: raises the environment's
    /// transfer counter to it only if it is higher (a conditional update,
    /// so two racing requests cannot both pass), and only for an
    /// environment an agent is bound to. False for a replay.
    ///
    /// # Errors
    /// When the database fails.
    fn accept_transfer(&self, environment: u64, counter: u64) -> Result<bool, StoreError>;

    /// The environment's transfer counter, rate cap (bytes a second, 0:
    /// none) and download window (`HH:MM-HH:MM` UTC, empty: any time).
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; when the database fails.
    fn transfer_limits(&self, environment: u64) -> Result<(u64, u64, String), StoreError>;

    /// Sets the rate cap and download window (checked by the caller).
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; when the database fails.
    fn set_transfer_limits(&self, environment: u64, rate: u64, window: &str) -> Result<(), StoreError>;
}

/// With replicas on one PostgreSQL, a pull no replica finished in this
/// long is taken for one whose replica stopped (pulls run on the server's
/// own link to the registry: six hours is well past a slow one).
pub const PULL_STALE_SECS: i64 = 6 * 3600;

const COLUMNS: &str = "id, reference, status, error, image_id, layers, size, created_at, updated_at";

fn row(r: &Row) -> super::sql::Result<(ImageRecord, String)> {
    Ok((
        ImageRecord {
            id: r.get::<i64>(0)? as u64,
            reference: r.get(1)?,
            status: r.get(2)?,
            error: r.get(3)?,
            image_id: r.get(4)?,
            layers: Vec::new(),
            size: r.get::<i64>(6)? as u64,
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
        },
        r.get(5)?,
    ))
}

fn finish((mut record, layers): (ImageRecord, String)) -> Result<ImageRecord, StoreError> {
    record.layers =
        serde_json::from_str(&layers).map_err(|_| StoreError::Corrupt { what: "image layers", environment: 0 })?;
    Ok(record)
}

impl ImageStore for Tx<'_> {
    fn request_image(&self, reference: &str, now: i64) -> Result<(u64, bool), StoreError> {
        let existing: Option<(i64, String)> = self
            .conn
            .query_row("SELECT id, status FROM images WHERE reference = ?1", [reference], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match existing {
            Some((id, status)) if status == "pulling" => Ok((id as u64, true)),
            Some((id, _)) => {
                self.conn.execute(
                    "UPDATE images SET status = 'pulling', error = '', updated_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                Ok((id as u64, false))
            }
            None => {
                let id = self.conn.insert(
                    "INSERT INTO images (reference, status, created_at, updated_at) VALUES (?1, 'pulling', ?2, ?2)",
                    params![reference, now],
                )?;
                Ok((id as u64, false))
            }
        }
    }

    fn image_held(&self, id: u64, image_id: &str, layers: &[String], size: u64, now: i64) -> Result<(), StoreError> {
        let layers = serde_json::to_string(layers).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "UPDATE images SET status = 'held', error = '', image_id = ?2, layers = ?3, size = ?4, updated_at = ?5
             WHERE id = ?1",
            params![sql_id(id), image_id, layers, i64::try_from(size).unwrap_or(i64::MAX), now],
        )?;
        Ok(())
    }

    fn image_failed(&self, id: u64, error: &str, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE images SET status = 'failed', error = ?2, updated_at = ?3 WHERE id = ?1",
            params![sql_id(id), super::truncate(error, super::MAX_ERROR_LEN), now],
        )?;
        Ok(())
    }

    fn image(&self, id: u64) -> Result<Option<ImageRecord>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM images WHERE id = ?1"), [sql_id(id)], row)
            .optional()?
            .map(finish)
            .transpose()
    }

    fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM images ORDER BY id"))?;
        let rows: Vec<_> = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(finish).collect()
    }

    fn interrupt_pulls(&self, started_before: i64, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE images SET status = 'failed', error = 'the server stopped during the pull; ask again',
                    updated_at = ?1 WHERE status = 'pulling' AND updated_at < ?2",
            [now, started_before],
        )?)
    }

    fn remove_image(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM images WHERE id = ?1", [sql_id(id)])? == 1)
    }

    fn held_image(&self, image_id: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE image_id = ?1 AND status = 'held' ORDER BY id LIMIT 1"),
                [image_id],
                row,
            )
            .optional()?
            .map(finish)
            .transpose()
    }

    fn insert_rollout(&self, r: &RolloutRecord, now: i64) -> Result<u64, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO rollouts (reference, image_id, update_no, timeout_s, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'first', ?5, ?5)",
            params![r.reference, r.image_id, sql_id(r.update), i64::from(r.timeout_s), now],
        )?;
        for (environment, wave, _, _) in &r.members {
            self.conn.execute(
                "INSERT INTO rollout_members (rollout, environment, wave) VALUES (?1, ?2, ?3)",
                params![id, sql_id(*environment), i64::from(*wave)],
            )?;
        }
        Ok(id as u64)
    }

    fn set_rollout_command(&self, rollout: u64, environment: u64, command: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE rollout_members SET command = ?3 WHERE rollout = ?1 AND environment = ?2",
            params![sql_id(rollout), sql_id(environment), sql_id(command)],
        )?;
        Ok(())
    }

    fn rollout_of_command(&self, command: u64) -> Result<Option<(u64, u8)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT rollout, wave FROM rollout_members WHERE command = ?1", [sql_id(command)], |r| {
                Ok((r.get::<i64>(0)? as u64, r.get::<i64>(1)? as u8))
            })
            .optional()?)
    }

    fn set_rollout_status(&self, rollout: u64, status: &str, reason: &str, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE rollouts SET status = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
            params![sql_id(rollout), status, reason, now],
        )?;
        Ok(())
    }

    fn rollout(&self, id: u64) -> Result<Option<RolloutRecord>, StoreError> {
        let Some(mut r) = self
            .conn
            .query_row(
                "SELECT id, reference, image_id, update_no, timeout_s, status, reason, created_at, updated_at
                 FROM rollouts WHERE id = ?1",
                [sql_id(id)],
                |r| {
                    Ok(RolloutRecord {
                        id: r.get::<i64>(0)? as u64,
                        reference: r.get(1)?,
                        image_id: r.get(2)?,
                        update: r.get::<i64>(3)? as u64,
                        timeout_s: u32::try_from(r.get::<i64>(4)?).unwrap_or(0),
                        status: r.get(5)?,
                        reason: r.get(6)?,
                        created_at: r.get(7)?,
                        updated_at: r.get(8)?,
                        members: Vec::new(),
                    })
                },
            )
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.environment, m.wave, m.command, c.status FROM rollout_members m
             LEFT JOIN commands c ON c.id = m.command WHERE m.rollout = ?1 ORDER BY m.wave, m.environment",
        )?;
        r.members = stmt
            .query_map([sql_id(id)], |row| {
                Ok((
                    row.get::<i64>(0)? as u64,
                    row.get::<i64>(1)? as u8,
                    row.get::<Option<i64>>(2)?.map(|c| c as u64),
                    row.get::<Option<String>>(3)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(r))
    }

    fn rollout_ids(&self) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT id FROM rollouts ORDER BY id DESC")?;
        Ok(stmt.query_map([], |r| r.get::<i64>(0).map(|v| v as u64))?.collect::<Result<_, _>>()?)
    }

    fn held_reference(&self, reference: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT image_id FROM images WHERE reference = ?1 AND status = 'held' AND image_id IS NOT NULL",
                [reference],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn accept_transfer(&self, environment: u64, counter: u64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE environments SET transfer_counter = ?2
             WHERE id = ?1 AND transfer_counter < ?2 AND edge_id IS NOT NULL",
            params![sql_id(environment), i64::try_from(counter).unwrap_or(i64::MAX)],
        )?;
        Ok(n == 1)
    }

    fn transfer_limits(&self, environment: u64) -> Result<(u64, u64, String), StoreError> {
        self.conn
            .query_row(
                "SELECT transfer_counter, transfer_rate, transfer_window FROM environments WHERE id = ?1",
                [sql_id(environment)],
                |r| Ok((r.get::<i64>(0)? as u64, r.get::<i64>(1)? as u64, r.get(2)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound(environment))
    }

    fn set_transfer_limits(&self, environment: u64, rate: u64, window: &str) -> Result<(), StoreError> {
        match self.conn.execute(
            "UPDATE environments SET transfer_rate = ?2, transfer_window = ?3 WHERE id = ?1",
            params![sql_id(environment), i64::try_from(rate).unwrap_or(i64::MAX), window],
        )? {
            0 => Err(StoreError::NotFound(environment)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;

    #[test]
    fn a_pull_the_server_stopped_during_fails_and_can_be_asked_again() {
        let db = Store::scratch().unwrap();
        let tx = db.autocommit();
        let (id, under_way) = tx.request_image("10.0.0.5:5000/app:1", 1).unwrap();
        assert!(!under_way);
        assert_eq!(tx.request_image("10.0.0.5:5000/app:1", 2).unwrap(), (id, true), "one pull at a time");
        assert_eq!(tx.interrupt_pulls(i64::MAX, 3).unwrap(), 1);
        let r = tx.image(id).unwrap().unwrap();
        assert_eq!((r.status.as_str(), r.error.contains("stopped")), ("failed", true));
        assert_eq!(tx.request_image("10.0.0.5:5000/app:1", 4).unwrap(), (id, false), "asked again, pulled again");
        tx.image_held(id, "sha256:c", &["sha256:l".into()], 10, 5).unwrap();
        assert_eq!(tx.interrupt_pulls(i64::MAX, 6).unwrap(), 0);
        assert_eq!(tx.image(id).unwrap().unwrap().layers, ["sha256:l"]);
    }
}
