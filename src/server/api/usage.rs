//! Data usage: what each environment's polls cost on the wire, per hour,
//! per day and in total, for checking against a data plan; and how polls
//! are charged (the poll handler calls [`charge_poll`]).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/environments/{id}/usage?days=N` | totals, each UTC day, and each hour of the last 7 days |
//! | `GET /api/usage?days=N` | each environment today and over the last N days, the grand total, and unattributed connections |
//!
//! `days` is 1 to 30 (usage is kept 30 days), 30 when absent; the last N
//! days are the N UTC days ending today, today included. Every figure
//! holds `tls_up`, `tls_down` (bytes at the TLS socket: every TLS record,
//! handshakes included; up is from the agent), `body_up`, `body_down` (poll
//! bodies of answered polls) and `polls` (polls answered).
//!
//! How a poll is charged: the server counts each connection's bytes under
//! TLS. A poll whose MAC proves it comes from an environment's agent ties
//! the connection to that environment, and charges it what the connection
//! carried since the last charge (the handshake with the first poll); what
//! is left when the connection closes (the last reply, the closing alerts)
//! is charged then, or at shutdown. Polls refused for a replayed counter, a
//! second agent or a missing `AGENT_SECRET` still prove the environment's
//! secret, so their bytes are charged too (not counted as polls or bodies).
//! A connection whose polls never authenticate is charged to no one: its
//! bytes go to the server-wide "unattributed" figure. A connection used
//! only for API calls is not counted at all.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;

use super::types::{
    DayView, EnvironmentUsageView, FleetLine, FleetUsageView, HourView, Span, UnattributedView, UsageView,
};
use super::{ApiError, PathId, read_usage};
use crate::meter::{ConnMeter, UsageSink};
use crate::server::http::AppState;
use crate::server::store::usage::{KEPT_DAYS, Unattributed, Usage};

/// The days a report covers when `days` is not given.
pub const DEFAULT_DAYS: u32 = KEPT_DAYS;

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self { tls_up: u.tls_up, tls_down: u.tls_down, body_up: u.body_up, body_down: u.body_down, polls: u.polls }
    }
}

impl From<Unattributed> for UnattributedView {
    fn from(u: Unattributed) -> Self {
        Self { tls_up: u.tls_up, tls_down: u.tls_down, connections: u.connections }
    }
}

/// The routes (the caller puts them behind the API's authentication).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/environments/{id}/usage", get(environment_usage)).route("/api/usage", get(fleet_usage))
}

/// Reads `days` from a query string: 1 to [`KEPT_DAYS`], default
/// [`DEFAULT_DAYS`]. Any other parameter is refused.
fn days(query: Option<&str>) -> Result<u32, ApiError> {
    let mut days = DEFAULT_DAYS;
    for (key, value) in super::query_pairs(query)? {
        if key != "days" {
            let key: String = key.chars().take(40).collect();
            return Err(ApiError::bad_request(format!("unknown query parameter {key:?}; only days")));
        }
        let n: i64 = value.parse().map_err(|_| {
            let value: String = value.chars().take(40).collect();
            ApiError::bad_request(format!("days: {value:?} is not a whole number of days"))
        })?;
        days = u32::try_from(n).ok().filter(|d| (1..=KEPT_DAYS).contains(d)).ok_or_else(|| {
            ApiError::invalid(format!("days: from 1 to {KEPT_DAYS} (usage is kept {KEPT_DAYS} days), not {n}"))
        })?;
    }
    Ok(days)
}

fn date(start: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(start).map(|t| t.date().to_string()).unwrap_or_default()
}

/// `GET /api/environments/{id}/usage?days=N`.
pub async fn environment_usage(
    State(state): State<Arc<AppState>>,
    PathId(id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentUsageView>, ApiError> {
    let days = days(query.as_deref())?;
    let now = super::super::http::now();
    let (name, report) = read_usage(&state, move |store| {
        let name = store.environment_info(id)?.name;
        Ok((name, store.usage_report(id, now, days)?))
    })
    .await?;
    Ok(Json(EnvironmentUsageView {
        environment: id,
        name,
        days,
        from: report.from,
        now,
        total: report.total.into(),
        today: report.today.into(),
        per_day: report
            .days
            .into_iter()
            .map(|(start, u)| DayView { day: date(start), start, usage: u.into() })
            .collect(),
        per_hour: report.hours.into_iter().map(|(hour, u)| HourView { hour, usage: u.into() }).collect(),
    }))
}

/// `GET /api/usage?days=N`.
pub async fn fleet_usage(
    State(state): State<Arc<AppState>>,
    axum::Extension(scope): axum::Extension<super::teams::Scope>,
    RawQuery(query): RawQuery,
) -> Result<Json<FleetUsageView>, ApiError> {
    let days = days(query.as_deref())?;
    let now = super::super::http::now();
    let (mut fleet, seen) = read_usage(&state, move |store| {
        let seen = scope.0.map(|user| store.scoped_environments(user)).transpose()?;
        Ok((store.fleet_usage(now, days)?, seen))
    })
    .await?;
    // Out of the caller's teams' groups: neither the environments nor the
    // bytes no environment is charged for.
    if let Some(seen) = seen {
        fleet.environments.retain(|e| seen.contains(&e.id));
        fleet.unattributed_today = Default::default();
        fleet.unattributed_period = Default::default();
    }
    let mut total = Span::<UsageView>::default();
    let environments = fleet
        .environments
        .into_iter()
        .map(|e| {
            let usage = Span { today: e.today.into(), period: e.period.into() };
            total.today += usage.today;
            total.period += usage.period;
            FleetLine { id: e.id, name: e.name, usage }
        })
        .collect();
    Ok(Json(FleetUsageView {
        days,
        from: fleet.from,
        today_from: fleet.today_from,
        now,
        environments,
        total,
        unattributed: Span { today: fleet.unattributed_today.into(), period: fleet.unattributed_period.into() },
    }))
}

impl UsageSink for AppState {
    fn charge_wire(&self, environment: Option<u64>, up: u64, down: u64, connections: u64) {
        let now = super::super::http::now();
        match environment {
            Some(env) => self.usage.charge(env, now, Usage { tls_up: up, tls_down: down, ..Usage::default() }),
            None => self.usage.charge_unattributed(now, up, down, connections),
        }
    }
}

/// Charges one poll: `environment` is the environment whose key
/// authenticated it (`None` for a poll that proved nothing), `bodies` the
/// request and reply body sizes of an answered poll, `meter` the
/// connection's, when the poll came over a connection the server counts.
pub fn charge_poll(
    meter: Option<&ConnMeter>,
    state: &Arc<AppState>,
    environment: Option<u64>,
    bodies: Option<(usize, usize)>,
    now: i64,
) {
    let sink = || -> Arc<dyn UsageSink> { state.clone() };
    let Some(environment) = environment else {
        if let Some(meter) = meter {
            meter.refused(sink());
        }
        return;
    };
    let (tls_up, tls_down) = meter.map_or((0, 0), |m| m.attribute(environment, sink()));
    let mut usage = Usage { tls_up, tls_down, ..Usage::default() };
    if let Some((up, down)) = bodies {
        usage.body_up = up as u64;
        usage.body_down = down as u64;
        usage.polls = 1;
    }
    state.usage.charge(environment, now, usage);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_defaults_to_thirty_and_refuses_what_is_not_one_to_thirty() {
        assert_eq!(days(None).unwrap(), 30);
        assert_eq!(days(Some("")).unwrap(), 30);
        assert_eq!(days(Some("days=7")).unwrap(), 7);
        assert_eq!(days(Some("days=1&days=30")).unwrap(), 30);
        for (q, status, text) in [
            ("days=0", 422, "from 1 to 30"),
            ("days=31", 422, "kept 30 days"),
            ("days=-2", 422, "not -2"),
            ("days=abc", 400, "not a whole number"),
            ("days=", 400, "not a whole number"),
            ("days=99999999999999999999", 400, "not a whole number"),
            ("weeks=1", 400, "unknown query parameter \"weeks\""),
        ] {
            let e = days(Some(q)).unwrap_err();
            assert_eq!(e.status.as_u16(), status, "{q}");
            assert!(e.message.contains(text), "{q}: {}", e.message);
        }
        assert_eq!(date(1_714_521_600), "2024-05-01");
    }
}
