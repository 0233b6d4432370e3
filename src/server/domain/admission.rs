//! Onboarding many devices (issue #17): what a device that asks to join
//! with a fleet token is told, and what admitting or rejecting it does.
//!
//! * A token that is revoked turns every device away, waiting or new; one
//!   that is expired or used up turns away new devices only (those in the
//!   waiting room stay for the operator to decide).
//! * A new device is one more use of its token, counted when it is first
//!   stored; one that is forgotten and asks again counts again.
//! * A device is bound to the key it first sent: another key for the same
//!   token and EDGE_ID is refused, so a sibling cannot take its place.
//! * Nothing a pending device says is acted on: it is shown. Admission
//!   (the operator's, or the token's rule) makes it an environment whose
//!   name, group and tags come from the operator, else from what it asked
//!   for, else from the token.

use crate::enrol::{Description, EnrolReply, EnrolRequest, EnrolState, admitted_secret};
use crate::server::store::admission::{AutoAdmit, Device, DeviceStatus, FleetTokenRow};
use crate::server::store::fleet::{FleetOptions, NewEnvironment, Ref};
use crate::server::store::{IntervalSettings, StoreError, Transaction};

/// What became of an enrolment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The reply to seal, and who was admitted by the token's rule just
    /// now (for the audit log).
    Reply(EnrolReply, Option<AdmittedByRule>),
    /// A counter not above the device's last: a replay, answered with
    /// nothing.
    Replay,
}

/// A device the token's rule admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedByRule {
    /// The device's id.
    pub device: u64,
    /// The environment it is now.
    pub environment: u64,
    /// Who decided: `rule:TOKEN`.
    pub by: String,
}

/// Why a device cannot be admitted or rejected.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// No such device.
    #[error("no device {0} in the waiting room")]
    NotFound(u64),
    /// It was admitted already.
    #[error("device {0} was admitted already, as environment {1}")]
    Admitted(u64, u64),
    /// The store's.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the operator admits a device with; `None` takes what the device
/// asked for, else the token's.
#[derive(Debug, Clone, Default)]
pub struct AdmitWith {
    /// The environment's name.
    pub name: Option<String>,
    /// Its group.
    pub group: Option<Ref>,
    /// Its tags.
    pub tags: Option<Vec<Ref>>,
}

/// How long a device waits between requests, in seconds: the server's
/// default ping interval (the one an idle agent polls at), so waiting
/// costs what an idle agent costs.
fn waiting_interval(tx: &dyn Transaction) -> Result<u32, StoreError> {
    // 0: the ping is disabled; a waiting device still asks once a minute.
    let ping = tx.default_intervals()?.ping;
    Ok(if ping == 0 { 60 } else { ping.min(3600) })
}

fn time_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// The most devices that may wait under one token: a token leaked from one
/// device (its EDGE_KEY is in the container's environment) cannot fill
/// the waiting room past this; the operator revokes it.
pub const MAX_WAITING: u64 = 5_000;

/// Why a token takes no new device now, if it does not.
pub fn closed_to_new(token: &FleetTokenRow, now: i64) -> Option<String> {
    if token.revoked_at.is_some() {
        return Some(format!("the fleet join token {:?} was revoked", token.name));
    }
    if let Some(at) = token.expires_at
        && now >= at
    {
        return Some(format!("the fleet join token {:?} expired at {}", token.name, time_text(at)));
    }
    if let Some(max) = token.max_uses
        && token.uses >= max
    {
        return Some(format!("the fleet join token {:?} is used up ({} of {max} devices)", token.name, token.uses));
    }
    None
}

/// Whether the token's rule admits a device that asked for `tags`.
fn rule_admits(token: &FleetTokenRow, tags: &[String]) -> bool {
    match token.auto_admit {
        AutoAdmit::Off => false,
        AutoAdmit::All => true,
        AutoAdmit::Tags => tags.iter().any(|t| token.auto_tags.iter().any(|r| r.eq_ignore_ascii_case(t))),
    }
}

fn described(token: u64, edge_id: &str, d: &Description, counter: u64, addr: &str, now: i64) -> Device {
    Device {
        id: 0,
        token: (token, String::new()),
        edge_id: edge_id.to_owned(),
        device_key: d.device_key,
        hostname: d.hostname.clone(),
        agent_version: d.agent_version.clone(),
        engine: d.engine.clone(),
        group: d.group.clone(),
        tags: d.tags.clone(),
        addr: addr.to_owned(),
        status: DeviceStatus::Pending,
        reason: String::new(),
        environment: None,
        last_counter: counter,
        first_seen: now,
        last_seen: now,
        decided_at: None,
        decided_by: String::new(),
    }
}

/// Answers a device's request, in the caller's (write) transaction. The
/// envelope was authenticated before: a request that describes the device
/// with `token`'s key, one that does not with the key of the device it
/// names, whose device key is `verified` (see `http::enrol`). The token is
/// read again here, so a revocation or the last use counts at once.
///
/// # Errors
/// The store's.
pub fn enrol(
    tx: &dyn Transaction,
    token_id: u64,
    verified: Option<[u8; 32]>,
    counter: u64,
    request: &EnrolRequest,
    addr: &str,
    now: i64,
) -> Result<Enrolled, StoreError> {
    let interval = waiting_interval(tx)?;
    let Some(token) = tx.fleet_token(token_id)? else {
        return Ok(Enrolled::Reply(
            EnrolReply { state: EnrolState::Refused("the fleet join token is gone".into()), interval, device: 0 },
            None,
        ));
    };
    // A device that asked by EDGE_ID is given its number, to ask by next.
    let numbered = |device: u64| if request.device == 0 { device } else { 0 };
    let reply = |state, device| Ok(Enrolled::Reply(EnrolReply { state, interval, device }, None));
    let found = if request.device == 0 {
        tx.device_of(token.id, &request.edge_id)?
    } else {
        tx.device(request.device)?.filter(|d| d.token.0 == token.id)
    };
    let Some(device) = found else {
        let Some(description) = &request.description else {
            return reply(EnrolState::Describe, 0);
        };
        if let Some(why) = closed_to_new(&token, now) {
            return reply(EnrolState::Refused(why), 0);
        }
        let waiting = tx.waiting_devices(token.id)?;
        if waiting >= MAX_WAITING {
            return reply(
                EnrolState::Refused(format!(
                    "the waiting room is full for the fleet join token {:?} ({waiting} devices wait): the operator \
                     admits or rejects some first",
                    token.name
                )),
                0,
            );
        }
        let new = described(token.id, &request.edge_id, description, counter, addr, now);
        let id = tx.insert_device(&new)?;
        tx.count_fleet_token_use(token.id)?;
        if rule_admits(&token, &description.tags) {
            let by = format!("rule:{}", token.name);
            let environment = admit(tx, id, &AdmitWith::default(), &by, now).map_err(|e| match e {
                AdmitError::Store(e) => e,
                other => StoreError::Backend(other.to_string().into()),
            })?;
            return Ok(Enrolled::Reply(
                EnrolReply { state: EnrolState::Admitted(environment), interval, device: id },
                Some(AdmittedByRule { device: id, environment, by }),
            ));
        }
        return reply(EnrolState::Pending, id);
    };
    // The key first: another device's request changes nothing, not even
    // the counter.
    let key_matches = match (&request.description, verified) {
        (Some(d), _) => d.device_key == device.device_key,
        (None, Some(k)) => k == device.device_key,
        (None, None) => false,
    };
    if !key_matches {
        if request.description.is_none() {
            // Authenticated for another entry since (forgotten, asked
            // again): the device describes itself anew.
            return reply(EnrolState::Describe, 0);
        }
        return reply(
            EnrolState::Refused(format!(
                "EDGE_ID {:?} already asked to join with another device key: another device uses this EDGE_ID, \
                 or this one lost its DATA_PATH; the operator can forget the entry in the waiting room",
                request.edge_id
            )),
            0,
        );
    }
    if counter <= device.last_counter {
        return Ok(Enrolled::Replay);
    }
    let seen = request.description.as_ref().map(|d| described(token.id, &request.edge_id, d, counter, addr, now));
    tx.device_seen(device.id, counter, addr, seen.as_ref(), now)?;
    let number = numbered(device.id);
    let state = match (device.status, device.environment) {
        // Admitted is admitted, whatever became of the token since.
        (DeviceStatus::Admitted, Some(env)) => EnrolState::Admitted(env),
        (DeviceStatus::Admitted, None) => EnrolState::Refused(
            "the environment this device was admitted as was deleted: the operator can forget its entry in the \
             waiting room, and deploy it again with a new DATA_PATH"
                .into(),
        ),
        _ if token.revoked_at.is_some() => EnrolState::Refused(closed_to_new(&token, now).unwrap_or_default()),
        (DeviceStatus::Pending, _) => EnrolState::Pending,
        (DeviceStatus::Rejected, _) => EnrolState::Rejected(if device.reason.is_empty() {
            "the operator rejected this device".into()
        } else {
            format!("the operator rejected this device: {}", device.reason)
        }),
    };
    reply(state, number)
}

/// An environment name from what a device said: its hostname (else its
/// EDGE_ID), in the characters names take.
fn name_for(device: &Device) -> String {
    let base = if device.hostname.is_empty() { &device.edge_id } else { &device.hostname };
    let name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(56)
        .collect();
    if name.is_empty() { format!("device-{}", device.id) } else { name }
}

/// The group a device asked for, when it exists (a device's ask never
/// makes one).
fn existing_group(tx: &dyn Transaction, name: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx.groups()?.into_iter().find(|g| g.name.eq_ignore_ascii_case(name)).map(|g| g.id))
}

/// Admits a device (pending or rejected): it becomes an environment, with
/// the secret both ends derive from its key. Returns the environment's id.
///
/// # Errors
/// [`AdmitError`].
pub fn admit(tx: &dyn Transaction, device_id: u64, with: &AdmitWith, by: &str, now: i64) -> Result<u64, AdmitError> {
    let device = tx.device(device_id)?.ok_or(AdmitError::NotFound(device_id))?;
    if let (DeviceStatus::Admitted, Some(env)) = (device.status, device.environment) {
        return Err(AdmitError::Admitted(device_id, env));
    }
    let token = tx.fleet_token(device.token.0)?.ok_or(AdmitError::NotFound(device_id))?;
    // A rule admits with what the token says: the device's own asks are
    // unproven (anyone holding the token can ask for a group that stacks
    // target), so only the rule's own tags among them count. The operator
    // has seen them: the group it asked for, when it exists, and its tags.
    let by_rule = by.starts_with("rule:");
    let asked_group = if by_rule || device.group.is_empty() { None } else { existing_group(tx, &device.group)? };
    let group = match (&with.group, asked_group, &token.group) {
        (Some(g), _, _) => Some(g.clone()),
        (None, Some(id), _) => Some(Ref::Id(id)),
        (None, None, Some((id, _))) => Some(Ref::Id(*id)),
        (None, None, None) => None,
    };
    let tags = match &with.tags {
        Some(t) => t.clone(),
        None => {
            let mut names: Vec<String> = token.tags.clone();
            let allowed = |t: &String| !by_rule || token.auto_tags.iter().any(|r| r.eq_ignore_ascii_case(t));
            for t in device.tags.iter().filter(|t| allowed(t)) {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(t)) {
                    names.push(t.clone());
                }
            }
            names.into_iter().map(Ref::Name).collect()
        }
    };
    let secret = admitted_secret(&device.device_key, token.id, &device.edge_id);
    let base = with.name.clone().unwrap_or_else(|| name_for(&device));
    // A batch flashed alike shares a hostname: a few suffixes, then the
    // device's own number, which no other device has.
    let mut names: Vec<String> = vec![base.clone()];
    names.extend((2..=5).map(|n| format!("{base}-{n}")));
    names.push(format!("{base}-d{}", device.id));
    let mut env = None;
    for name in names {
        let new = NewEnvironment {
            name,
            secret: secret.clone(),
            intervals: IntervalSettings::default(),
            group: group.clone(),
            tags: tags.clone(),
            options: FleetOptions {
                url: token.url.clone(),
                env_vars: Vec::new(),
                allow_self_signed: false,
                volume_path: None,
                deploy_edge_id: Some(device.edge_id.clone()),
                tcp_timestamps: false,
            },
        };
        match tx.create_fleet_environment(&new, now) {
            Ok(id) => {
                env = Some(id);
                break;
            }
            // The operator's own name is theirs to change; a derived one
            // takes the next free suffix.
            Err(StoreError::NameTaken(_)) if with.name.is_none() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Some(env) = env else {
        return Err(StoreError::NameTaken(base).into());
    };
    crate::server::domain::stacks::reconcile(tx, None, Some(env), now)?;
    tx.decide_device(device_id, DeviceStatus::Admitted, Some(env), "", by, now)?;
    Ok(env)
}

/// Rejects a pending device: it is told so (with `reason`) and asks again
/// only rarely.
///
/// # Errors
/// [`AdmitError`].
pub fn reject(tx: &dyn Transaction, device_id: u64, reason: &str, by: &str, now: i64) -> Result<(), AdmitError> {
    let device = tx.device(device_id)?.ok_or(AdmitError::NotFound(device_id))?;
    if let (DeviceStatus::Admitted, Some(env)) = (device.status, device.environment) {
        return Err(AdmitError::Admitted(device_id, env));
    }
    tx.decide_device(device_id, DeviceStatus::Rejected, None, reason, by, now)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use crate::server::store::Store;
    use crate::server::store::admission::NewFleetToken;
    use crate::server::store::prelude::*;

    fn token(tx: &dyn Transaction, rule: AutoAdmit, max_uses: Option<u64>, expires_at: Option<i64>) -> FleetTokenRow {
        let new = NewFleetToken {
            name: "batch".into(),
            secret: Secret([1; 32]),
            url: "https://ops:9443".into(),
            group: None,
            tags: vec!["field".into()],
            auto_admit: rule,
            auto_tags: vec!["trusted".into()],
            max_uses,
            expires_at,
        };
        let id = tx.create_fleet_token(&new, 10).unwrap();
        tx.fleet_token(id).unwrap().unwrap()
    }

    fn ask(edge_id: &str, key: u8, tags: &[&str]) -> EnrolRequest {
        EnrolRequest {
            edge_id: edge_id.into(),
            device: 0,
            description: Some(Description {
                device_key: [key; 32],
                hostname: format!("host {edge_id}"),
                agent_version: "0.1.0".into(),
                engine: "Docker 27".into(),
                group: "north".into(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            }),
        }
    }

    fn state(e: Enrolled) -> EnrolState {
        match e {
            Enrolled::Reply(r, _) => r.state,
            Enrolled::Replay => panic!("a replay"),
        }
    }

    #[test]
    fn a_device_waits_is_admitted_and_then_polls_with_the_derived_secret() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        tx.create_group("north").unwrap();
        let t = token(&tx, AutoAdmit::Off, None, None);
        let req = ask("cam-1", 7, &["solar"]);
        assert_eq!(state(enrol(&tx, t.id, None, 1, &req, "192.0.2.1", 100).unwrap()), EnrolState::Pending);
        assert_eq!(enrol(&tx, t.id, None, 1, &req, "192.0.2.1", 100).unwrap(), Enrolled::Replay);
        let d = tx.device_of(t.id, "cam-1").unwrap().unwrap();
        let short = EnrolRequest { edge_id: String::new(), device: d.id, description: None };
        let Enrolled::Reply(r, None) = enrol(&tx, t.id, Some([7; 32]), 2, &short, "192.0.2.1", 160).unwrap() else {
            panic!()
        };
        assert_eq!((r.state, r.device), (EnrolState::Pending, 0), "no number again to one that asked by it");
        let by_edge_id = EnrolRequest { edge_id: "cam-1".into(), device: 0, description: None };
        let Enrolled::Reply(r, None) = enrol(&tx, t.id, Some([7; 32]), 3, &by_edge_id, "192.0.2.1", 160).unwrap()
        else {
            panic!()
        };
        assert_eq!((r.state, r.device), (EnrolState::Pending, d.id), "its number to one that asked by EDGE_ID");
        let unknown = EnrolRequest { edge_id: "cam-9".into(), device: 0, description: None };
        assert_eq!(
            state(enrol(&tx, t.id, Some([7; 32]), 1, &unknown, "192.0.2.1", 160).unwrap()),
            EnrolState::Describe
        );
        let other_token = EnrolRequest { edge_id: String::new(), device: d.id + 100, description: None };
        assert_eq!(
            state(enrol(&tx, t.id, Some([7; 32]), 1, &other_token, "192.0.2.1", 160).unwrap()),
            EnrolState::Describe
        );
        // Nothing is an environment yet.
        assert!(tx.environments().unwrap().is_empty());
        let env = admit(&tx, d.id, &AdmitWith::default(), "user:admin", 200).unwrap();
        let e = tx.environment(env).unwrap();
        assert_eq!(e.secret, admitted_secret(&[7; 32], t.id, "cam-1"));
        let item = tx.fleet_item(env, 200).unwrap();
        assert_eq!(item.name, "host-cam-1");
        assert_eq!(item.group.map(|g| g.1), Some("north".into()));
        assert_eq!(item.tags, ["field", "solar"]);
        assert_eq!(
            state(enrol(&tx, t.id, Some([7; 32]), 4, &short, "192.0.2.1", 260).unwrap()),
            EnrolState::Admitted(env)
        );
        assert!(matches!(admit(&tx, d.id, &AdmitWith::default(), "user:admin", 300), Err(AdmitError::Admitted(..))));
        assert!(matches!(reject(&tx, d.id, "", "user:admin", 300), Err(AdmitError::Admitted(..))));
        // A second device with the same hostname gets the next free name.
        let mut other = ask("cam-2", 8, &[]);
        other.description.as_mut().unwrap().hostname = "host cam-1".into();
        enrol(&tx, t.id, None, 1, &other, "a", 300).unwrap();
        let d2 = tx.device_of(t.id, "cam-2").unwrap().unwrap();
        let env2 = admit(&tx, d2.id, &AdmitWith::default(), "user:admin", 300).unwrap();
        assert_eq!(tx.fleet_item(env2, 300).unwrap().name, "host-cam-1-2");
    }

    #[test]
    fn a_request_authenticated_for_another_device_changes_nothing() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::Off, None, None);
        enrol(&tx, t.id, None, 1, &ask("cam-1", 7, &[]), "a", 100).unwrap();
        let d = tx.device_of(t.id, "cam-1").unwrap().unwrap();
        // A sibling's request by the victim's number, under its own key.
        let by_number = EnrolRequest { edge_id: String::new(), device: d.id, description: None };
        let r = state(enrol(&tx, t.id, Some([9; 32]), i64::MAX as u64, &by_number, "evil", 110).unwrap());
        assert_eq!(r, EnrolState::Describe);
        let after = tx.device(d.id).unwrap().unwrap();
        assert_eq!((after.last_counter, after.addr.as_str()), (1, "a"), "not even its counter moved");
        // The victim goes on.
        assert_eq!(state(enrol(&tx, t.id, Some([7; 32]), 2, &by_number, "a", 120).unwrap()), EnrolState::Pending);
    }

    #[test]
    fn a_rule_admits_with_the_tokens_group_and_only_its_own_tags() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        tx.create_group("production").unwrap();
        let t = token(&tx, AutoAdmit::Tags, None, None);
        let mut req = ask("cam-1", 7, &["trusted", "payments"]);
        req.description.as_mut().unwrap().group = "production".into();
        let Enrolled::Reply(r, Some(_)) = enrol(&tx, t.id, None, 1, &req, "a", 100).unwrap() else { panic!() };
        let EnrolState::Admitted(env) = r.state else { panic!("{r:?}") };
        let item = tx.fleet_item(env, 100).unwrap();
        assert_eq!(item.group, None, "the device's ask for a group is not a rule's to grant");
        assert_eq!(item.tags, ["field", "trusted"], "only the rule's own tags among those asked");
        // Nor does any ask make a group.
        let mut req = ask("cam-2", 8, &[]);
        req.description.as_mut().unwrap().group = "made-up".into();
        enrol(&tx, t.id, None, 1, &req, "a", 100).unwrap();
        let d = tx.device_of(t.id, "cam-2").unwrap().unwrap();
        let env = admit(&tx, d.id, &AdmitWith::default(), "user:admin", 110).unwrap();
        assert_eq!(tx.fleet_item(env, 110).unwrap().group, None);
        assert!(tx.groups().unwrap().iter().all(|g| g.name != "made-up"));
    }

    #[test]
    fn an_admitted_device_is_told_so_after_its_token_is_revoked() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::Off, None, None);
        enrol(&tx, t.id, None, 1, &ask("cam-1", 7, &[]), "a", 100).unwrap();
        let d = tx.device_of(t.id, "cam-1").unwrap().unwrap();
        tx.revoke_fleet_token(t.id, 110).unwrap();
        let env = admit(&tx, d.id, &AdmitWith::default(), "user:admin", 120).unwrap();
        assert_eq!(
            state(enrol(&tx, t.id, None, 2, &ask("cam-1", 7, &[]), "a", 130).unwrap()),
            EnrolState::Admitted(env)
        );
    }

    #[test]
    fn a_batch_sharing_a_hostname_gets_names_past_the_suffixes() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::All, None, None);
        for i in 0..8u8 {
            let mut req = ask(&format!("pi-{i}"), i, &[]);
            req.description.as_mut().unwrap().hostname = "raspberrypi".into();
            let r = state(enrol(&tx, t.id, None, 1, &req, "a", 100).unwrap());
            assert!(matches!(r, EnrolState::Admitted(_)), "device {i}: {r:?}");
        }
        assert_eq!(tx.environments().unwrap().len(), 8);
    }

    #[test]
    fn a_sibling_with_another_key_is_refused_and_changes_nothing() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::Off, None, None);
        enrol(&tx, t.id, None, 1, &ask("cam-1", 7, &[]), "a", 100).unwrap();
        let r = state(enrol(&tx, t.id, None, 5, &ask("cam-1", 9, &[]), "b", 110).unwrap());
        assert!(matches!(&r, EnrolState::Refused(w) if w.contains("another device key")), "{r:?}");
        let d = tx.device_of(t.id, "cam-1").unwrap().unwrap();
        assert_eq!((d.device_key, d.last_counter, d.addr.as_str()), ([7; 32], 1, "a"));
    }

    #[test]
    fn expired_used_up_and_revoked_tokens_are_refused_with_why() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::Off, Some(1), Some(1_000));
        assert_eq!(state(enrol(&tx, t.id, None, 1, &ask("a", 1, &[]), "x", 100).unwrap()), EnrolState::Pending);
        let t = tx.fleet_token(t.id).unwrap().unwrap();
        let r = state(enrol(&tx, t.id, None, 1, &ask("b", 2, &[]), "x", 100).unwrap());
        assert!(matches!(&r, EnrolState::Refused(w) if w.contains("used up (1 of 1")), "{r:?}");
        // The one waiting already stays.
        assert_eq!(state(enrol(&tx, t.id, None, 2, &ask("a", 1, &[]), "x", 100).unwrap()), EnrolState::Pending);
        let t2 = token(&tx, AutoAdmit::Off, None, Some(1_000));
        let r = state(enrol(&tx, t2.id, None, 1, &ask("c", 3, &[]), "x", 1_000).unwrap());
        assert!(matches!(&r, EnrolState::Refused(w) if w.contains("expired at 1970-01-01 00:16 UTC")), "{r:?}");
        tx.revoke_fleet_token(t.id, 150).unwrap();
        let t = tx.fleet_token(t.id).unwrap().unwrap();
        let r = state(enrol(&tx, t.id, None, 3, &ask("a", 1, &[]), "x", 160).unwrap());
        assert!(matches!(&r, EnrolState::Refused(w) if w.contains("was revoked")), "{r:?}");
        assert_eq!(tx.devices(None).unwrap().len(), 1, "no refused device was stored");
    }

    #[test]
    fn rules_admit_by_token_or_by_tag_and_say_who_decided() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let by_tag = token(&tx, AutoAdmit::Tags, None, None);
        assert_eq!(
            state(enrol(&tx, by_tag.id, None, 1, &ask("a", 1, &["cam"]), "x", 100).unwrap()),
            EnrolState::Pending
        );
        let Enrolled::Reply(r, Some(who)) =
            enrol(&tx, by_tag.id, None, 1, &ask("b", 2, &["Trusted"]), "x", 100).unwrap()
        else {
            panic!("not admitted by the rule")
        };
        assert_eq!(r.state, EnrolState::Admitted(who.environment));
        assert_eq!(who.by, "rule:batch");
        let all = token(&tx, AutoAdmit::All, None, None);
        assert!(matches!(
            state(enrol(&tx, all.id, None, 1, &ask("c", 3, &[]), "x", 100).unwrap()),
            EnrolState::Admitted(_)
        ));
        let d = tx.device_of(all.id, "c").unwrap().unwrap();
        assert_eq!((d.status, d.decided_by.as_str()), (DeviceStatus::Admitted, "rule:batch"));
    }

    #[test]
    fn a_rejected_device_is_told_why_and_can_still_be_admitted() {
        let store = Store::scratch().unwrap();
        let tx = store.autocommit();
        let t = token(&tx, AutoAdmit::Off, None, None);
        enrol(&tx, t.id, None, 1, &ask("a", 1, &[]), "x", 100).unwrap();
        let d = tx.device_of(t.id, "a").unwrap().unwrap();
        reject(&tx, d.id, "not one of ours", "user:admin", 110).unwrap();
        let r = state(enrol(&tx, t.id, None, 2, &ask("a", 1, &[]), "x", 120).unwrap());
        assert_eq!(r, EnrolState::Rejected("the operator rejected this device: not one of ours".into()));
        let env = admit(&tx, d.id, &AdmitWith { name: Some("cam-a".into()), ..Default::default() }, "user:admin", 130)
            .unwrap();
        assert_eq!(tx.fleet_item(env, 130).unwrap().name, "cam-a");
        assert!(matches!(admit(&tx, 99, &AdmitWith::default(), "u", 1), Err(AdmitError::NotFound(99))));
    }
}
