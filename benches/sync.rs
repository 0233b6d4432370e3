//! Bytes and time of the sync core on the recorded 40-container host.
//!
//! Prints a table of bytes per scenario (tern vs the Portainer async agent's
//! gzip'd JSON / JSON Patch), then times each scenario's diff + encode, and
//! diff + encode on a 1,000-container host.
//!
//! ```text
//! cargo bench --bench sync
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tern::sync::State;
use tern::sync::state::{ContainerStatus, Id};
use tern::wire::codec::{Codec, Limits};
use tern_bench::baseline;
use tern_bench::fixture;
use tern_bench::scenarios::{self, CHURN_START, Prepared};

fn host40() -> Prepared {
    scenarios::prepare(&fixture::load(&fixture::dir(), "host40").expect("tests/fixtures/host40.json"))
}

/// A 1,000-container host built from the recorded containers (copies with
/// fresh ids and names), and the same host a poll later: ten containers
/// restarted, one stopped, one removed, one created.
fn thousand(base: &State) -> (State, State) {
    let mut big = base.clone();
    big.containers = Default::default();
    let originals: Vec<_> = base.containers.iter().cloned().collect();
    for k in 0.. {
        for c in &originals {
            if big.containers.len() == 1000 {
                break;
            }
            let mut c = c.clone();
            let mut h = blake3::Hasher::new();
            h.update(&c.id.0).update(&(k as u32).to_le_bytes());
            c.id = Id(*h.finalize().as_bytes());
            c.name = format!("{}-{k}", c.name);
            big.containers.insert(c);
        }
        if big.containers.len() == 1000 {
            break;
        }
    }
    let mut next = big.clone();
    let ids: Vec<Id> = big.containers.iter().map(|c| c.id).collect();
    for id in ids.iter().step_by(97).take(10) {
        let mut c = next.containers.get(id).unwrap().clone();
        c.started_at += 60;
        c.restart_count += 1;
        next.containers.insert(c);
    }
    let mut stopped = next.containers.get(&ids[500]).unwrap().clone();
    stopped.status = ContainerStatus::Exited;
    stopped.exit_code = 137;
    stopped.finished_at = stopped.started_at + 3600;
    stopped.networks.iter_mut().for_each(|a| a.ipv4 = None);
    next.containers.insert(stopped);
    next.containers.remove(&ids[1]);
    let mut created = big.containers.get(&ids[2]).unwrap().clone();
    created.id = Id([0xee; 32]);
    created.name = "new-container".into();
    next.containers.insert(created);
    (big, next)
}

fn bench(c: &mut Criterion) {
    let p = host40();
    let mut codec = Codec::new(Limits::default()).unwrap();
    let costs = scenarios::costs(&p, &mut codec).unwrap();
    println!("\nBody bytes on the recorded host ({} steps):\n{}", p.states.len(), scenarios::table(&costs));

    let mut g = c.benchmark_group("host40");
    g.sample_size(20);
    let pairs = [
        ("first full snapshot", None, 0),
        ("unchanged state", Some(0), 1),
        ("one container stopped", Some(1), 2),
        ("one image pulled", Some(2), 3),
    ];
    for (name, from, to) in pairs {
        let empty = State::default();
        let base = from.map_or(&empty, |i| &p.states[i]);
        g.bench_function(format!("tern diff+encode: {name}"), |b| {
            b.iter(|| scenarios::poll_body(&mut codec, 1, black_box(base), black_box(&p.states[to])).unwrap())
        });
        let (doc_from, doc_to) = (from.map(|i| &p.documents[i]), &p.documents[to]);
        g.bench_function(format!("portainer json+gzip: {name}"), |b| {
            b.iter(|| match doc_from {
                None => baseline::full_bytes(black_box(doc_to)),
                Some(f) => baseline::patch_bytes(black_box(f), black_box(doc_to)),
            })
        });
    }
    g.bench_function("tern diff+encode: churn trace", |b| {
        b.iter(|| {
            (CHURN_START..p.states.len())
                .map(|i| scenarios::poll_body(&mut codec, i as u64, &p.states[i - 1], &p.states[i]).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();

    let (big, next) = thousand(&p.states[0]);
    let bytes = scenarios::poll_body(&mut codec, 1, &big, &next).unwrap().len();
    let full = scenarios::poll_body(&mut codec, 0, &State::default(), &big).unwrap().len();
    println!("\n1,000 containers: full snapshot {full} B, 13-change poll {bytes} B\n");
    let mut g = c.benchmark_group("1000 containers");
    g.sample_size(30);
    g.bench_function("diff+encode, 13 changes", |b| {
        b.iter(|| scenarios::poll_body(&mut codec, 1, black_box(&big), black_box(&next)).unwrap())
    });
    g.bench_function("diff+encode, unchanged", |b| {
        b.iter(|| scenarios::poll_body(&mut codec, 1, black_box(&big), black_box(&big)).unwrap())
    });
    g.bench_function("root digest", |b| b.iter(|| black_box(&big).root()));
    g.sample_size(10);
    g.bench_function("diff+encode, full snapshot", |b| {
        b.iter(|| scenarios::poll_body(&mut codec, 0, &State::default(), black_box(&big)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
