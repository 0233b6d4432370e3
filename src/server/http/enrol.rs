//! `POST /e`: a device deployed with a fleet join token asks to join
//! (see `crate::enrol` for the exchange, `domain::admission` for the
//! rules). The request is small and read whole (at most
//! [`crate::enrol::MAX_REQUEST`] bytes, within [`super::HEADER_WAIT`]);
//! it is authenticated with the token's key before anything is decoded or
//! stored, and every answer to an authentic request is sealed, so the
//! device can trust a refusal as much as an admission.
//!
//! Its bytes are charged as those of a connection no environment owns
//! (the device is none yet); a connection that carried an authentic
//! request no longer counts against its address's cap, as an agent's
//! does, so a batch of devices behind one carrier NAT all get in.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode};

use super::{AppState, blocking, gate, read_to, status};
use crate::auth::{RequestHeader, seal_reply};
use crate::enrol::{EnrolReply, EnrolRequest, EnrolState, MAX_REQUEST, device_mac_key};
use crate::server::domain::admission::{self, Enrolled};
use crate::server::store::audit::AuditEntry;

/// The handler.
pub async fn handler(
    State(state): State<Arc<AppState>>,
    meter: Option<axum::Extension<Arc<crate::meter::ConnMeter>>>,
    agent: Option<axum::Extension<gate::Authenticate>>,
    request: axum::extract::Request,
) -> Response<Body> {
    let addr = crate::server::api::audit::addr_of(&request);
    let r = answer(&state, agent.map(|a| a.0), addr, request).await;
    super::super::api::usage::charge_poll(
        meter.as_ref().map(|m| m.0.as_ref()),
        &state,
        None,
        None,
        crate::clock::unix_now(),
    );
    r
}

async fn answer(
    state: &Arc<AppState>,
    agent: Option<gate::Authenticate>,
    addr: String,
    request: axum::extract::Request,
) -> Response<Body> {
    let Some(len) = super::content_length(&request) else {
        return status(StatusCode::LENGTH_REQUIRED, "an enrolment request needs a Content-Length");
    };
    if len > MAX_REQUEST {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "");
    }
    let mut body = request.into_body();
    let mut buf = Vec::with_capacity(len);
    match tokio::time::timeout(super::HEADER_WAIT, read_to(&mut body, &mut buf, len)).await {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return r,
        Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "the request came too slowly"),
    }
    drop(body);
    let Ok((header, header_len)) = RequestHeader::parse(&buf) else {
        return status(StatusCode::UNAUTHORIZED, "");
    };
    let shared = state.clone();
    let r = blocking(move || {
        let now = crate::clock::unix_now();
        let internal = |e: crate::server::store::StoreError| {
            tracing::error!("enrolment: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let body = &buf[header_len..];
        // Read before it is authenticated (at most 4 KiB, checked as it is
        // decoded): it names the device whose key seals it.
        let request = EnrolRequest::decode(body);
        let (token, agent_secret, device) = shared
            .store
            .read(|tx| {
                let token = tx.fleet_token(header.environment)?;
                let device = match (&request, &token) {
                    (Ok(r), Some(t)) if r.description.is_none() => match r.device {
                        0 => tx.device_of(t.id, &r.edge_id)?,
                        n => tx.device(n)?.filter(|d| d.token.0 == t.id),
                    },
                    _ => None,
                };
                Ok::<_, crate::server::store::StoreError>((token, tx.agent_secret()?, device))
            })
            .map_err(internal)?;
        let Some(token) = token else { return Err(StatusCode::UNAUTHORIZED) };
        let fleet_key = token.secret.with_agent_secret(agent_secret.as_deref());
        // A request that describes the device is sealed with the token's
        // key; one that does not, with its device's (see `crate::enrol`).
        let described = request.as_ref().is_ok_and(|r| r.description.is_some());
        let key = match (&request, &device) {
            (Ok(r), _) if r.description.is_some() => fleet_key.clone(),
            (Ok(_), Some(d)) => device_mac_key(&fleet_key, &d.device_key),
            (Ok(_), None) => return Err(StatusCode::UNAUTHORIZED),
            (Err(_), _) => fleet_key.clone(),
        };
        // Counters are the device's own: the token's check is the MAC; the
        // device's entry refuses a replay (`domain::admission`).
        if header.verify(&key, body.len(), 0).is_err() || header.verify_body(&key, body).is_err() {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let counter = header.counter;
        let verified = if described { None } else { device.map(|d| d.device_key) };
        let reply = match request {
            Err(e) => Enrolled::Reply(
                EnrolReply { state: EnrolState::Refused(format!("a bad request: {e}")), interval: 0, device: 0 },
                None,
            ),
            Ok(request) => shared
                .store
                .write(|tx| {
                    let r = admission::enrol(tx, token.id, verified, counter, &request, &addr, now)?;
                    // In the same transaction: an admission by a rule is in
                    // the log exactly when it happened.
                    if let Enrolled::Reply(_, Some(rule)) = &r {
                        tx.audit_append(&AuditEntry {
                            id: 0,
                            at: now,
                            actor: rule.by.clone(),
                            action: "admit (rule)".into(),
                            target: format!("/api/devices/{}", rule.device),
                            status: 201,
                            addr: addr.clone(),
                        })?;
                    }
                    Ok::<_, crate::server::store::StoreError>(r)
                })
                .map_err(internal)?,
        };
        let Enrolled::Reply(reply, ruled) = reply else { return Err(StatusCode::CONFLICT) };
        if let Some(r) = ruled {
            tracing::info!(device = r.device, environment = r.environment, "{} admitted a device", r.by);
        }
        let welcome = !matches!(reply.state, EnrolState::Refused(_));
        Ok((seal_reply(counter, &key, &reply.encode()), welcome))
    })
    .await;
    match r {
        Ok(Ok((sealed, welcome))) => {
            // A device the server listens to holds its connection as an
            // agent does (not against its address's cap); a refused one
            // does not.
            if let Some(agent) = agent.as_ref().filter(|_| welcome) {
                agent.mark();
            }
            Response::new(Body::from(sealed))
        }
        Ok(Err(code)) => status(code, ""),
        Err(r) => r,
    }
}
