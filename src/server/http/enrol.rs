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
use crate::enrol::{EnrolReply, EnrolRequest, EnrolState, MAX_REQUEST};
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
    let Some(len) = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    else {
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
        let (token, agent_secret) = match shared.store.read(|tx| {
            Ok::<_, crate::server::store::StoreError>((tx.fleet_token(header.environment)?, tx.agent_secret()?))
        }) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("enrolment: {e}");
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        let Some(token) = token else { return Err(StatusCode::UNAUTHORIZED) };
        let key = token.secret.with_agent_secret(agent_secret.as_deref());
        let body = &buf[header_len..];
        // Counters are the device's own: the token's check is the MAC; the
        // device's entry refuses a replay (`domain::admission`).
        if header.verify(&key, body.len(), 0).is_err() || header.verify_body(&key, body).is_err() {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let counter = header.counter;
        let reply = match EnrolRequest::decode(body) {
            Err(e) => Enrolled::Reply(
                EnrolReply { state: EnrolState::Refused(format!("a bad request: {e}")), interval: 0, device: 0 },
                None,
            ),
            Ok(request) => match shared.store.write(|tx| admission::enrol(tx, &token, counter, &request, &addr, now)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("enrolment: {e}");
                    return Err(StatusCode::INTERNAL_SERVER_ERROR);
                }
            },
        };
        let Enrolled::Reply(reply, ruled) = reply else { return Err(StatusCode::CONFLICT) };
        if let Some(r) = ruled {
            tracing::info!(device = r.device, environment = r.environment, "{} admitted a device", r.by);
            let entry = AuditEntry {
                id: 0,
                at: now,
                actor: r.by,
                action: "admit".into(),
                target: format!("/api/devices/{}", r.device),
                status: 201,
                addr: addr.clone(),
            };
            if let Err(e) = shared.store.write(|tx| tx.audit_append(&entry)) {
                tracing::error!("audit: {e}");
            }
        }
        Ok(seal_reply(counter, &key, &reply.encode()))
    })
    .await;
    match r {
        Ok(Ok(sealed)) => {
            if let Some(agent) = &agent {
                agent.mark();
            }
            Response::new(Body::from(sealed))
        }
        Ok(Err(code)) => status(code, ""),
        Err(r) => r,
    }
}
