//! Onboarding many devices (migration 21, issue #17): fleet join tokens
//! and the devices that asked to join with one. The rules (who is refused,
//! who is admitted) are `domain::admission`'s; this is their storage.

use super::sql::{OptionalExtension, Row, params};
use super::{StoreError, Tx, sql_id};
use crate::auth::Secret;

/// A token's rule for admitting its devices without the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoAdmit {
    /// Every device waits for the operator.
    Off,
    /// Every device is admitted as it asks.
    All,
    /// A device that asks for one of the rule's tags is admitted.
    Tags,
}

impl AutoAdmit {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::All => "all",
            Self::Tags => "tags",
        }
    }

    /// From its stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "off" => Some(Self::Off),
            "all" => Some(Self::All),
            "tags" => Some(Self::Tags),
            _ => None,
        }
    }
}

/// A fleet join token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTokenRow {
    /// Its id (in the token's text).
    pub id: u64,
    /// Its name, for the operator.
    pub name: String,
    /// The secret its devices share.
    pub secret: Secret,
    /// The server URL its devices reach.
    pub url: String,
    /// The group its devices are admitted into (unless one asks for
    /// another): id and name.
    pub group: Option<(u64, String)>,
    /// The tags its devices are admitted with (besides those they ask for).
    pub tags: Vec<String>,
    /// Its rule.
    pub auto_admit: AutoAdmit,
    /// The rule's tags ([`AutoAdmit::Tags`]).
    pub auto_tags: Vec<String>,
    /// How many devices may use it (`None`: any number).
    pub max_uses: Option<u64>,
    /// How many have.
    pub uses: u64,
    /// When it stops admitting new devices.
    pub expires_at: Option<i64>,
    /// When it was made.
    pub created_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

/// A new fleet token.
#[derive(Debug, Clone)]
pub struct NewFleetToken {
    /// Its name.
    pub name: String,
    /// Its secret.
    pub secret: Secret,
    /// The server URL its devices reach.
    pub url: String,
    /// Its group's id.
    pub group: Option<u64>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its rule.
    pub auto_admit: AutoAdmit,
    /// The rule's tags.
    pub auto_tags: Vec<String>,
    /// Its use count.
    pub max_uses: Option<u64>,
    /// Its expiry.
    pub expires_at: Option<i64>,
}

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Waiting for the operator.
    Pending,
    /// An environment now.
    Admitted,
    /// Turned away.
    Rejected,
}

impl DeviceStatus {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Admitted => "admitted",
            Self::Rejected => "rejected",
        }
    }

    /// From its stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "admitted" => Some(Self::Admitted),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// A device that asked to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub id: u64,
    /// The token it asked with: id and name.
    pub token: (u64, String),
    /// Its EDGE_ID.
    pub edge_id: String,
    /// The key it is bound to.
    pub device_key: [u8; 32],
    /// What it said of itself.
    pub hostname: String,
    /// Its agent's version.
    pub agent_version: String,
    /// Its engine.
    pub engine: String,
    /// The group it asked for.
    pub group: String,
    /// The tags it asked for.
    pub tags: Vec<String>,
    /// The address it last asked from.
    pub addr: String,
    /// Where it stands.
    pub status: DeviceStatus,
    /// Why it was rejected.
    pub reason: String,
    /// The environment it was admitted as (`None` once that is deleted).
    pub environment: Option<u64>,
    /// The highest request counter accepted from it.
    pub last_counter: u64,
    /// When it first asked.
    pub first_seen: i64,
    /// When it last asked.
    pub last_seen: i64,
    /// When it was admitted or rejected.
    pub decided_at: Option<i64>,
    /// Who decided: `user:NAME`, `token:NAME`, `rule:TOKEN`.
    pub decided_by: String,
}

/// The storage of tokens and devices.
pub trait AdmissionStore {
    /// Stores a token; its id.
    ///
    /// # Errors
    /// When the database fails.
    fn create_fleet_token(&self, new: &NewFleetToken, now: i64) -> Result<u64, StoreError>;

    /// Every token, newest first.
    ///
    /// # Errors
    /// When the database fails.
    fn fleet_tokens(&self) -> Result<Vec<FleetTokenRow>, StoreError>;

    /// One token.
    ///
    /// # Errors
    /// When the database fails.
    fn fleet_token(&self, id: u64) -> Result<Option<FleetTokenRow>, StoreError>;

    /// Revokes a token (no-op when it is already); false when there is none.
    ///
    /// # Errors
    /// When the database fails.
    fn revoke_fleet_token(&self, id: u64, now: i64) -> Result<bool, StoreError>;

    /// Counts one more device that used the token.
    ///
    /// # Errors
    /// When the database fails.
    fn count_fleet_token_use(&self, id: u64) -> Result<(), StoreError>;

    /// The device of a token with this EDGE_ID.
    ///
    /// # Errors
    /// When the database fails.
    fn device_of(&self, token: u64, edge_id: &str) -> Result<Option<Device>, StoreError>;

    /// One device.
    ///
    /// # Errors
    /// When the database fails.
    fn device(&self, id: u64) -> Result<Option<Device>, StoreError>;

    /// The devices in `status` (all when `None`), the last to ask first.
    ///
    /// # Errors
    /// When the database fails.
    fn devices(&self, status: Option<DeviceStatus>) -> Result<Vec<Device>, StoreError> {
        Ok(self.device_page(status.as_slice(), u64::MAX, 0)?.0)
    }

    /// A page of the devices in any of `statuses` (all when empty), the
    /// last to ask first: at most `limit` from `offset`, and how many there
    /// are in all.
    ///
    /// # Errors
    /// When the database fails.
    fn device_page(&self, statuses: &[DeviceStatus], limit: u64, offset: u64)
    -> Result<(Vec<Device>, u64), StoreError>;

    /// How many devices of a token wait.
    ///
    /// # Errors
    /// When the database fails.
    fn waiting_devices(&self, token: u64) -> Result<u64, StoreError>;

    /// Stores a new device (its `id`, `token.1` and decisions ignored);
    /// its id.
    ///
    /// # Errors
    /// When the database fails (a second device with the token and EDGE_ID
    /// is a constraint error).
    fn insert_device(&self, device: &Device) -> Result<u64, StoreError>;

    /// A device asked again: its counter, address and time, and what it
    /// said of itself when it said it again.
    ///
    /// # Errors
    /// When the database fails.
    fn device_seen(
        &self,
        id: u64,
        counter: u64,
        addr: &str,
        described: Option<&Device>,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Records a decision.
    ///
    /// # Errors
    /// When the database fails.
    fn decide_device(
        &self,
        id: u64,
        status: DeviceStatus,
        environment: Option<u64>,
        reason: &str,
        by: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Forgets a device (it may ask again); false when there is none.
    ///
    /// # Errors
    /// When the database fails.
    fn forget_device(&self, id: u64) -> Result<bool, StoreError>;
}

fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("strings serialize")
}

fn tags_of(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

const TOKEN_COLUMNS: &str = "t.id, t.name, t.secret, t.url, t.group_id, g.name, t.tags, t.auto_admit, t.auto_tags, \
     t.max_uses, t.uses, t.expires_at, t.created_at, t.revoked_at";

fn token_row(r: &Row) -> super::sql::Result<FleetTokenRow> {
    let secret: Vec<u8> = r.get(2)?;
    Ok(FleetTokenRow {
        id: r.get::<i64>(0)? as u64,
        name: r.get(1)?,
        secret: Secret(secret.try_into().unwrap_or([0; 32])),
        url: r.get(3)?,
        group: match (r.get::<Option<i64>>(4)?, r.get::<Option<String>>(5)?) {
            (Some(id), Some(name)) => Some((id as u64, name)),
            _ => None,
        },
        tags: tags_of(&r.get::<String>(6)?),
        auto_admit: AutoAdmit::parse(&r.get::<String>(7)?).unwrap_or(AutoAdmit::Off),
        auto_tags: tags_of(&r.get::<String>(8)?),
        max_uses: r.get::<Option<i64>>(9)?.map(|v| v as u64),
        uses: r.get::<i64>(10)? as u64,
        expires_at: r.get(11)?,
        created_at: r.get(12)?,
        revoked_at: r.get(13)?,
    })
}

const DEVICE_COLUMNS: &str = "d.id, d.token, t.name, d.edge_id, d.device_key, d.hostname, d.agent_version, d.engine, \
     d.group_name, d.tags, d.addr, d.status, d.reason, d.environment, d.last_counter, d.first_seen, d.last_seen, \
     d.decided_at, d.decided_by";

fn device_row(r: &Row) -> super::sql::Result<Device> {
    let key: Vec<u8> = r.get(4)?;
    Ok(Device {
        id: r.get::<i64>(0)? as u64,
        token: (r.get::<i64>(1)? as u64, r.get(2)?),
        edge_id: r.get(3)?,
        device_key: key.try_into().unwrap_or([0; 32]),
        hostname: r.get(5)?,
        agent_version: r.get(6)?,
        engine: r.get(7)?,
        group: r.get(8)?,
        tags: tags_of(&r.get::<String>(9)?),
        addr: r.get(10)?,
        status: DeviceStatus::parse(&r.get::<String>(11)?).unwrap_or(DeviceStatus::Pending),
        reason: r.get(12)?,
        environment: r.get::<Option<i64>>(13)?.map(|v| v as u64),
        last_counter: r.get::<i64>(14)? as u64,
        first_seen: r.get(15)?,
        last_seen: r.get(16)?,
        decided_at: r.get(17)?,
        decided_by: r.get(18)?,
    })
}

impl AdmissionStore for Tx<'_> {
    fn create_fleet_token(&self, n: &NewFleetToken, now: i64) -> Result<u64, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO fleet_tokens (name, secret, url, group_id, tags, auto_admit, auto_tags, max_uses, \
             expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                n.name,
                n.secret.0.to_vec(),
                n.url,
                n.group.map(sql_id),
                tags_json(&n.tags),
                n.auto_admit.as_str(),
                tags_json(&n.auto_tags),
                n.max_uses.map(sql_id),
                n.expires_at,
                now
            ],
        )?;
        Ok(id as u64)
    }

    fn fleet_tokens(&self) -> Result<Vec<FleetTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM fleet_tokens t LEFT JOIN groups g ON g.id = t.group_id ORDER BY t.id DESC"
        );
        Ok(self.conn.prepare(&sql)?.query_map([], token_row)?.collect::<Result<_, _>>()?)
    }

    fn fleet_token(&self, id: u64) -> Result<Option<FleetTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM fleet_tokens t LEFT JOIN groups g ON g.id = t.group_id WHERE t.id = ?1"
        );
        Ok(self.conn.query_row(&sql, [sql_id(id)], token_row).optional()?)
    }

    fn revoke_fleet_token(&self, id: u64, now: i64) -> Result<bool, StoreError> {
        self.conn.execute(
            "UPDATE fleet_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![sql_id(id), now],
        )?;
        Ok(self
            .conn
            .query_row("SELECT 1 FROM fleet_tokens WHERE id = ?1", [sql_id(id)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn count_fleet_token_use(&self, id: u64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE fleet_tokens SET uses = uses + 1 WHERE id = ?1", [sql_id(id)])?;
        Ok(())
    }

    fn device_of(&self, token: u64, edge_id: &str) -> Result<Option<Device>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN fleet_tokens t ON t.id = d.token \
             WHERE d.token = ?1 AND d.edge_id = ?2"
        );
        Ok(self.conn.query_row(&sql, params![sql_id(token), edge_id], device_row).optional()?)
    }

    fn device(&self, id: u64) -> Result<Option<Device>, StoreError> {
        let sql =
            format!("SELECT {DEVICE_COLUMNS} FROM devices d JOIN fleet_tokens t ON t.id = d.token WHERE d.id = ?1");
        Ok(self.conn.query_row(&sql, [sql_id(id)], device_row).optional()?)
    }

    fn device_page(
        &self,
        statuses: &[DeviceStatus],
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<Device>, u64), StoreError> {
        // The statuses are this code's own words, not the caller's text.
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!(" WHERE d.status IN ({})", list.join(", "))
        };
        let total: i64 = self.conn.query_row(&format!("SELECT COUNT(*) FROM devices d{filter}"), [], |r| r.get(0))?;
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let rows = self
            .conn
            .prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN fleet_tokens t ON t.id = d.token{filter}
                 ORDER BY d.last_seen DESC, d.id DESC LIMIT ?1 OFFSET ?2"
            ))?
            .query_map(params![clamp(limit), clamp(offset)], device_row)?
            .collect::<Result<_, _>>()?;
        Ok((rows, total as u64))
    }

    fn waiting_devices(&self, token: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM devices WHERE token = ?1 AND status = 'pending'",
            [sql_id(token)],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn insert_device(&self, d: &Device) -> Result<u64, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO devices (token, edge_id, device_key, hostname, agent_version, engine, group_name, tags, \
             addr, status, last_counter, first_seen, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11, ?11)",
            params![
                sql_id(d.token.0),
                d.edge_id,
                d.device_key.to_vec(),
                d.hostname,
                d.agent_version,
                d.engine,
                d.group,
                tags_json(&d.tags),
                d.addr,
                sql_id(d.last_counter),
                d.first_seen
            ],
        )?;
        Ok(id as u64)
    }

    fn device_seen(
        &self,
        id: u64,
        counter: u64,
        addr: &str,
        described: Option<&Device>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET last_counter = ?2, addr = ?3, last_seen = ?4 WHERE id = ?1",
            params![sql_id(id), sql_id(counter), addr, now],
        )?;
        if let Some(d) = described {
            self.conn.execute(
                "UPDATE devices SET hostname = ?2, agent_version = ?3, engine = ?4, group_name = ?5, tags = ?6 \
                 WHERE id = ?1",
                params![sql_id(id), d.hostname, d.agent_version, d.engine, d.group, tags_json(&d.tags)],
            )?;
        }
        Ok(())
    }

    fn decide_device(
        &self,
        id: u64,
        status: DeviceStatus,
        environment: Option<u64>,
        reason: &str,
        by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET status = ?2, environment = ?3, reason = ?4, decided_by = ?5, decided_at = ?6 \
             WHERE id = ?1",
            params![sql_id(id), status.as_str(), environment.map(sql_id), reason, by, now],
        )?;
        Ok(())
    }

    fn forget_device(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM devices WHERE id = ?1", [sql_id(id)])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use crate::server::store::prelude::*;

    fn device(token: u64, edge_id: &str) -> Device {
        Device {
            id: 0,
            token: (token, String::new()),
            edge_id: edge_id.into(),
            device_key: [4; 32],
            hostname: "cam-1".into(),
            agent_version: "0.1.0".into(),
            engine: "Docker 27".into(),
            group: "north".into(),
            tags: vec!["solar".into()],
            addr: "192.0.2.9".into(),
            status: DeviceStatus::Pending,
            reason: String::new(),
            environment: None,
            last_counter: 3,
            first_seen: 100,
            last_seen: 100,
            decided_at: None,
            decided_by: String::new(),
        }
    }

    #[test]
    fn tokens_and_devices_are_stored_listed_decided_and_forgotten() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let g = tx.create_group("north").unwrap();
        let new = NewFleetToken {
            name: "batch-7".into(),
            secret: Secret([9; 32]),
            url: "https://ops:9443".into(),
            group: Some(g.id),
            tags: vec!["field".into()],
            auto_admit: AutoAdmit::Tags,
            auto_tags: vec!["solar".into()],
            max_uses: Some(2),
            expires_at: Some(500),
        };
        let id = tx.create_fleet_token(&new, 50).unwrap();
        let t = tx.fleet_token(id).unwrap().unwrap();
        assert_eq!(
            (t.group.clone(), t.tags.clone(), t.auto_admit),
            (Some((g.id, "north".into())), vec!["field".into()], AutoAdmit::Tags)
        );
        assert_eq!((t.max_uses, t.uses, t.expires_at, t.revoked_at), (Some(2), 0, Some(500), None));
        tx.count_fleet_token_use(id).unwrap();
        assert_eq!(tx.fleet_tokens().unwrap()[0].uses, 1);

        let d = tx.insert_device(&device(id, "cam-1")).unwrap();
        assert!(tx.insert_device(&device(id, "cam-1")).is_err(), "one device per token and EDGE_ID");
        let got = tx.device_of(id, "cam-1").unwrap().unwrap();
        assert_eq!(
            (got.id, got.token.1.as_str(), got.last_counter, got.status),
            (d, "batch-7", 3, DeviceStatus::Pending)
        );
        let mut again = device(id, "cam-1");
        again.hostname = "cam-1b".into();
        tx.device_seen(d, 9, "192.0.2.10", Some(&again), 160).unwrap();
        let got = tx.device(d).unwrap().unwrap();
        assert_eq!(
            (got.last_counter, got.addr.as_str(), got.hostname.as_str(), got.last_seen),
            (9, "192.0.2.10", "cam-1b", 160)
        );
        assert_eq!(tx.devices(Some(DeviceStatus::Pending)).unwrap().len(), 1);
        assert_eq!((tx.waiting_devices(id).unwrap(), tx.waiting_devices(id + 1).unwrap()), (1, 0));
        tx.decide_device(d, DeviceStatus::Rejected, None, "not ours", "user:admin", 170).unwrap();
        assert!(tx.devices(Some(DeviceStatus::Pending)).unwrap().is_empty());
        let got = tx.device(d).unwrap().unwrap();
        assert_eq!(
            (got.status, got.reason.as_str(), got.decided_by.as_str()),
            (DeviceStatus::Rejected, "not ours", "user:admin")
        );
        assert!(tx.revoke_fleet_token(id, 200).unwrap());
        assert!(tx.revoke_fleet_token(id, 300).unwrap());
        assert_eq!(tx.fleet_token(id).unwrap().unwrap().revoked_at, Some(200), "the first revocation stays");
        assert!(!tx.revoke_fleet_token(99, 300).unwrap());
        assert!(tx.forget_device(d).unwrap());
        assert!(!tx.forget_device(d).unwrap());
    }
}
