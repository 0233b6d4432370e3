//! Bytes and time of layer deltas (`tern::transfer`): the cases of issue
//! #14 on synthetic layers, side by side with what a registry sends for the
//! changed layer (its gzip, as `docker pull` fetches it).
//!
//! * (a) one 4 KiB file changed in a 50 MiB layer of incompressible bytes
//!   (binaries): a registry sends the whole layer again;
//! * (b) a 5 MiB application layer rebuilt with small changes: 0.5 % of it
//!   rewritten in 64 places, one 20 KiB file inserted;
//! * (c) a new base layer: nothing to refer to, compressed whole.
//!
//! ```text
//! cargo bench --bench transfer
//! ```

use std::hint::black_box;
use std::io::Write;

use criterion::{Criterion, criterion_group, criterion_main};
use tern::transfer::{decode, encode};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Half text-like (compressible), half noise, like an application layer.
fn app_layer(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let words = ["fn ", "let ", "return ", "config", "value", "{\n", "}\n", "error", "self.", "    "];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        if rng.bool() {
            out.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
        } else {
            out.extend((0..16).map(|_| rng.u8(..)));
        }
    }
    out.truncate(len);
    out
}

fn gzip(bytes: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap().len()
}

fn cases() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let a_old = noise(50 << 20, 1);
    let mut a_new = a_old.clone();
    a_new[20_000_000..20_004_096].copy_from_slice(&noise(4096, 2));
    let b_old = app_layer(5 << 20, 3);
    let mut b_new = b_old.clone();
    let mut rng = fastrand::Rng::with_seed(4);
    for _ in 0..64 {
        let at = rng.usize(..b_new.len() - 410);
        b_new[at..at + 410].copy_from_slice(&noise(410, rng.u64(..)));
    }
    let at = b_new.len() / 3;
    b_new.splice(at..at, app_layer(20 << 10, 5));
    let c_new = app_layer(30 << 20, 6);
    vec![
        ("(a) 4 KiB changed in 50 MiB", a_old, a_new),
        ("(b) 5 MiB app layer rebuilt", b_old, b_new),
        ("(c) new base layer", Vec::new(), c_new),
    ]
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    println!("{:<32} {:>12} {:>12} {:>8}", "case", "registry B", "tern B", "ratio");
    for (name, old, new) in &cases {
        let delta = encode(old, new).unwrap();
        assert_eq!(&decode(old, &delta, new.len() as u64).unwrap(), new);
        let pull = gzip(new);
        println!("{name:<32} {pull:>12} {:>12} {:>8.4}", delta.len(), delta.len() as f64 / pull as f64);
    }
    let mut g = c.benchmark_group("transfer");
    g.sample_size(10);
    for (name, old, new) in &cases[..2] {
        let delta = encode(old, new).unwrap();
        g.bench_function(format!("encode {name}"), |b| b.iter(|| encode(black_box(old), black_box(new)).unwrap()));
        g.bench_function(format!("decode {name}"), |b| {
            b.iter(|| decode(black_box(old), black_box(&delta), new.len() as u64).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
