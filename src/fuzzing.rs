//! Entry points for the cargo-fuzz targets in `fuzz/`: each target is one
//! line calling a function here, so the checks live in the crate and are
//! type-checked with it.
//!
//! The poll targets ([`poll_request`], [`poll_reply`]) authenticate with
//! fixed values ([`SECRET`], [`ENVIRONMENT`], [`COUNTER`]). A fuzzer cannot
//! forge a MAC, so the first byte of their input says what the rest is:
//! [`AS_IS`] (even), the envelope as received; [`SEAL`] (odd), a body that
//! is sealed here first, so mutations reach the codec and the decoders
//! behind the MAC.

use std::cell::RefCell;

use crate::auth::{
    AuthError, MAX_REQUEST_HEADER, RequestEnvelope, RequestHeader, Secret, open_reply, seal_reply, seal_request,
};
use crate::sync::{Delta, State, apply, diff};
use crate::wire::codec::{Codec, Limits};
use crate::wire::poll::{PollReply, PollRequest};

/// The environment's MAC key in the poll targets (both ways).
pub const SECRET: Secret = Secret([0x5a; 32]);

/// The environment a sealed [`poll_request`] input claims.
pub const ENVIRONMENT: u64 = 7;

/// The counter a sealed [`poll_request`] input carries (an as-is one is
/// verified as if the last accepted counter were `COUNTER - 1`), and the
/// one a reply is opened for.
pub const COUNTER: u64 = 42;

/// First byte of a poll input: the rest is the envelope as received.
pub const AS_IS: u8 = 0;

/// First byte of a poll input: the rest is a body, sealed before it is read.
pub const SEAL: u8 = 1;

thread_local! {
    /// One codec with the default limits (the server's and the agent's), kept
    /// as they keep theirs, so that loading the dictionary is not paid per input.
    static CODEC: RefCell<Codec> = RefCell::new(Codec::new(Limits::default()).expect("codec"));
}

fn decode_body(wire: &[u8]) -> Option<Vec<u8>> {
    CODEC.with_borrow_mut(|c| c.decode(wire).ok())
}

/// A request that decoded: re-encodes to bytes that decode to the same
/// value, and its delta applies (or is refused) on the empty state as on a
/// first contact.
fn check_request(req: &PollRequest) {
    let again = PollRequest::decode(&req.encode()).expect("re-encoded request decodes");
    assert_eq!(&again, req);
    if let Some(delta) = &req.delta {
        let _ = apply(&State::default(), delta);
    }
}

/// A reply that decoded: re-encodes to bytes that decode to the same value,
/// but for the commands this build cannot read, which are never encoded
/// (the agent reports each as rejected; see [`PollReply::unknown_commands`]).
fn check_reply(reply: &PollReply) {
    let again = PollReply::decode(&reply.encode()).expect("re-encoded reply decodes");
    assert_eq!(again, PollReply { unknown_commands: Vec::new(), ..reply.clone() });
}

/// Decodes an arbitrary poll body the way the server does. Whatever it
/// holds, decoding ends in a value or an error, never a panic; a value
/// re-encodes to bytes that decode to the same value.
pub fn poll_body(data: &[u8]) {
    let mut codec = Codec::new(Limits { max_encoded: 1 << 20, max_decoded: 4 << 20 }).expect("codec");
    let Ok(body) = codec.decode(data) else { return };
    if let Ok(req) = PollRequest::decode(&body) {
        check_request(&req);
    }
    if let Ok(reply) = PollReply::decode(&body) {
        check_reply(&reply);
    }
}

/// The whole poll request as the server reads it (`server::http`'s poll
/// handler up to the store): the header from the request's first
/// [`MAX_REQUEST_HEADER`] bytes, authenticated with [`SECRET`] for the
/// body's length before the body is looked at (another length, or another
/// key, fails); then the body against its header; an authentic one (a
/// replayed counter too, which the server also decodes) is decoded by the
/// codec and as a [`PollRequest`], its counts checked before decoding, and
/// must round-trip. Any envelope that parses re-seals to one with the same
/// fields that verifies, and never verifies under another key.
pub fn poll_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sealed;
    let wire = if mode & 1 == SEAL {
        sealed = seal_request(ENVIRONMENT, COUNTER, &SECRET, rest);
        &sealed[..]
    } else {
        rest
    };
    let Ok((header, len)) = RequestHeader::parse(&wire[..wire.len().min(MAX_REQUEST_HEADER)]) else { return };
    let body = &wire[len..];
    let envelope = RequestEnvelope::parse(wire).expect("a whole envelope parses as its header did");
    assert_eq!((envelope.environment, envelope.counter, envelope.body), (header.environment, header.counter, body));
    let resealed = seal_request(envelope.environment, envelope.counter, &SECRET, envelope.body);
    let again = RequestEnvelope::parse(&resealed).expect("a sealed envelope parses");
    assert_eq!((again.environment, again.counter, again.body), (envelope.environment, envelope.counter, envelope.body));
    assert_eq!(again.verify(&Secret([0xa5; 32]), 0), Err(AuthError::BadMac));
    assert_eq!(again.header.verify(&SECRET, body.len() + 1, 0), Err(AuthError::BadMac), "the length is sealed");
    if let Some(last) = again.counter.checked_sub(1) {
        again.verify(&SECRET, last).expect("a sealed envelope verifies");
    }
    // The header first, with the body's length only; then the body.
    match header.verify(&SECRET, body.len(), COUNTER - 1) {
        Ok(()) | Err(AuthError::Replay { .. }) => {}
        Err(_) => return,
    }
    if header.verify_body(&SECRET, body).is_err() {
        return;
    }
    let Some(body) = decode_body(body) else { return };
    if let Ok(req) = PollRequest::decode(&body) {
        check_request(&req);
    }
}

/// The poll reply as the agent reads it (`agent::run`, `open`): its MAC is
/// checked for the poll with [`COUNTER`] and never opens for another poll;
/// its body is decoded by the codec and as a [`PollReply`], which must
/// round-trip.
pub fn poll_reply(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sealed;
    let wire = if mode & 1 == SEAL {
        sealed = seal_reply(COUNTER, &SECRET, rest);
        &sealed[..]
    } else {
        rest
    };
    let Ok(body) = open_reply(COUNTER, &SECRET, wire) else { return };
    assert_eq!(open_reply(COUNTER + 1, &SECRET, wire), Err(AuthError::BadMac), "a reply opens for its own poll only");
    let Some(bytes) = decode_body(body) else { return };
    if let Ok(reply) = PollReply::decode(&bytes) {
        check_reply(&reply);
    }
}

/// Applies an arbitrary delta to an arbitrary state. Either it is rejected
/// and nothing changed, or the result carries the delta's root, and a fresh
/// diff from the base reproduces it.
pub fn apply_delta(base: &State, delta_bytes: &[u8]) {
    let Ok(delta) = Delta::decode(delta_bytes) else { return };
    let before = base.root();
    match apply(base, &delta) {
        Err(_) => assert_eq!(base.root(), before),
        Ok(next) => {
            if !delta.is_empty() {
                assert_eq!(&next.root()[..delta.root().len()], delta.root());
            }
            let again = apply(base, &diff(base, &next)).expect("own diff applies");
            assert_eq!(again, next);
        }
    }
}

/// `apply(a, diff(a, b)) == b` on arbitrary states.
pub fn round_trip(a: &State, b: &State) {
    let d = diff(a, b);
    let wire = Delta::decode(&d.encode()).expect("own delta decodes");
    assert_eq!(apply(a, &wire).expect("own delta applies"), *b);
}

/// A compose file and its variables: the input is the file, then
/// optionally a NUL byte and `NAME=value` lines (bytes that are not UTF-8
/// are replaced, as neither the API's JSON nor the poll's protobuf carries
/// them).
///
/// * The server's check (`POST /api/stacks`) ends in `Ok` or a 4xx, and
///   the variables' check too.
/// * `${VAR}` interpolation of the whole text ends in a value or an error;
///   text without a `$` comes out unchanged.
/// * The built-in compose's parse (`Project::parse`, interpolation
///   included) ends in a project or an error; a project has a start order
///   holding every service, and every service a container name and a
///   configuration hash.
/// * What the server's check takes, the parse takes: they are one parse.
///
/// Never a panic, never a stack overflow.
#[cfg(all(feature = "agent", feature = "server"))]
pub fn compose(data: &[u8]) {
    use std::collections::BTreeSet;

    use crate::compose::{Project, config_hash};
    use crate::server::api::stacks::{check_compose, check_env};
    use crate::stack::interpolate;

    let text = String::from_utf8_lossy(data);
    let (file, env) = compose_input(&text);
    let server = check_compose(file, &env);
    if let Err(e) = &server {
        assert!(e.status.is_client_error(), "{e:?}");
    }
    if let Err(e) = check_env(&env) {
        assert!(e.status.is_client_error(), "{e:?}");
    }
    if let Ok(out) = interpolate(file, &env, &mut BTreeSet::new())
        && !file.contains('$')
    {
        assert_eq!(out, file);
    }
    let parsed = Project::parse("fuzz", file, &env, std::path::Path::new(COMPOSE_DIR));
    if let (Ok(()), Err(e)) = (&server, &parsed) {
        panic!("the server took a file the built-in compose cannot parse: {e}");
    }
    let Ok(project) = parsed else { return };
    let order = project.start_order().expect("a parsed project has a start order");
    assert_eq!(order.len(), project.services.len());
    for service in order {
        let _ = project.container_name(service);
        let _ = config_hash(&project, service, "sha256:0");
    }
}

/// Where [`compose`] parses its project.
#[cfg(all(feature = "agent", feature = "server"))]
const COMPOSE_DIR: &str = "/data/stacks/fuzz";

/// A [`compose`] input: the file, and the variables after the first NUL.
#[cfg(all(feature = "agent", feature = "server"))]
fn compose_input(text: &str) -> (&str, std::collections::BTreeMap<String, String>) {
    let (file, vars) = text.split_once('\0').unwrap_or((text, ""));
    (file, vars.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// Compose inputs for [`compose`]'s seeds: the tests' files (`tests/stacks.rs`,
/// `src/agent/compose.rs`), with their variables after a NUL.
#[cfg(all(feature = "agent", feature = "server"))]
pub const COMPOSE_EXAMPLES: &[(&str, &str)] = &[
    (
        "stacks-test",
        concat!(
            r#"services:
  web:
    image: ${IMAGE}
    command: ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"]
    environment:
      GREETING: ${GREETING:-hello}
      PLAIN: "$$literal"
    volumes:
      - data:/data
    labels:
      tern.test: "stacks"
    restart: unless-stopped
  side:
    image: ${IMAGE}
    command: /bin/busybox sh -c "trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done"
    depends_on: [web]
volumes:
  data: {}
"#,
            "\0IMAGE=busybox\nGREETING=hi\n"
        ),
    ),
    (
        "compose-unit",
        concat!(
            r#"services:
  web:
    image: "busybox:${TAG:-1}"
    command: sh -c 'echo $${HOME}; sleep 1'
    environment:
      MODE: ${MODE}
      COUNT: 3
      DEBUG: true
      FROM_STACK:
    ports: ["8080:80", "127.0.0.1::81/udp", {target: 80, published: "8081", protocol: udp}]
    volumes:
      - data:/data
      - ./conf:/etc/conf:ro
      - /scratch
      - {type: bind, source: /srv, target: /srv, read_only: true}
    restart: unless-stopped
    labels: ["team=edge", "tier=front"]
    depends_on: [db]
    networks:
      back:
        aliases: [www]
  db:
    image: busybox
    entrypoint: ["/bin/busybox", "sh"]
    environment:
      - A=1
      - B=x=y
      - FROM_STACK
    restart: "on-failure:3"
    networks: [back, default]
  host:
    image: busybox
    network_mode: host
    user: "1000:1000"
    working_dir: /w
    hostname: h
    container_name: the-host
networks:
  back: {}
volumes:
  data:
  shared:
    external: true
"#,
            "\0MODE=prod\nFROM_STACK=yes\n"
        ),
    ),
    ("nested-defaults", "services:\n  web:\n    image: ${A:-${B:-${C:-busybox}}}\n    command: ${X:?set X}\n\0X=1\n"),
];

/// The request bodies [`api_json`] reads, by the first byte of its input
/// (modulo their number): `environment.create` is `POST
/// /api/environments`, and so on.
#[cfg(feature = "server")]
pub const API_BODIES: &[&str] = &[
    "environment.create", // POST /api/environments
    "environment.update", // PATCH /api/environments/{id}
    "intervals",          // PUT /api/environments/{id}/intervals
    "settings",           // PUT /api/settings
    "command",            // POST /api/environments/{id}/commands
    "stack.create",       // POST /api/stacks
    "stack.update",       // PUT /api/stacks/{id}
    "job.create",         // POST /api/jobs
    "job.update",         // PUT /api/jobs/{id}
    "label",              // POST /api/groups, /api/tags, and their PATCH
    "login",              // POST /api/auth/login
    "password",           // PUT /api/auth/password
    "token",              // POST /api/tokens
];

/// Request bodies from the README's API tables, by [`API_BODIES`] name: the
/// seeds of [`api_json`], each accepted by its checks.
#[cfg(feature = "server")]
pub const API_EXAMPLES: &[(&str, &str)] = &[
    (
        "environment.create",
        r#"{"name":"ship-1","url":"https://ops.example.com:9443","intervals":{"ping":60,"snapshot":300,"command":30},"group":"ships","tags":["north",7],"env_vars":"HTTP_PROXY,HTTPS_PROXY","allow_self_signed":true,"volume_path":"/srv/docker/volumes","tcp_timestamps":true}"#,
    ),
    ("environment.create", r#"{"name":"ship-2","url":"https://ops.example.com:9443/"}"#),
    (
        "environment.update",
        r#"{"name":"ship-1b","url":"https://10.0.0.1:9443","group":null,"tags":[1,"north"],"env_vars":["HTTP_PROXY"],"allow_self_signed":false,"volume_path":"D:\\docker\\volumes","tcp_timestamps":false}"#,
    ),
    ("environment.update", r#"{"group":"ships","volume_path":null}"#),
    ("intervals", r#"{"ping":60,"snapshot":null,"command":0}"#),
    ("settings", r#"{"intervals":{"ping":120,"snapshot":600,"command":0},"agent_secret":"s3cret"}"#),
    ("settings", r#"{"agent_secret":null}"#),
    ("command", r#"{"action":"container.logs","target":"web","tail":200}"#),
    ("command", r#"{"action":"container.stop","target":"abab"}"#),
    ("command", r#"{"action":"image.pull","target":"nginx:1.25.3"}"#),
    (
        "stack.create",
        r#"{"name":"shop","compose":"services:\n  web:\n    image: nginx:${TAG}\n","env":{"TAG":"1.25"},"targets":{"environments":[1,"ship-1"],"groups":["ships"],"tags":["north"]}}"#,
    ),
    (
        "stack.update",
        r#"{"compose":"services:\n  web:\n    image: nginx:1.26\n  db:\n    image: postgres\n","env":{},"targets":{"tags":["north"]}}"#,
    ),
    (
        "job.create",
        r#"{"name":"backup","script":"tar czf /backup.tgz /srv","cron":"0 3 * * *","image":"busybox:latest","timeout_s":600,"targets":{"groups":["ships"]}}"#,
    ),
    ("job.create", r#"{"name":"tick","script":"date","cron":"*/10 * * * * *","targets":{"environments":[2]}}"#),
    ("job.update", r#"{"cron":"","timeout_s":0,"targets":{"environments":[2],"tags":[3]}}"#),
    ("label", r#"{"name":"ships"}"#),
    ("login", r#"{"username":"admin","password":"correct horse battery"}"#),
    ("password", r#"{"current":"old password 1","new":"a new password 2"}"#),
    ("token", r#"{"name":"ci deploys"}"#),
];

/// One of the API's JSON request bodies, chosen by the first byte (see
/// [`API_BODIES`]), the rest being the JSON. A body that parses goes
/// through the checks its handler runs before it touches the store; they
/// end in `Ok` or a 4xx (never a 5xx, never a panic). A body of a type the
/// CLI also sends serializes to JSON that parses back to the same JSON.
#[cfg(feature = "server")]
pub fn api_json(data: &[u8]) {
    if let Some(Err(e)) = api_checked(data) {
        assert!(e.status.is_client_error(), "{e:?}");
        let _ = crate::server::api::error_field(&e.message);
    }
}

/// What [`api_json`] checks: `None` when the body does not parse, else
/// what its handler's checks say.
#[cfg(feature = "server")]
fn api_checked(data: &[u8]) -> Option<Result<(), crate::server::api::ApiError>> {
    use axum::http::StatusCode;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::server::api::{ApiError, check_command, check_intervals, target};
    use crate::server::api::{access, fleet, jobs, stacks, types};
    use crate::server::store::IntervalSettings;
    use crate::server::store::jobs::NewJob;
    use crate::sync::state::Id;
    use crate::wire::poll::Intervals;

    fn parse<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
        serde_json::from_slice(json).ok()
    }
    fn parse_sent<T: DeserializeOwned + Serialize>(json: &[u8]) -> Option<T> {
        let v: T = parse(json)?;
        let text = serde_json::to_vec(&v).expect("a body serializes");
        let again: T = serde_json::from_slice(&text).expect("a serialized body parses");
        assert_eq!(serde_json::to_vec(&again).expect("a body serializes"), text);
        Some(v)
    }
    // The server's defaults, which the store holds.
    let intervals = |own: IntervalSettings| check_intervals(own, Intervals { ping: 60, snapshot: 60, command: 60 });

    let (&which, json) = data.split_first()?;
    match API_BODIES[usize::from(which) % API_BODIES.len()] {
        "environment.create" => parse_sent::<types::CreateEnvironment>(json).map(|req| {
            let new = fleet::new_environment(req, Secret([0; 32]), "fuzz".into())?;
            intervals(new.intervals)
        }),
        "environment.update" => {
            parse_sent::<types::UpdateEnvironment>(json).map(|req| fleet::environment_change(&req).map(drop))
        }
        "intervals" => parse_sent::<types::IntervalsBody>(json).map(|b| intervals(b.into())),
        "settings" => parse_sent::<types::SettingsBody>(json).map(|b| fleet::check_settings(&b)),
        "command" => parse_sent::<types::CreateCommand>(json).map(|req| {
            let (_, text, _) = check_command(&req)?;
            // Resolved against the stored state; here two containers.
            let objects = [(Id([0xab; 32]), "web"), (Id([0xac; 32]), "db")];
            let _ = target::resolve("container", &text, objects.into_iter());
            Ok(())
        }),
        "stack.create" => parse_sent::<types::CreateStack>(json).map(|b| {
            stacks::check_name(&b.name)?;
            stacks::check_env(&b.env)?;
            stacks::check_compose(&b.compose, &b.env)?;
            b.targets.check().map(drop)
        }),
        "stack.update" => parse_sent::<types::UpdateStack>(json).map(|b| {
            b.env.as_ref().map(stacks::check_env).transpose()?;
            // With the stored variables when none are sent; none here.
            let none = std::collections::BTreeMap::new();
            b.compose.as_deref().map(|c| stacks::check_compose(c, b.env.as_ref().unwrap_or(&none))).transpose()?;
            b.targets.map(types::TargetsBody::check).transpose().map(drop)
        }),
        "job.create" => parse_sent::<types::CreateJob>(json).map(|b| b.check().map(drop)),
        "job.update" => parse_sent::<types::UpdateJob>(json).map(|b| {
            b.targets.map(types::TargetsBody::check).transpose()?;
            // The fields left out come from the stored job (`update_job`).
            jobs::check_job(NewJob {
                name: b.name.unwrap_or_else(|| "backup".into()),
                script: b.script.unwrap_or_else(|| "tar czf /backup.tgz /srv".into()),
                image: b.image.unwrap_or_default(),
                cron: b.cron.unwrap_or_else(|| "0 3 * * *".into()),
                timeout_s: b.timeout_s.unwrap_or(0),
            })
            .map(drop)
        }),
        "label" => parse_sent::<types::LabelBody>(json).map(|b| fleet::check_label("name", &b.name).map(drop)),
        "login" => parse::<types::Login>(json).map(|_| Ok(())),
        "password" => parse::<types::ChangePassword>(json).map(|b| {
            access::check_new_password("new", &b.new)
                .map_err(|message| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message })
        }),
        "token" => parse::<types::CreateToken>(json).map(|b| access::check_token_name(&b.name).map(drop)),
        other => unreachable!("{other} has no case"),
    }
}

#[cfg(all(test, feature = "agent", feature = "server"))]
mod tests {
    use super::*;
    use crate::compose::Project;
    use crate::server::api::stacks::check_compose;

    #[test]
    fn the_api_examples_pass_their_handlers_checks() {
        for (kind, json) in API_EXAMPLES {
            let which = API_BODIES.iter().position(|k| k == kind).expect("a known body");
            let input = [&[u8::try_from(which).unwrap()][..], json.as_bytes()].concat();
            assert!(matches!(api_checked(&input), Some(Ok(()))), "{kind} {json}: {:?}", api_checked(&input));
            api_json(&input);
        }
        assert_eq!(
            api_checked(b"\x00{\"name\":\"\",\"url\":\"https://x\"}").map(|r| r.unwrap_err().status.as_u16()),
            Some(422)
        );
        assert!(api_checked(b"\x00not json").is_none());
    }

    #[test]
    fn the_compose_examples_parse_on_both_sides() {
        for (name, input) in COMPOSE_EXAMPLES {
            let (file, env) = compose_input(input);
            assert!(check_compose(file, &env).is_ok(), "{name}");
            let project = Project::parse("fuzz", file, &env, std::path::Path::new(COMPOSE_DIR));
            assert!(project.is_ok_and(|p| p.warnings.iter().all(|w| !w.contains("is not set"))), "{name}");
            compose(input.as_bytes());
        }
    }

    #[test]
    fn sealed_polls_reach_the_decoders() {
        let request = PollRequest { base: 3, commands_seen: 9, ..PollRequest::default() };
        let reply = PollReply { acked: 3, results_acked: vec![1, 2], ..PollReply::default() };
        let mut codec = Codec::new(Limits::default()).unwrap();
        let (request, reply) = (codec.encode(&request.encode()).unwrap(), codec.encode(&reply.encode()).unwrap());
        // Both ways of giving each: a body to seal, and the envelope itself.
        poll_request(&[&[SEAL][..], &request].concat());
        poll_request(&[&[AS_IS][..], &seal_request(ENVIRONMENT, COUNTER, &SECRET, &request)].concat());
        poll_reply(&[&[SEAL][..], &reply].concat());
        poll_reply(&[&[AS_IS][..], &seal_reply(COUNTER, &SECRET, &reply)].concat());
        // A reply with a command this build cannot read (no action) round-trips without it.
        // `PollReply { acked: 1, commands: [Command { id: 5 }] }`, written out
        // by hand: the generated types are tern-proto's own.
        let unknown = [0x08, 0x01, 0x1a, 0x02, 0x08, 0x05];
        let body = codec.encode(&unknown).unwrap();
        assert_eq!(PollReply::decode(&codec.decode(&body).unwrap()).unwrap().unknown_commands, [5]);
        poll_body(&body);
        poll_reply(&[&[SEAL][..], &body].concat());
    }
}
