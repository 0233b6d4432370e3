//! The audit log (migration 19, issue #17): one row for every
//! state-changing action an operator or a token asked for, and for every
//! login, failed ones too. Who, what, which target, when, from which
//! address, and how it ended (the HTTP status); never a request's body, so
//! no password, token, secret or variable value is ever written here.

use super::sql::{Row, params};

use super::{StoreError, Tx};

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its id (0 before it is stored).
    pub id: u64,
    /// Unix seconds.
    pub at: i64,
    /// Who: `user:NAME` (a UI session), `token:NAME` (an API token), or
    /// for a login, `user:NAME` as typed.
    pub actor: String,
    /// What: `METHOD /route/{template}`, or `login`.
    pub action: String,
    /// Which target: the request's path (`/api/environments/3/commands`).
    pub target: String,
    /// How it ended: the HTTP status.
    pub status: u16,
    /// From which address (`-` when unknown).
    pub addr: String,
}

/// What to list: every field optional; text matches as a substring,
/// without case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// In `actor`.
    pub actor: Option<String>,
    /// In `action`.
    pub action: Option<String>,
    /// In `target`.
    pub target: Option<String>,
    /// At or after (unix seconds).
    pub since: Option<i64>,
    /// Before (unix seconds).
    pub until: Option<i64>,
    /// Only entries with an id below this (the next page, newest first).
    pub before_id: Option<u64>,
    /// At most this many.
    pub limit: u32,
}

/// The audit log's storage.
pub trait AuditStore {
    /// Appends an entry.
    ///
    /// # Errors
    /// When the database fails.
    fn audit_append(&self, entry: &AuditEntry) -> Result<u64, StoreError>;

    /// Entries matching `filter`, newest first.
    ///
    /// # Errors
    /// When the database fails.
    fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Forgets the entries older than `before`; how many.
    ///
    /// # Errors
    /// When the database fails.
    fn audit_prune(&self, before: i64) -> Result<u64, StoreError>;
}

fn like(text: &Option<String>) -> Option<String> {
    text.as_ref().filter(|t| !t.is_empty()).map(|t| {
        // ASCII only, as SQLite's lower() folds.
        let escaped = t.to_ascii_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    })
}

impl AuditStore for Tx<'_> {
    fn audit_append(&self, e: &AuditEntry) -> Result<u64, StoreError> {
        let id = self.conn.insert(
            "INSERT INTO audit (at, actor, action, target, status, addr) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.actor, e.action, e.target, i64::from(e.status), e.addr],
        )?;
        Ok(id as u64)
    }

    fn audit_list(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        // Only the conditions given, so every parameter has a type both
        // databases can see; lower() on both sides of LIKE, so both compare
        // without case the same way.
        let (actor, action, target) = (like(&f.actor), like(&f.action), like(&f.target));
        let before = f.before_id.map(|b| b as i64);
        let limit = i64::from(f.limit);
        let mut conditions = Vec::new();
        let mut values: Vec<&dyn super::sql::ToSql> = Vec::new();
        for (column, value) in [("actor", &actor), ("action", &action), ("target", &target)] {
            if let Some(v) = value {
                values.push(v);
                conditions.push(format!("lower({column}) LIKE ?{} ESCAPE '\\'", values.len()));
            }
        }
        for (condition, value) in [("at >= ", &f.since), ("at < ", &f.until), ("id < ", &before)] {
            if let Some(v) = value {
                values.push(v);
                conditions.push(format!("{condition}?{}", values.len()));
            }
        }
        values.push(&limit);
        let sql = format!(
            "SELECT id, at, actor, action, target, status, addr FROM audit {} ORDER BY id DESC LIMIT ?{}",
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) },
            values.len()
        );
        Ok(self.conn.prepare(&sql)?.query_map(values.as_slice(), entry_row)?.collect::<Result<_, _>>()?)
    }

    fn audit_prune(&self, before: i64) -> Result<u64, StoreError> {
        Ok(self.conn.execute("DELETE FROM audit WHERE at < ?1", [before])? as u64)
    }
}

fn entry_row(r: &Row) -> super::sql::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get::<i64>(0)? as u64,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        status: u16::try_from(r.get::<i64>(5)?).unwrap_or(0),
        addr: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;

    fn entry(at: i64, actor: &str, action: &str, target: &str, status: u16) -> AuditEntry {
        AuditEntry {
            id: 0,
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            status,
            addr: "192.0.2.7".into(),
        }
    }

    #[test]
    fn entries_are_listed_newest_first_filtered_paged_and_pruned() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        tx.audit_append(&entry(100, "user:admin", "login", "/api/auth/login", 200)).unwrap();
        tx.audit_append(&entry(200, "token:ci", "POST /api/stacks", "/api/stacks", 201)).unwrap();
        tx.audit_append(&entry(300, "user:eve", "login", "/api/auth/login", 401)).unwrap();
        tx.audit_append(&entry(400, "user:admin", "DELETE /api/environments/{id}", "/api/environments/3", 204))
            .unwrap();
        let all = tx.audit_list(&AuditFilter { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(all.iter().map(|e| e.at).collect::<Vec<_>>(), [400, 300, 200, 100]);
        let admin = tx.audit_list(&AuditFilter { actor: Some("ADMIN".into()), limit: 10, ..Default::default() });
        assert_eq!(admin.unwrap().len(), 2);
        let logins = tx.audit_list(&AuditFilter { action: Some("login".into()), limit: 10, ..Default::default() });
        assert_eq!(logins.unwrap().len(), 2);
        let env3 =
            tx.audit_list(&AuditFilter { target: Some("environments/3".into()), limit: 10, ..Default::default() });
        assert_eq!(env3.unwrap()[0].status, 204);
        let window = tx
            .audit_list(&AuditFilter { since: Some(200), until: Some(400), limit: 10, ..Default::default() })
            .unwrap();
        assert_eq!(window.iter().map(|e| e.at).collect::<Vec<_>>(), [300, 200]);
        let page = tx.audit_list(&AuditFilter { limit: 2, ..Default::default() }).unwrap();
        let next = tx.audit_list(&AuditFilter { before_id: Some(page[1].id), limit: 2, ..Default::default() }).unwrap();
        assert_eq!(next.iter().map(|e| e.at).collect::<Vec<_>>(), [200, 100]);
        // % and _ in a filter are literal.
        let none = tx.audit_list(&AuditFilter { actor: Some("%".into()), limit: 10, ..Default::default() }).unwrap();
        assert!(none.is_empty());
        assert_eq!(tx.audit_prune(300).unwrap(), 2);
        assert_eq!(tx.audit_list(&AuditFilter { limit: 10, ..Default::default() }).unwrap().len(), 2);
    }
}
