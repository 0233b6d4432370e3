//! Writes the seed corpora of the fuzz targets from the recorded fixtures
//! (`tests/fixtures/<name>.json`, default `host40` and `train`):
//!
//! * `corpus/poll_body/`: the codec-encoded poll bodies tern sends for the
//!   recording: the first full snapshot (empty state to step 0) and each
//!   step's delta (step i-1 to step i);
//! * `corpus/apply_delta/`: the same deltas, protobuf-encoded but not
//!   compressed, twice: as raw bytes (which `arbitrary` splits into a state
//!   and a delta as it likes), and framed so that `arbitrary` reads back
//!   exactly (an empty-tabled state, the encoded delta);
//! * `corpus/round_trip/`: nothing; libFuzzer starts it from scratch;
//! * `corpus/poll_request/`: the same poll bodies, and richer requests
//!   (results of every status, job runs, agent info, intervals), each as a
//!   body to seal (`SEAL` first) and as an envelope sealed with the fuzz
//!   key (`AS_IS` first; see `tern::fuzzing`);
//! * `corpus/poll_reply/`: replies with every kind of command (a stack
//!   deploy carrying a fixture's compose file, a job with a schedule),
//!   intervals and acknowledgements, both ways too;
//! * `corpus/compose/`: the fixtures' compose files
//!   (`scripts/fixtures/*/*/docker-compose.yml`) and the tests' ones, with
//!   variables after a NUL byte;
//! * `corpus/api_json/`: the README's API request bodies, each behind the
//!   byte that picks its type (`tern::fuzzing::API_BODIES`).
//!
//! Usage: `cargo run --release --bin seed [-- FIXTURE...]`, from `fuzz/`.
//! Existing files of the same name are overwritten; other files are kept.

use std::path::Path;
use std::process::ExitCode;

use arbitrary::{Arbitrary, Unstructured};
use tern::auth::{seal_reply, seal_request};
use tern::fuzzing::{API_BODIES, API_EXAMPLES, AS_IS, COMPOSE_EXAMPLES, COUNTER, ENVIRONMENT, SEAL, SECRET};
use tern_bench::scenarios::{Prepared, poll_body, prepare};
use tern::sync::state::Id;
use tern::sync::{Delta, State, apply, diff};
use tern::wire::codec::{Codec, Limits};
use tern::wire::poll::{
    Action, AgentInfo, AgentUpdate, ImageFetch, Command, CommandResult, ContainerOp, Intervals, JobRun, JobSpec, PollReply, PollRequest,
    ResultStatus, StackSpec,
};

/// Named inputs.
type Seeds = Vec<(String, Vec<u8>)>;

/// The limits `tern::fuzzing::poll_body` decodes with, so every seed decodes.
const LIMITS: Limits = Limits { max_encoded: 1 << 20, max_decoded: 4 << 20 };

fn main() -> ExitCode {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() { vec!["host40".to_owned(), "train".to_owned()] } else { names };
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    match run(&names, &corpus) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(names: &[String], corpus: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let poll_dir = corpus.join("poll_body");
    let delta_dir = corpus.join("apply_delta");
    std::fs::create_dir_all(&poll_dir)?;
    std::fs::create_dir_all(&delta_dir)?;
    std::fs::create_dir_all(corpus.join("round_trip"))?;
    let request_dir = corpus.join("poll_request");
    std::fs::create_dir_all(&request_dir)?;
    let mut codec = Codec::new(LIMITS)?;
    let fixtures = tern_bench::fixture::dir();
    for name in names {
        let rec = tern_bench::fixture::load(&fixtures, name).map_err(|e| format!("fixture {name}: {e}"))?;
        let p: Prepared = prepare(&rec);
        let (mut polls, mut deltas, mut framed, mut applies) = (0, 0, 0, 0);
        let empty = State::default();
        for (i, current) in p.states.iter().enumerate() {
            let (kind, seq, base) = match i {
                0 => ("full", 0, &empty),
                _ => ("step", i as u64 - 1, &p.states[i - 1]),
            };
            let stem = format!("{name}-{i:03}-{kind}");
            let body = poll_body(&mut codec, seq, base, current)?;
            std::fs::write(poll_dir.join(&stem), &body)?;
            write_request(&request_dir, &stem, &body)?;
            polls += 1;
            let delta = diff(base, current);
            if delta.is_empty() {
                continue;
            }
            let bytes = delta.encode();
            std::fs::write(delta_dir.join(format!("{stem}-raw")), &bytes)?;
            deltas += 1;
            if let Some((seed, state)) = frame(&bytes) {
                std::fs::write(delta_dir.join(format!("{stem}-framed")), &seed)?;
                framed += 1;
                applies += usize::from(apply(&state, &Delta::decode(&bytes)?).is_ok());
            }
        }
        println!(
            "{name}: {} steps -> {polls} poll bodies, {deltas} raw deltas, {framed} framed deltas ({applies} apply to their framed base)",
            p.states.len()
        );
    }
    let requests = requests(&mut codec)?;
    for (name, body) in &requests {
        write_request(&request_dir, name, body)?;
    }
    let replies = replies(&mut codec)?;
    let reply_dir = corpus.join("poll_reply");
    std::fs::create_dir_all(&reply_dir)?;
    for (name, body) in &replies {
        write_both(&reply_dir, name, body, &seal_reply(COUNTER, &SECRET, body))?;
    }
    let composes = compose_seeds()?;
    let compose_dir = corpus.join("compose");
    std::fs::create_dir_all(&compose_dir)?;
    for (name, input) in &composes {
        std::fs::write(compose_dir.join(name), input)?;
    }
    let api_dir = corpus.join("api_json");
    std::fs::create_dir_all(&api_dir)?;
    for (i, (kind, json)) in API_EXAMPLES.iter().enumerate() {
        let which = API_BODIES.iter().position(|k| k == kind).ok_or_else(|| format!("no API body {kind}"))?;
        let mut input = vec![u8::try_from(which)?];
        input.extend_from_slice(json.as_bytes());
        std::fs::write(api_dir.join(format!("{kind}-{i:02}")), input)?;
    }
    println!(
        "{} more requests, {} replies (each sealed and to seal), {} compose files, {} API bodies",
        requests.len(),
        replies.len(),
        composes.len(),
        API_EXAMPLES.len()
    );
    println!("corpus in {}", corpus.display());
    Ok(())
}

/// A poll body as the two inputs of `poll_request`: to seal, and sealed.
fn write_request(dir: &Path, stem: &str, body: &[u8]) -> std::io::Result<()> {
    write_both(dir, stem, body, &seal_request(ENVIRONMENT, COUNTER, &SECRET, body))
}

/// `<stem>-seal` (a body to seal) and `<stem>-wire` (the envelope as received).
fn write_both(dir: &Path, stem: &str, body: &[u8], wire: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(format!("{stem}-seal")), [&[SEAL][..], body].concat())?;
    std::fs::write(dir.join(format!("{stem}-wire")), [&[AS_IS][..], wire].concat())
}

/// Codec-encoded requests with what the fixtures' snapshot polls lack.
fn requests(codec: &mut Codec) -> Result<Seeds, Box<dyn std::error::Error>> {
    let result = |id, status, error: &str, output: &[u8], phase: &str| CommandResult {
        id,
        status,
        error: error.into(),
        finished_at: 1_700_000_000 + id as i64,
        output: output.to_vec(),
        phase: phase.into(),
    };
    let agent = AgentInfo { version: "0.1.0".into(), edge_id: "edge-7f3a".into() };
    let first = PollRequest {
        agent: Some(agent),
        intervals: Some(Intervals { ping: 60, snapshot: 300, command: 30 }),
        ..PollRequest::default()
    };
    let busy = PollRequest {
        base: 12,
        results: vec![
            result(5, ResultStatus::Ok, "", b"2024-05-01 listening on :80\n", ""),
            result(6, ResultStatus::Failed, "No such container: web", b"", ""),
            result(7, ResultStatus::Rejected, "this agent does not know this command", b"", ""),
            result(8, ResultStatus::Progress, "", b"", "deploying"),
        ],
        commands_seen: 8,
        job_runs: vec![JobRun {
            job: 3,
            version: 2,
            run: 41,
            started_at: 1_700_000_000,
            finished_at: 1_700_000_004,
            exit_code: 0,
            output: b"backup done\n".to_vec(),
            truncated: false,
            error: String::new(),
        }],
        ..PollRequest::default()
    };
    let heartbeat = PollRequest { base: 12, ..PollRequest::default() };
    Ok(vec![
        ("first-contact".into(), codec.encode(&first.encode())?),
        ("results".into(), codec.encode(&busy.encode())?),
        ("heartbeat".into(), codec.encode(&heartbeat.encode())?),
    ])
}

/// Codec-encoded replies: every kind of command, intervals, acknowledgements.
fn replies(codec: &mut Codec) -> Result<Seeds, Box<dyn std::error::Error>> {
    let compose = std::fs::read_to_string(repo().join("scripts/fixtures/host40/shop/docker-compose.yml"))?;
    let (web, net) = (Id([0xab; 32]), Id([0x4e; 32]));
    let actions = vec![
        Action::Container(ContainerOp::Start, web),
        Action::Container(ContainerOp::Remove, web),
        Action::ImagePull("nginx:1.25.3".into()),
        Action::ImageRemove("sha256:".to_owned() + &"ab".repeat(32)),
        Action::VolumeRemove("shop_data".into()),
        Action::NetworkRemove(net),
        Action::ContainerLogs(web, 200),
        Action::StackDeploy(StackSpec {
            name: "shop".into(),
            compose,
            env: [("NGINX_TAG".to_owned(), "1.25.3".to_owned())].into(),
            version: 2,
            images: vec![ImageFetch {
                reference: "10.0.0.5:5000/shop/web:2".into(),
                image_id: "sha256:".to_owned() + &"cd".repeat(32),
            }],
            files: [("conf/nginx.conf".to_owned(), b"worker_processes 1;\n".to_vec())].into(),
        }),
        Action::StackRemove("shop".into()),
        Action::Job(JobSpec {
            job: 3,
            script: "tar czf /backup.tgz /srv".into(),
            image: "busybox:latest".into(),
            cron: "0 3 * * *".into(),
            timeout_s: 600,
            version: 2,
        }),
        Action::JobRemove(3),
        Action::AgentUpdate(AgentUpdate {
            image: ImageFetch {
                reference: "10.0.0.5:5000/tern-agent:0.3.0".into(),
                image_id: "sha256:".to_owned() + &"ef".repeat(32),
            },
            timeout_s: 300,
            update: 77,
        }),
    ];
    let commands: Vec<Command> = actions.into_iter().zip(10..).map(|(action, id)| Command { id, action }).collect();
    let all = PollReply {
        acked: 12,
        commands,
        intervals: Some(Intervals { ping: 60, snapshot: 300, command: 30 }),
        results_acked: vec![5, 6, 7],
        job_runs_acked: vec![(3, 41)],
        ..PollReply::default()
    };
    let resync = PollReply { acked: 11, resync: true, ..PollReply::default() };
    let ack = PollReply { acked: 12, ..PollReply::default() };
    Ok(vec![
        ("commands".into(), codec.encode(&all.encode())?),
        ("resync".into(), codec.encode(&resync.encode())?),
        ("ack".into(), codec.encode(&ack.encode())?),
    ])
}

/// The repository (the fuzz crate's parent).
fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compose inputs: the fixtures' files with the variables they use, and
/// the tests' files (see `tests/stacks.rs`, `src/agent/compose.rs`).
fn compose_seeds() -> Result<Seeds, Box<dyn std::error::Error>> {
    let vars = "\0NGINX_TAG=1.25.3\nFIXTURE_WORK=/srv/fixtures\nIMAGE=busybox\nTAG=\nMODE=prod\n";
    let mut out = Vec::new();
    for fleet in ["host40", "train"] {
        let dir = repo().join("scripts/fixtures").join(fleet);
        let mut stacks: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        stacks.sort_by_key(std::fs::DirEntry::file_name);
        for stack in stacks {
            let file = stack.path().join("docker-compose.yml");
            if let Ok(text) = std::fs::read(&file) {
                let name = format!("{fleet}-{}", stack.file_name().to_string_lossy());
                out.push((name.clone(), text.clone()));
                out.push((format!("{name}-vars"), [text, vars.as_bytes().to_vec()].concat()));
            }
        }
    }
    for (name, text) in COMPOSE_EXAMPLES {
        out.push(((*name).to_owned(), text.as_bytes().to_vec()));
    }
    Ok(out)
}

/// Input bytes that the `apply_delta` target (`(State, Vec<u8>)` via
/// `arbitrary_take_rest`, as `fuzz_target!` does) reads back as a state with
/// no objects and exactly `delta`: zeros in front (integers, `false`
/// continuation flags), then the delta with a `true` flag (`0x01`) before
/// each byte (arbitrary 1.5's `Vec::arbitrary_take_rest`), then zeros behind
/// (string lengths, which `arbitrary` takes from the end of the input).
/// Found by trying sizes and checked by decoding, so a change in `State` or
/// in `arbitrary` only costs the framed seeds, never a wrong one.
fn frame(delta: &[u8]) -> Option<(Vec<u8>, State)> {
    for front in 0..1024 {
        for back in 0..64 {
            let mut seed = vec![0u8; front];
            seed.extend(delta.iter().flat_map(|&b| [1, b]));
            seed.resize(seed.len() + back, 0);
            let Ok((state, rest)) = <(State, Vec<u8>)>::arbitrary_take_rest(Unstructured::new(&seed)) else { continue };
            let no_objects = state.containers.is_empty()
                && state.images.is_empty()
                && state.volumes.is_empty()
                && state.networks.is_empty();
            if no_objects && rest == delta {
                return Some((seed, state));
            }
        }
    }
    None
}
