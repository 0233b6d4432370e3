//! Teams (migration 24, issue #17): users, and the groups of environments
//! they may see and act on. An admin sees everything; any other user sees
//! the environments in the groups of their teams, and the stacks, jobs,
//! commands and usage of those environments only ([`SCOPE_GROUPS`]). A
//! user in no team, or an environment in no group, is the admin's alone.

use std::collections::BTreeSet;

use super::sql::{OptionalExtension, params};
use super::{StoreError, Tx, sql_id};

/// The groups a user (`?1`) may see: those of their teams.
pub const SCOPE_GROUPS: &str =
    "SELECT tg.group_id FROM team_groups tg JOIN team_members tm ON tm.team = tg.team WHERE tm.user_id = ?1";

/// A team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created_at: i64,
    /// Its users: `(id, name)`, by name.
    pub members: Vec<(u64, String)>,
    /// Its groups: `(id, name)`, by name.
    pub groups: Vec<(u64, String)>,
}

/// What a change of a team came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamChange {
    /// Done: the team as it is now.
    Done(Team),
    /// No such team.
    NotFound,
    /// Another team has that name (nothing changed).
    NameTaken,
}

/// Teams, and what a user may see through them.
pub trait TeamStore {
    /// Makes a team with these members and groups (ids the caller checked
    /// exist), or changes one (`id`): what is `None` stays.
    ///
    /// # Errors
    /// When the database fails (then nothing changed).
    fn save_team(
        &self,
        id: Option<u64>,
        name: Option<&str>,
        members: Option<&[u64]>,
        groups: Option<&[u64]>,
        now: i64,
    ) -> Result<TeamChange, StoreError>;

    /// Every team, by name.
    ///
    /// # Errors
    /// When the database fails.
    fn teams(&self) -> Result<Vec<Team>, StoreError>;

    /// One team.
    ///
    /// # Errors
    /// When the database fails.
    fn team(&self, id: u64) -> Result<Option<Team>, StoreError>;

    /// Deletes a team; whether there was one.
    ///
    /// # Errors
    /// When the database fails.
    fn delete_team(&self, id: u64) -> Result<bool, StoreError>;

    /// Whether `user` may see environment `id` (`None`: no such
    /// environment).
    ///
    /// # Errors
    /// When the database fails.
    fn environment_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError>;

    /// Whether `user` may see command `id`: its environment's (`None`: no
    /// such command).
    ///
    /// # Errors
    /// When the database fails.
    fn command_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError>;

    /// Whether `user` may see stack `id`: it has a target, every target of
    /// it is one of their groups or an environment in one (a tag may reach
    /// beyond them), and so is every environment it is on (a stack whose
    /// targets are all gone is the admin's). `None`: no such stack.
    ///
    /// # Errors
    /// When the database fails.
    fn stack_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError>;

    /// Whether `user` may see job `id`: it targets an environment, and
    /// every one is in their groups. `None`: no such job.
    ///
    /// # Errors
    /// When the database fails.
    fn job_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError>;

    /// The environments `user` may see.
    ///
    /// # Errors
    /// When the database fails.
    fn scoped_environments(&self, user: u64) -> Result<BTreeSet<u64>, StoreError>;
}

/// Environments in the user's (`?1`) groups.
fn scoped_envs() -> String {
    format!("SELECT e.id FROM environments e WHERE e.group_id IN ({SCOPE_GROUPS})")
}

impl TeamStore for Tx<'_> {
    fn save_team(
        &self,
        id: Option<u64>,
        name: Option<&str>,
        members: Option<&[u64]>,
        groups: Option<&[u64]>,
        now: i64,
    ) -> Result<TeamChange, StoreError> {
        let tx = self.tx()?;
        if let Some(name) = name {
            let other: Option<i64> =
                tx.query_row("SELECT id FROM teams WHERE lower(name) = lower(?1)", [name], |r| r.get(0)).optional()?;
            if other.is_some_and(|o| Some(o as u64) != id) {
                return Ok(TeamChange::NameTaken);
            }
        }
        let id = match id {
            Some(id) => {
                if tx.team(id)?.is_none() {
                    return Ok(TeamChange::NotFound);
                }
                if let Some(name) = name {
                    tx.execute("UPDATE teams SET name = ?2 WHERE id = ?1", params![sql_id(id), name])?;
                }
                id
            }
            None => tx.insert(
                "INSERT INTO teams (name, created_at) VALUES (?1, ?2)",
                params![name.unwrap_or_default(), now],
            )? as u64,
        };
        if let Some(members) = members {
            tx.execute("DELETE FROM team_members WHERE team = ?1", [sql_id(id)])?;
            for m in members {
                tx.execute(
                    "INSERT INTO team_members (team, user_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![sql_id(id), sql_id(*m)],
                )?;
            }
        }
        if let Some(groups) = groups {
            tx.execute("DELETE FROM team_groups WHERE team = ?1", [sql_id(id)])?;
            for g in groups {
                tx.execute(
                    "INSERT INTO team_groups (team, group_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![sql_id(id), sql_id(*g)],
                )?;
            }
        }
        let team = tx.team(id)?.ok_or_else(|| StoreError::vanished("team"))?;
        tx.commit()?;
        Ok(TeamChange::Done(team))
    }

    fn teams(&self) -> Result<Vec<Team>, StoreError> {
        let ids: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM teams ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.team(id as u64)?);
        }
        Ok(out)
    }

    fn team(&self, id: u64) -> Result<Option<Team>, StoreError> {
        let Some((name, created_at)) = self
            .conn
            .query_row("SELECT name, created_at FROM teams WHERE id = ?1", [sql_id(id)], |r| {
                Ok((r.get::<String>(0)?, r.get::<i64>(1)?))
            })
            .optional()?
        else {
            return Ok(None);
        };
        let pairs = |sql: &str| -> Result<Vec<(u64, String)>, StoreError> {
            Ok(self
                .conn
                .prepare(sql)?
                .query_map([sql_id(id)], |r| Ok((r.get::<i64>(0)? as u64, r.get::<String>(1)?)))?
                .collect::<Result<_, _>>()?)
        };
        let members = pairs(
            "SELECT u.id, u.name FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team = ?1 ORDER BY u.name",
        )?;
        let groups = pairs(
            "SELECT g.id, g.name FROM team_groups t JOIN groups g ON g.id = t.group_id WHERE t.team = ?1 ORDER BY g.name",
        )?;
        Ok(Some(Team { id, name, created_at, members, groups }))
    }

    fn delete_team(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM teams WHERE id = ?1", [sql_id(id)])? == 1)
    }

    fn environment_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT e.group_id IS NOT NULL AND e.group_id IN ({SCOPE_GROUPS}) FROM environments e WHERE e.id = ?2"),
                params![sql_id(user), sql_id(id)],
                |r| r.get::<bool>(0),
            )
            .optional()?)
    }

    fn command_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError> {
        let env: Option<i64> = self
            .conn
            .query_row("SELECT environment FROM commands WHERE id = ?1", [sql_id(id)], |r| r.get(0))
            .optional()?;
        match env {
            None => Ok(None),
            Some(env) => Ok(Some(self.environment_in_scope(user, env as u64)?.unwrap_or(false))),
        }
    }

    fn stack_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError> {
        let envs = scoped_envs();
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM stack_targets t WHERE t.stack = s.id)
                     AND NOT EXISTS (SELECT 1 FROM stack_targets t WHERE t.stack = s.id AND NOT (
                            (t.group_id IS NOT NULL AND t.group_id IN ({SCOPE_GROUPS}))
                         OR (t.environment IS NOT NULL AND t.environment IN ({envs}))))
                     AND NOT EXISTS (SELECT 1 FROM stack_deployments d WHERE d.stack = s.id
                         AND d.environment NOT IN ({envs}))
                     FROM stacks s WHERE s.id = ?2"
                ),
                params![sql_id(user), sql_id(id)],
                |r| r.get::<bool>(0),
            )
            .optional()?)
    }

    fn job_in_scope(&self, user: u64, id: u64) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM job_targets t WHERE t.job = j.id)
                     AND NOT EXISTS (SELECT 1 FROM job_targets t WHERE t.job = j.id AND t.environment NOT IN ({}))
                     FROM jobs j WHERE j.id = ?2",
                    scoped_envs()
                ),
                params![sql_id(user), sql_id(id)],
                |r| r.get::<bool>(0),
            )
            .optional()?)
    }

    fn scoped_environments(&self, user: u64) -> Result<BTreeSet<u64>, StoreError> {
        Ok(self
            .conn
            .prepare(&scoped_envs())?
            .query_map([sql_id(user)], |r| r.get::<i64>(0).map(|v| v as u64))?
            .collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use crate::server::store::access::Role;
    use crate::server::store::prelude::*;

    #[test]
    fn a_user_sees_the_environments_of_their_teams_groups_only() {
        let db = Store::scratch().unwrap();
        let s = db.autocommit();
        s.create_user("ops", "h", Role::Operator, 0).unwrap();
        let ops = s.user("ops").unwrap().unwrap().id;
        let north = s.create_group("north").unwrap().id;
        let south = s.create_group("south").unwrap().id;
        let TeamChange::Done(team) = s.save_team(None, Some("field"), Some(&[ops]), Some(&[north]), 1).unwrap() else {
            panic!()
        };
        assert_eq!(team.members, [(ops, "ops".to_owned())]);
        assert_eq!(team.groups, [(north, "north".to_owned())]);
        assert_eq!(s.save_team(None, Some("FIELD"), None, None, 2).unwrap(), TeamChange::NameTaken);
        assert_eq!(s.save_team(Some(99), Some("x"), None, None, 2).unwrap(), TeamChange::NotFound);

        let env = |name: &str, group: Option<u64>| {
            let id = s.create_environment(name, crate::auth::Secret([7; 32]), 0).unwrap().id;
            let change = crate::server::store::fleet::EnvironmentChange {
                group: Some(group.map(crate::server::store::fleet::Ref::Id)),
                ..Default::default()
            };
            s.update_environment(id, &change).unwrap();
            id
        };
        let (a, b, c) = (env("a", Some(north)), env("b", Some(south)), env("c", None));
        assert_eq!(s.environment_in_scope(ops, a).unwrap(), Some(true));
        assert_eq!(s.environment_in_scope(ops, b).unwrap(), Some(false));
        assert_eq!(s.environment_in_scope(ops, c).unwrap(), Some(false), "no group: the admin's");
        assert_eq!(s.environment_in_scope(ops, 999).unwrap(), None);
        assert_eq!(s.scoped_environments(ops).unwrap(), BTreeSet::from([a]));
        // The team gains the south: b too; deleting the team: nothing.
        s.save_team(Some(team.id), None, None, Some(&[north, south]), 3).unwrap();
        assert_eq!(s.scoped_environments(ops).unwrap(), BTreeSet::from([a, b]));
        assert!(s.delete_team(team.id).unwrap());
        assert!(s.scoped_environments(ops).unwrap().is_empty());
    }
}
