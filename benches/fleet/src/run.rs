//! A run: the server, the environments, the agents, the windows, the
//! readings, the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::agent::{Agent, Identity, Shared, unpack};
use crate::api::Api;
use crate::capacity::{self, Step, Stepper};
use crate::conn::{Connector, loopback_sources};
use crate::options::Options;
use crate::procfs;
use crate::report::{self, Report};
use crate::server::{self, Target};
use crate::states::Catalogue;
use crate::stats::{self, Counts, ErrorKind};

/// Runs what `opts` asks for and reports.
///
/// # Errors
/// When the options are inconsistent, the server cannot be started or
/// reached, or the environments cannot be made.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    opts.check().map_err(anyhow::Error::msg)?;
    let open_files = procfs::raise_open_files();
    let catalogue = Catalogue::load().context("loading the fixture hosts (tests/fixtures)")?;
    let spawned = if opts.spawn {
        let binary = opts.tern.clone().or_else(default_tern).context("where is tern? give --tern PATH")?;
        let dir = std::env::temp_dir().join(format!(
            "tern-fleet-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        ));
        Some(server::spawn(&binary, &opts.listen, &opts.server_args, &dir, opts.keep)?)
    } else {
        None
    };
    let target = match &spawned {
        Some(s) => s.target.clone(),
        None => attach(opts)?,
    };
    // Ctrl-C or SIGTERM ends the run, and still stops the spawned server
    // and removes its directory.
    let result = tokio::select! {
        r = drive(opts, &target, catalogue, open_files, spawned.is_some()) => r,
        () = tern::signal::shutdown() => Err(anyhow::anyhow!("interrupted")),
    };
    // Stopping the server blocks (it waits for the process).
    if let Some(s) = spawned {
        tokio::task::spawn_blocking(move || drop(s)).await?;
    }
    result
}

/// The target of `--server`.
fn attach(opts: &Options) -> anyhow::Result<Target> {
    let url = opts.server.as_deref().context("--server")?;
    let authority = url.strip_prefix("https://").context("--server must be https://host:port")?.trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let fingerprint = match (&opts.fingerprint, &opts.server_data) {
        (Some(f), _) => server::parse_fingerprint(f)?,
        (None, Some(data)) => tern::tls::fingerprint_of_pem(&data.join("cert.pem"))?,
        (None, None) => anyhow::bail!("give --fingerprint (or --server-data, to read its cert.pem)"),
    };
    Ok(Target {
        addr,
        fingerprint,
        token: opts.token.clone().context("--token")?,
        pid: opts.server_pid,
        data: opts.server_data.clone(),
    })
}

/// Readings of the server process and its database at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    at: Option<Instant>,
    cpu: Option<Duration>,
    rss: Option<u64>,
    files: Option<usize>,
    db: Option<u64>,
    sim_cpu: Duration,
}

/// Reads the server process (and its database when `db`: a checkpoint
/// first, which holds the server's writer for a moment, so it is never
/// taken inside a measured window).
fn read(target: &Target, db: bool) -> Reading {
    let db = if db { target.data.as_deref().map(procfs::database_bytes) } else { None };
    Reading {
        at: Some(Instant::now()),
        cpu: target.pid.and_then(|p| procfs::cpu_time(p).ok()),
        rss: target.pid.and_then(|p| procfs::rss(p).ok()),
        files: target.pid.and_then(procfs::open_files),
        db,
        sim_cpu: procfs::cpu_time(std::process::id()).unwrap_or_default(),
    }
}

/// Between the start of the database's window and the polls' window: the
/// checkpoint's stall and the polls it held up pass first.
const SETTLE: Duration = Duration::from_secs(2);

fn elapsed(a: &Reading, b: &Reading) -> Duration {
    match (a.at, b.at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    }
}

/// The fleet-wide command rate, in thousandths of a command per second.
type Rate = Arc<AtomicU64>;

async fn drive(
    opts: &Options,
    target: &Target,
    catalogue: Arc<Catalogue>,
    open_files: u64,
    spawned: bool,
) -> anyhow::Result<Report> {
    let n = opts.agents;
    let api = Api::new(target, opts.api_concurrency)?;
    let prefix = format!("fleet-{}-{}", std::process::id(), tern::clock::unix_now());
    let started = Instant::now();
    let enrolled = api.create_environments(&prefix, &target.url(), n, opts.api_concurrency).await?;
    let enrolment_time = started.elapsed();
    eprintln!("tern-fleet: {n} environments created in {:.1} s", enrolment_time.as_secs_f64());

    let sources = loopback_sources(target.addr.ip(), n, opts.per_address, opts.source_addrs);
    let mut rng = fastrand::Rng::with_seed(opts.seed.unwrap_or_else(|| fastrand::u64(..)));
    let identities: Vec<Identity> = enrolled
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut salt = [0u8; 32];
            salt.iter_mut().for_each(|b| *b = rng.u8(..));
            Identity {
                index: i,
                environment: e.token.environment,
                key: e.token.secret.with_agent_secret(opts.agent_secret.as_deref()),
                edge_id: e.edge_id.clone(),
                salt,
                name: format!("sim-{}", e.token.environment),
                start: catalogue.start(i, &mut rng),
                reconnect: reconnects(i, opts.reconnect_share),
                source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            }
        })
        .collect();
    let reconnecting = identities.iter().filter(|i| i.reconnect).count();

    let before = read(target, true);
    let warmup_interval = if opts.find_capacity {
        Duration::from_secs_f64(n as f64 / opts.start_rate)
    } else {
        Duration::from_secs_f64(opts.interval)
    };
    let shared = Arc::new(Shared {
        catalogue: catalogue.clone(),
        connector: Connector::new(target.addr, tern::tls::Trust::Pinned(target.fingerprint))?,
        window: Default::default(),
        interval_us: AtomicU64::new(warmup_interval.as_micros() as u64),
        jitter: opts.jitter,
        change_per_poll: if opts.idle { 0.0 } else { opts.change_share },
        back_to_back: opts.idle,
        poll_timeout: Duration::from_secs_f64(opts.poll_timeout),
        first_contacts: AtomicUsize::new(0),
        prime: !opts.idle && opts.change_share > 0.0,
        primed: AtomicUsize::new(0),
        queued: Default::default(),
        bases: (0..n).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::Notify::new(),
        logged: AtomicUsize::new(0),
    });
    let identities = Arc::new(identities);
    let mut agents = tokio::task::JoinSet::new();
    for id in identities.iter() {
        agents.spawn(Agent::new(id.clone()).run(shared.clone()));
    }

    // Warm-up: every agent's first contact (its whole state).
    let warm_start = Instant::now();
    let deadline = warm_start + warmup_interval.mul_f64(1.0 + opts.jitter) + Duration::from_secs(120);
    while shared.first_contacts.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_contact_time = warm_start.elapsed();
    let first = shared.window.take();
    let contacted = shared.first_contacts.load(Ordering::Relaxed);
    eprintln!("tern-fleet: {contacted} of {n} agents made first contact in {:.1} s", first_contact_time.as_secs_f64());
    // Then every agent's priming change (see `Shared::prime`).
    if shared.prime {
        let deadline = Instant::now() + warmup_interval.mul_f64(1.0 + opts.jitter) + Duration::from_secs(120);
        while shared.primed.load(Ordering::Relaxed) < contacted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = shared.window.take();
        eprintln!("tern-fleet: {} agents primed (a second state stored)", shared.primed.load(Ordering::Relaxed));
    }
    let connected = read(target, true);

    let command_rate: Rate = Arc::new(AtomicU64::new(0));
    let commands_stop = Arc::new(AtomicBool::new(false));
    let commands = (!opts.idle).then(|| {
        tokio::spawn(queue_commands(
            shared.clone(),
            api.clone(),
            identities.clone(),
            command_rate.clone(),
            commands_stop.clone(),
        ))
    });

    let (counts, start, end, db_start, capacity_report) = if opts.find_capacity {
        let (cap, best) = find_capacity(opts, target, &shared, &command_rate, warmup_interval).await;
        let (counts, start, end) =
            best.unwrap_or_else(|| (Counts::default(), read(target, false), read(target, false)));
        (counts, start, end, None::<Reading>, Some(cap))
    } else {
        command_rate.store((opts.command_rate * 1000.0) as u64, Ordering::Relaxed);
        let db_start = read(target, true);
        tokio::time::sleep(SETTLE).await;
        let _ = shared.window.take();
        let start = read(target, false);
        eprintln!("tern-fleet: measuring for {} s", opts.duration);
        tokio::time::sleep(Duration::from_secs_f64(opts.duration)).await;
        let counts = shared.window.take();
        let end = read(target, true);
        (counts, start, end, Some(db_start), None)
    };
    command_rate.store(0, Ordering::Relaxed);
    commands_stop.store(true, Ordering::Relaxed);
    if let Some(c) = commands {
        let _ = c.await;
    }

    // Commands queued near the end are answered in their agents' next
    // poll or the one after: wait that long, at most.
    let interval = shared.interval();
    let drain_until =
        Instant::now() + (interval.mul_f64(2.0 + opts.jitter) + Duration::from_secs(2)).min(Duration::from_secs(150));
    while !shared.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unanswered = shared.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() as u64;

    shared.stop.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    let stop_by = Instant::now() + shared.poll_timeout + Duration::from_secs(5);
    while !agents.is_empty() {
        match tokio::time::timeout_at(stop_by, agents.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                agents.abort_all();
                break;
            }
        }
    }

    let window = elapsed(&start, &end);
    let polls = counts.all.count();
    let cpu = start.cpu.zip(end.cpu).map(|(a, b)| b.saturating_sub(a));
    let held = connected.files.zip(before.files).map(|(c, b)| c.saturating_sub(b));
    let rss_delta = connected.rss.zip(before.rss).map(|(c, b)| c as f64 - b as f64);
    let mut report = Report {
        mode: if opts.find_capacity {
            "capacity"
        } else if opts.idle {
            "idle"
        } else {
            "fleet"
        }
        .into(),
        server: target.url(),
        spawned,
        agents: n,
        interval_s: if opts.idle { 0.0 } else { interval.as_secs_f64() },
        jitter: opts.jitter,
        change_share: if opts.idle { 0.0 } else { opts.change_share },
        command_rate: if opts.idle { 0.0 } else { opts.command_rate },
        reconnect_share: opts.reconnect_share,
        source_addrs: sources.len(),
        open_file_limit: open_files,
        enrolment: report::Enrolment {
            environments: enrolled.len(),
            seconds: enrolment_time.as_secs_f64(),
            per_second: stats::per_second(enrolled.len() as u64, enrolment_time),
        },
        first_contact: report::FirstContact {
            agents: contacted,
            seconds: first_contact_time.as_secs_f64(),
            latency: first.all.summary(),
            errors: first.errors_by_name(),
        },
        polls: report::Polls {
            seconds: window.as_secs_f64(),
            total: polls,
            per_second: stats::per_second(polls, window),
            offered_per_second: if opts.idle { 0.0 } else { n as f64 / interval.as_secs_f64() },
            latency: counts.all.summary(),
            latency_kept_alive: counts.kept.summary(),
            latency_new_connection: counts.fresh.summary(),
            changes: counts.changes,
            connections: counts.connections,
            resumed: counts.resumed,
            body_up_mean: counts.body_up as f64 / polls.max(1) as f64,
            body_down_mean: counts.body_down as f64 / polls.max(1) as f64,
        },
        commands: report::Commands {
            queued: counts.commands_queued,
            received: counts.commands_received,
            results: counts.results_acked,
            round_trip: counts.command_round_trip.summary(),
            unanswered,
        },
        server_process: report::ServerProcess {
            pid: target.pid,
            cpu_ms_per_poll: cpu.map(|c| stats::cpu_ms_per(c, polls)),
            cpu_cores: cpu.map(|c| c.as_secs_f64() / window.as_secs_f64().max(1e-9)),
            rss_before: before.rss,
            rss_connected: connected.rss,
            rss_end: end.rss,
            rss_per_connected_agent: rss_delta.zip(held).map(|(d, h)| d / h.max(1) as f64),
            open_files_before: before.files,
            open_files_connected: connected.files,
            connections_held: held,
        },
        simulator: report::Simulator {
            cpu_cores: end.sim_cpu.saturating_sub(start.sim_cpu).as_secs_f64() / window.as_secs_f64().max(1e-9),
            rss: procfs::rss(std::process::id()).unwrap_or(0),
        },
        database: report::Database {
            bytes_enrolled: before.db,
            bytes_first_contact: connected.db,
            bytes_end: end.db,
            first_contact_per_agent: connected.db.zip(before.db).map(|(c, b)| (c as f64 - b as f64) / n as f64),
            growth_per_agent_per_day: db_start
                .and_then(|s| Some(stats::per_agent_per_day(end.db? as i64 - s.db? as i64, n, elapsed(&s, &end)))),
        },
        errors: counts.errors_by_name(),
        error_total: counts.error_total(),
        capacity: capacity_report,
    };
    if reconnecting == n {
        // No agent holds a connection between polls.
        report.server_process.rss_per_connected_agent = None;
    }
    Ok(report)
}

/// Whether agent `i` of a fleet reconnects for every poll: `share` of the
/// fleet, spread evenly (every agent whose index crosses a multiple of
/// 1/share).
pub fn reconnects(i: usize, share: f64) -> bool {
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// Queues `container.restart` commands at the current rate (Poisson
/// arrivals), each for a random agent the server holds a state of, on a
/// container in that state.
async fn queue_commands(
    shared: Arc<Shared>,
    api: Arc<Api>,
    identities: Arc<Vec<Identity>>,
    rate: Rate,
    stop: Arc<AtomicBool>,
) {
    let mut rng = fastrand::Rng::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let r = rate.load(Ordering::Relaxed) as f64 / 1000.0;
        if r <= 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            next = Instant::now();
            continue;
        }
        // Exponential gaps: a Poisson stream at rate r.
        next += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / r);
        tokio::time::sleep_until(next).await;
        let Some((environment, target)) = (0..32).find_map(|_| {
            let id = &identities[rng.usize(..identities.len())];
            let base = unpack(shared.bases[id.index].load(Ordering::Relaxed))?;
            let containers = shared.catalogue.container_ids(base, &id.salt);
            (!containers.is_empty()).then(|| (id.environment, containers[rng.usize(..containers.len())]))
        }) else {
            continue;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (shared, api) = (shared.clone(), api.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let queued_at = Instant::now();
            match api.queue_command(environment, "container.restart", &target.to_string()).await {
                Ok(id) => {
                    shared
                        .queued
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((environment, id), queued_at);
                    shared.window.with(|w| w.commands_queued += 1);
                }
                Err(e) => {
                    shared.window.error(ErrorKind::Api);
                    if shared.logged.fetch_add(1, Ordering::Relaxed) < 10 {
                        eprintln!("tern-fleet: queueing a command failed: {e:#}");
                    }
                }
            }
        });
    }
}

/// Steps the poll rate (see [`crate::capacity`]); the report's section,
/// and the counts and readings of the largest rate that held.
async fn find_capacity(
    opts: &Options,
    target: &Target,
    shared: &Shared,
    command_rate: &Rate,
    mut interval: Duration,
) -> (report::Capacity, Option<(Counts, Reading, Reading)>) {
    let n = opts.agents as f64;
    // Per poll as in the 60 s fleet the options describe.
    let commands_per_poll = opts.command_rate / (n / opts.interval);
    let mut stepper = Stepper::new(opts.start_rate, opts.step_factor, opts.resolution, 0.5, 1e6, opts.max_steps);
    let mut steps = Vec::new();
    let mut best: Option<(f64, Counts, Reading, Reading)> = None;
    while let Some(rate) = stepper.current() {
        let old = interval;
        interval = Duration::from_secs_f64(n / rate);
        shared.set_interval(interval);
        command_rate.store((commands_per_poll * rate * 1000.0) as u64, Ordering::Relaxed);
        // Polls scheduled at the old pace happen first.
        tokio::time::sleep(old.mul_f64(1.0 + opts.jitter).min(Duration::from_secs(120)) + Duration::from_secs(1)).await;
        let _ = shared.window.take();
        let start = read(target, false);
        tokio::time::sleep(Duration::from_secs_f64(opts.step_duration)).await;
        let counts = shared.window.take();
        let end = read(target, false);
        let achieved = stats::per_second(counts.all.count(), elapsed(&start, &end));
        let l = counts.all.summary();
        let held = capacity::holds(rate, achieved, l.p99_ms, counts.error_total(), opts.p99_limit_ms);
        eprintln!(
            "tern-fleet: step {rate:.1} polls/s offered: {achieved:.1} served, p99 {:.2} ms, {} errors: {}",
            l.p99_ms,
            counts.error_total(),
            if held { "held" } else { "failed" }
        );
        steps.push(Step { offered: rate, achieved, p99_ms: l.p99_ms, errors: counts.error_total(), held });
        stepper.record(held);
        if held && best.as_ref().is_none_or(|(r, ..)| rate > *r) {
            best = Some((rate, counts, start, end));
        }
    }
    let largest = stepper.largest_holding();
    let cap = report::Capacity {
        p99_limit_ms: opts.p99_limit_ms,
        steps,
        largest_rate: largest,
        smallest_failing_rate: stepper.smallest_failing(),
        agents_at_60s: largest.map(|r| capacity::agents_at(r, 60.0)),
        method: format!(
            "{} agents held; interval = agents / rate; per-poll work as a 60 s fleet's (change share {} per poll, \
             {:.4} commands per poll, {:.0} % reconnecting); a step holds with p99 < {} ms, no error and >= 95 % of \
             the offered rate served; agents at 60 s = rate x 60",
            opts.agents,
            opts.change_share,
            commands_per_poll,
            opts.reconnect_share * 100.0,
            opts.p99_limit_ms
        ),
    };
    (cap, best.map(|(_, c, s, e)| (c, s, e)))
}

/// Where `tern-fleet` looks for `tern` by default: beside itself.
pub fn default_tern() -> Option<PathBuf> {
    std::env::current_exe().ok().map(|p| p.with_file_name("tern"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnecting_share_is_exact_and_spread() {
        let picked: Vec<usize> = (0..100).filter(|&i| reconnects(i, 0.1)).collect();
        assert_eq!(picked.len(), 10);
        assert!(picked.windows(2).all(|w| w[1] - w[0] == 10), "{picked:?}");
        assert_eq!((0..1000).filter(|&i| reconnects(i, 0.25)).count(), 250);
        assert_eq!((0..50).filter(|&i| reconnects(i, 0.0)).count(), 0);
        assert_eq!((0..50).filter(|&i| reconnects(i, 1.0)).count(), 50);
    }
}
