//! Data usage per environment and hour (migration 5): bytes at the TLS
//! socket both ways (every TLS record, handshakes included; TCP/IP headers
//! not), poll body bytes both ways, and polls. Directions are the agent's:
//! up is what the server received. Per hour too, the socket bytes of
//! connections on which polls were made but none authenticated (charged to
//! no environment).
//!
//! Rows are keyed by the hour's first second (Unix time, UTC), and kept
//! [`KEPT_DAYS`] days: opening a new hourly row prunes the rows older than
//! that, so pruning costs one indexed delete per environment and hour.
//! A write is one `UPDATE` (one `INSERT` when the hour's row is new).

use super::sql::{OptionalExtension, Row, params};

use super::{StoreError, Tx, sql_id};

/// How long hourly rows are kept, in days.
pub const KEPT_DAYS: u32 = 30;

/// How many hours the per-hour report covers (7 days, the current hour last).
pub const REPORT_HOURS: usize = 7 * 24;

/// Seconds in an hour.
pub const HOUR: i64 = 3600;

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// The first second of the hour `t` falls in.
pub fn hour_of(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR
}

/// The first second of the UTC day `t` falls in.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

/// The oldest hour kept at `now`.
pub fn oldest_kept(now: i64) -> i64 {
    hour_of(now) - i64::from(KEPT_DAYS) * DAY
}

/// Bytes and polls over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes at the TLS socket from the agent (received by the server).
    pub tls_up: u64,
    /// Bytes at the TLS socket to the agent.
    pub tls_down: u64,
    /// Poll request bodies, as sent on the wire.
    pub body_up: u64,
    /// Poll reply bodies, as sent on the wire.
    pub body_down: u64,
    /// Polls answered.
    pub polls: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.tls_up += o.tls_up;
        self.tls_down += o.tls_down;
        self.body_up += o.body_up;
        self.body_down += o.body_down;
        self.polls += o.polls;
    }
}

impl Usage {
    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    fn from_row(r: &Row, first: usize) -> super::sql::Result<Self> {
        let get = |i: usize| r.get::<i64>(first + i).map(|v| v.max(0) as u64);
        Ok(Self { tls_up: get(0)?, tls_down: get(1)?, body_up: get(2)?, body_down: get(3)?, polls: get(4)? })
    }
}

/// Socket bytes of connections on which no poll authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unattributed {
    /// Received by the server.
    pub tls_up: u64,
    /// Sent by the server.
    pub tls_down: u64,
    /// Connections.
    pub connections: u64,
}

/// One environment's usage over a number of days, for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The first second of the first day covered.
    pub from: i64,
    /// Over every day covered.
    pub total: Usage,
    /// Since the start of today (UTC).
    pub today: Usage,
    /// Each UTC day covered, oldest first, by its first second; today last.
    pub days: Vec<(i64, Usage)>,
    /// The last [`REPORT_HOURS`] hours, oldest first, by their first
    /// second; the current hour last.
    pub hours: Vec<(i64, Usage)>,
}

/// One environment's line in the fleet's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentUsage {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Since the start of today (UTC).
    pub today: Usage,
    /// Over the days asked for.
    pub period: Usage,
}

/// The whole fleet's usage over a number of days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetUsage {
    /// The first second of the first day covered.
    pub from: i64,
    /// The first second of today (UTC).
    pub today_from: i64,
    /// Every environment, by id (those that used nothing too).
    pub environments: Vec<EnvironmentUsage>,
    /// Unattributed connections since the start of today.
    pub unattributed_today: Unattributed,
    /// Unattributed connections over the days asked for.
    pub unattributed_period: Unattributed,
}

fn sql_count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Socket bytes `((up, down) today, (up, down) over 30 days)`.
pub type TodayAnd30Days = ((u64, u64), (u64, u64));

/// The first second of the first of the `days` UTC days ending today.
fn period_start(now: i64, days: u32) -> i64 {
    day_of(now) - (i64::from(days.max(1)) - 1) * DAY
}

/// Bytes on the wire per environment and hour.
pub trait UsageStore {
    /// Adds `usage` to `environment`'s row for the hour of `now`. Opening a
    /// new row prunes what is older than [`KEPT_DAYS`]. An environment
    /// deleted meanwhile is charged nothing.
    ///
    /// # Errors
    /// When the database fails.
    fn record_usage(&self, environment: u64, now: i64, usage: &Usage) -> Result<(), StoreError>;

    /// Adds socket bytes of connections no environment answers for (and
    /// `connections` new such connections) to the hour of `now`.
    ///
    /// # Errors
    /// When the database fails.
    fn record_unattributed(&self, now: i64, tls_up: u64, tls_down: u64, connections: u64) -> Result<(), StoreError>;

    /// Deletes the usage rows older than [`KEPT_DAYS`] days before `now`;
    /// returns how many.
    ///
    /// # Errors
    /// When the database fails.
    fn prune_usage(&self, now: i64) -> Result<usize, StoreError>;

    /// `environment`'s hourly rows from `from` to `to` (both included),
    /// oldest first; hours without traffic have no row.
    ///
    /// # Errors
    /// When the database fails.
    fn usage_hours(&self, environment: u64, from: i64, to: i64) -> Result<Vec<(i64, Usage)>, StoreError>;

    /// `environment`'s usage over the `days` UTC days ending today (1 to
    /// [`KEPT_DAYS`]; today is the day of `now`): in total, per day and,
    /// for the last [`REPORT_HOURS`] hours, per hour. Days and hours
    /// without traffic are listed with zeros.
    ///
    /// # Errors
    /// When the environment does not exist or the database fails.
    fn usage_report(&self, environment: u64, now: i64, days: u32) -> Result<UsageReport, StoreError>;

    /// Socket bytes `(up, down)` today and over the last [`KEPT_DAYS`] days
    /// of each environment in `ids` (those with none are left out): the
    /// fleet list's columns. One query over the primary key, so a page of
    /// 100 costs 100 short range scans.
    ///
    /// # Errors
    /// When the database fails.
    fn usage_totals(&self, ids: &[u64], now: i64)
    -> Result<std::collections::HashMap<u64, TodayAnd30Days>, StoreError>;

    /// Every environment's usage today and over the `days` UTC days ending
    /// today (1 to [`KEPT_DAYS`]), and the unattributed connections'.
    ///
    /// # Errors
    /// When the database fails.
    fn fleet_usage(&self, now: i64, days: u32) -> Result<FleetUsage, StoreError>;
}

impl UsageStore for Tx<'_> {
    fn record_usage(&self, environment: u64, now: i64, usage: &Usage) -> Result<(), StoreError> {
        if usage.is_zero() {
            return Ok(());
        }
        let hour = hour_of(now);
        let values = [
            sql_id(environment),
            hour,
            sql_count(usage.tls_up),
            sql_count(usage.tls_down),
            sql_count(usage.body_up),
            sql_count(usage.body_down),
            sql_count(usage.polls),
        ];
        let updated = self
            .conn
            .prepare_cached(
                "UPDATE usage_hourly SET tls_up = tls_up + ?3, tls_down = tls_down + ?4, body_up = body_up + ?5,
                 body_down = body_down + ?6, polls = polls + ?7 WHERE environment = ?1 AND hour = ?2",
            )?
            .execute(values)?;
        if updated == 0 {
            let inserted = self
                .conn
                .prepare_cached(
                    // Another replica may insert the hour's row first: then
                    // this adds to it.
                    "INSERT INTO usage_hourly (environment, hour, tls_up, tls_down, body_up, body_down, polls)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM environments WHERE id = ?1)
                     ON CONFLICT (environment, hour) DO UPDATE SET tls_up = usage_hourly.tls_up + excluded.tls_up,
                     tls_down = usage_hourly.tls_down + excluded.tls_down,
                     body_up = usage_hourly.body_up + excluded.body_up,
                     body_down = usage_hourly.body_down + excluded.body_down,
                     polls = usage_hourly.polls + excluded.polls",
                )?
                .execute(values)?;
            if inserted > 0 {
                self.prune_usage(now)?;
            }
        }
        Ok(())
    }

    fn record_unattributed(&self, now: i64, tls_up: u64, tls_down: u64, connections: u64) -> Result<(), StoreError> {
        let values = [hour_of(now), sql_count(tls_up), sql_count(tls_down), sql_count(connections)];
        let updated = self
            .conn
            .prepare_cached(
                "UPDATE usage_unattributed SET tls_up = tls_up + ?2, tls_down = tls_down + ?3,
                 connections = connections + ?4 WHERE hour = ?1",
            )?
            .execute(values)?;
        if updated == 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO usage_unattributed (hour, tls_up, tls_down, connections) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (hour) DO UPDATE SET tls_up = usage_unattributed.tls_up + excluded.tls_up,
                     tls_down = usage_unattributed.tls_down + excluded.tls_down,
                     connections = usage_unattributed.connections + excluded.connections",
                )?
                .execute(values)?;
            self.prune_usage(now)?;
        }
        Ok(())
    }

    fn prune_usage(&self, now: i64) -> Result<usize, StoreError> {
        let oldest = oldest_kept(now);
        let hourly = self.conn.prepare_cached("DELETE FROM usage_hourly WHERE hour < ?1")?.execute([oldest])?;
        let other = self.conn.prepare_cached("DELETE FROM usage_unattributed WHERE hour < ?1")?.execute([oldest])?;
        Ok(hourly + other)
    }

    fn usage_hours(&self, environment: u64, from: i64, to: i64) -> Result<Vec<(i64, Usage)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT hour, tls_up, tls_down, body_up, body_down, polls FROM usage_hourly
             WHERE environment = ?1 AND hour >= ?2 AND hour <= ?3 ORDER BY hour",
        )?;
        let rows =
            stmt.query_map(params![sql_id(environment), from, to], |r| Ok((r.get(0)?, Usage::from_row(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn usage_report(&self, environment: u64, now: i64, days: u32) -> Result<UsageReport, StoreError> {
        self.environment_exists(environment)?;
        let days = days.clamp(1, KEPT_DAYS);
        let from = period_start(now, days);
        let current = hour_of(now);
        let first_hour = current - (REPORT_HOURS as i64 - 1) * HOUR;
        let rows = self.usage_hours(environment, from.min(first_hour), current)?;
        let today_from = day_of(now);
        let mut report = UsageReport {
            from,
            total: Usage::default(),
            today: Usage::default(),
            days: (0..i64::from(days)).map(|d| (from + d * DAY, Usage::default())).collect(),
            hours: (0..REPORT_HOURS as i64).map(|h| (first_hour + h * HOUR, Usage::default())).collect(),
        };
        for (hour, usage) in rows {
            if hour >= from {
                report.total += usage;
                report.days[((hour - from) / DAY) as usize].1 += usage;
            }
            if hour >= today_from {
                report.today += usage;
            }
            if hour >= first_hour {
                report.hours[((hour - first_hour) / HOUR) as usize].1 += usage;
            }
        }
        Ok(report)
    }

    fn usage_totals(
        &self,
        ids: &[u64],
        now: i64,
    ) -> Result<std::collections::HashMap<u64, TodayAnd30Days>, StoreError> {
        let from = period_start(now, KEPT_DAYS);
        let today_from = day_of(now);
        let mut stmt = self.conn.prepare_cached(
            "SELECT environment,
                 COALESCE(SUM(CASE WHEN hour >= ?2 THEN tls_up END), 0),
                 COALESCE(SUM(CASE WHEN hour >= ?2 THEN tls_down END), 0),
                 SUM(tls_up), SUM(tls_down)
             FROM usage_hourly WHERE environment = ?3 AND hour >= ?1 GROUP BY environment",
        )?;
        let mut out = std::collections::HashMap::new();
        for &id in ids {
            let row = stmt
                .query_row(params![from, today_from, sql_id(id)], |r| {
                    let n = |i| r.get::<i64>(i).map(|v| v.max(0) as u64);
                    Ok(((n(1)?, n(2)?), (n(3)?, n(4)?)))
                })
                .optional()?;
            if let Some(v) = row {
                out.insert(id, v);
            }
        }
        Ok(out)
    }

    fn fleet_usage(&self, now: i64, days: u32) -> Result<FleetUsage, StoreError> {
        let from = period_start(now, days.clamp(1, KEPT_DAYS));
        let today_from = day_of(now);
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.id, e.name,
                 COALESCE(SUM(CASE WHEN u.hour >= ?2 THEN u.tls_up END), 0),
                 COALESCE(SUM(CASE WHEN u.hour >= ?2 THEN u.tls_down END), 0),
                 COALESCE(SUM(CASE WHEN u.hour >= ?2 THEN u.body_up END), 0),
                 COALESCE(SUM(CASE WHEN u.hour >= ?2 THEN u.body_down END), 0),
                 COALESCE(SUM(CASE WHEN u.hour >= ?2 THEN u.polls END), 0),
                 COALESCE(SUM(u.tls_up), 0), COALESCE(SUM(u.tls_down), 0), COALESCE(SUM(u.body_up), 0),
                 COALESCE(SUM(u.body_down), 0), COALESCE(SUM(u.polls), 0)
             FROM environments e LEFT JOIN usage_hourly u ON u.environment = e.id AND u.hour >= ?1
             GROUP BY e.id ORDER BY e.id",
        )?;
        let rows = stmt.query_map([from, today_from], |r| {
            Ok(EnvironmentUsage {
                id: r.get::<i64>(0)? as u64,
                name: r.get(1)?,
                today: Usage::from_row(r, 2)?,
                period: Usage::from_row(r, 7)?,
            })
        })?;
        let environments = rows.collect::<Result<_, _>>()?;
        let (unattributed_today, unattributed_period) = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(CASE WHEN hour >= ?2 THEN tls_up END), 0),
                     COALESCE(SUM(CASE WHEN hour >= ?2 THEN tls_down END), 0),
                     COALESCE(SUM(CASE WHEN hour >= ?2 THEN connections END), 0),
                     COALESCE(SUM(tls_up), 0), COALESCE(SUM(tls_down), 0), COALESCE(SUM(connections), 0)
                 FROM usage_unattributed WHERE hour >= ?1",
            )?
            .query_row([from, today_from], |r| {
                let get = |i: usize| r.get::<i64>(i).map(|v| v.max(0) as u64);
                Ok((
                    Unattributed { tls_up: get(0)?, tls_down: get(1)?, connections: get(2)? },
                    Unattributed { tls_up: get(3)?, tls_down: get(4)?, connections: get(5)? },
                ))
            })?;
        Ok(FleetUsage { from, today_from, environments, unattributed_today, unattributed_period })
    }
}

impl Tx<'_> {
    fn environment_exists(&self, id: u64) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT 1 FROM environments WHERE id = ?1", [sql_id(id)], |_| Ok(()))
            .optional()?
            .ok_or(StoreError::NotFound(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::server::store::Store;
    use crate::server::store::prelude::*;

    /// 2024-05-01T00:00:00Z.
    const MAY_1: i64 = 1_714_521_600;

    fn usage(tls_up: u64, tls_down: u64, body_up: u64, body_down: u64, polls: u64) -> Usage {
        Usage { tls_up, tls_down, body_up, body_down, polls }
    }

    fn setup() -> (Store, u64, u64) {
        let store = Store::scratch().unwrap();
        let a = store.autocommit().create_environment("a", Secret([1; 32]), 0).unwrap().id;
        let b = store.autocommit().create_environment("b", Secret([2; 32]), 0).unwrap().id;
        (store, a, b)
    }

    fn rows(store: &Tx<'_>, table: &str) -> i64 {
        store.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn usage_adds_up_within_an_hour_and_rolls_to_a_new_bucket_each_hour() {
        let (store_db, a, b) = setup();
        let store = store_db.autocommit();
        let t = MAY_1 + 10 * HOUR;
        store.record_usage(a, t, &usage(100, 200, 10, 20, 1)).unwrap();
        store.record_usage(a, t + 3599, &usage(1, 2, 3, 4, 1)).unwrap();
        store.record_usage(b, t + 60, &usage(7, 7, 7, 7, 1)).unwrap();
        // The next hour starts a new bucket.
        store.record_usage(a, t + HOUR, &usage(5, 6, 0, 0, 0)).unwrap();
        assert_eq!(
            store.usage_hours(a, MAY_1, MAY_1 + DAY).unwrap(),
            vec![(t, usage(101, 202, 13, 24, 2)), (t + HOUR, usage(5, 6, 0, 0, 0))]
        );
        assert_eq!(store.usage_hours(b, MAY_1, MAY_1 + DAY).unwrap(), vec![(t, usage(7, 7, 7, 7, 1))]);
        // Nothing counted writes nothing; a deleted environment is charged nothing.
        store.record_usage(a, t + 5 * HOUR, &Usage::default()).unwrap();
        store.record_usage(99, t, &usage(1, 1, 1, 1, 1)).unwrap();
        assert_eq!(rows(&store, "usage_hourly"), 3);
    }

    #[test]
    fn rows_older_than_thirty_days_are_pruned_when_a_new_hour_opens() {
        let (store_db, a, b) = setup();
        let store = store_db.autocommit();
        store.record_usage(a, MAY_1, &usage(1, 1, 1, 1, 1)).unwrap();
        store.record_usage(b, MAY_1 + HOUR, &usage(2, 2, 2, 2, 1)).unwrap();
        store.record_unattributed(MAY_1, 50, 60, 1).unwrap();
        // Exactly 30 days later, the first hour is still kept.
        let later = MAY_1 + 30 * DAY;
        store.record_usage(a, later, &usage(3, 3, 3, 3, 1)).unwrap();
        assert_eq!(rows(&store, "usage_hourly"), 3);
        assert_eq!(rows(&store, "usage_unattributed"), 1);
        // One hour more: the new bucket prunes the first hour's rows,
        // unattributed included; the second hour is still within 30 days.
        store.record_usage(a, later + HOUR, &usage(4, 4, 4, 4, 1)).unwrap();
        assert_eq!(store.usage_hours(a, 0, i64::MAX).unwrap().len(), 2);
        assert_eq!(store.usage_hours(b, 0, i64::MAX).unwrap().len(), 1);
        assert_eq!(rows(&store, "usage_unattributed"), 0);
        // Another write within the same hour prunes nothing (it opens no row).
        store.record_usage(a, later + HOUR + 10, &usage(1, 0, 0, 0, 0)).unwrap();
        assert_eq!(store.usage_hours(b, 0, i64::MAX).unwrap().len(), 1);
        assert_eq!(store.prune_usage(later + 2 * HOUR).unwrap(), 1);
        assert!(store.usage_hours(b, 0, i64::MAX).unwrap().is_empty());
    }

    #[test]
    fn a_report_has_every_day_and_the_last_week_hour_by_hour() {
        let (store_db, a, b) = setup();
        let store = store_db.autocommit();
        let now = MAY_1 + 9 * DAY + 13 * HOUR + 5; // May 10, 13:00:05
        store.record_usage(a, MAY_1 + 2 * DAY, &usage(1000, 1, 0, 0, 1)).unwrap(); // May 3: 8 days ago
        store.record_usage(a, MAY_1 + 3 * DAY + 14 * HOUR, &usage(10, 20, 1, 2, 1)).unwrap(); // May 4, 14:00
        store.record_usage(a, MAY_1 + 9 * DAY + 3 * HOUR, &usage(30, 40, 3, 4, 2)).unwrap(); // today 03:00
        store.record_usage(a, now, &usage(5, 5, 5, 5, 1)).unwrap(); // today 13:00
        store.record_usage(b, now, &usage(9, 9, 9, 9, 9)).unwrap();

        let r = store.usage_report(a, now, 7).unwrap();
        assert_eq!(r.from, MAY_1 + 3 * DAY, "7 days: May 4 to today");
        assert_eq!(r.days.len(), 7);
        assert_eq!(r.days[0], (MAY_1 + 3 * DAY, usage(10, 20, 1, 2, 1)));
        assert!(r.days[1..6].iter().all(|(_, u)| u.is_zero()));
        assert_eq!(r.days[6], (MAY_1 + 9 * DAY, usage(35, 45, 8, 9, 3)));
        assert_eq!((r.total, r.today), (usage(45, 65, 9, 11, 4), usage(35, 45, 8, 9, 3)));
        // 168 hours, the current one last: from May 3 14:00 (May 3 00:00
        // is too old to be listed), May 4 14:00 a day later.
        assert_eq!(r.hours.len(), REPORT_HOURS);
        assert_eq!(r.hours[REPORT_HOURS - 1], (MAY_1 + 9 * DAY + 13 * HOUR, usage(5, 5, 5, 5, 1)));
        assert_eq!(r.hours[0], (MAY_1 + 2 * DAY + 14 * HOUR, Usage::default()));
        assert_eq!(r.hours[24], (MAY_1 + 3 * DAY + 14 * HOUR, usage(10, 20, 1, 2, 1)));
        assert_eq!(r.hours[REPORT_HOURS - 11], (MAY_1 + 9 * DAY + 3 * HOUR, usage(30, 40, 3, 4, 2)));
        assert_eq!(r.hours.iter().filter(|(_, u)| !u.is_zero()).count(), 3);

        let month = store.usage_report(a, now, 30).unwrap();
        assert_eq!((month.days.len(), month.from), (30, MAY_1 + 9 * DAY - 29 * DAY));
        assert_eq!(month.total, usage(1045, 66, 9, 11, 5));
        let one = store.usage_report(a, now, 1).unwrap();
        assert_eq!((one.days.len(), one.total, one.hours.len()), (1, usage(35, 45, 8, 9, 3), REPORT_HOURS));
        assert!(matches!(store.usage_report(99, now, 7), Err(StoreError::NotFound(99))));
    }

    #[test]
    fn the_fleet_view_lists_every_environment_with_today_and_the_period() {
        let (store_db, a, b) = setup();
        let store = store_db.autocommit();
        let c = store.create_environment("c", Secret([3; 32]), 0).unwrap().id;
        let now = MAY_1 + 5 * DAY + 8 * HOUR;
        store.record_usage(a, MAY_1 + 4 * DAY, &usage(100, 100, 10, 10, 1)).unwrap();
        store.record_usage(a, now, &usage(1, 2, 3, 4, 1)).unwrap();
        store.record_usage(b, MAY_1, &usage(7, 7, 7, 7, 7)).unwrap();
        store.record_unattributed(MAY_1 + 4 * DAY, 500, 600, 2).unwrap();
        store.record_unattributed(now, 50, 60, 1).unwrap();
        store.record_unattributed(now, 5, 0, 0).unwrap();

        let f = store.fleet_usage(now, 2).unwrap();
        assert_eq!((f.from, f.today_from), (MAY_1 + 4 * DAY, MAY_1 + 5 * DAY));
        let lines: Vec<_> = f.environments.iter().map(|e| (e.id, e.name.as_str(), e.today, e.period)).collect();
        assert_eq!(
            lines,
            vec![
                (a, "a", usage(1, 2, 3, 4, 1), usage(101, 102, 13, 14, 2)),
                (b, "b", Usage::default(), Usage::default()),
                (c, "c", Usage::default(), Usage::default()),
            ]
        );
        assert_eq!(f.unattributed_today, Unattributed { tls_up: 55, tls_down: 60, connections: 1 });
        assert_eq!(f.unattributed_period, Unattributed { tls_up: 555, tls_down: 660, connections: 3 });
        let f = store.fleet_usage(now, 30).unwrap();
        assert_eq!(f.environments[1].period, usage(7, 7, 7, 7, 7));
    }
}
