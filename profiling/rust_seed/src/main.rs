//! Rebuild of the Rust reference for the seed benchmark
//! (/work/shared/reference/seed-benchmark.md), so it can be timed in the same
//! session as the Python/Numba code instead of against stale fixed figures.
//!
//! Usage: rust_seed SIZE EPOCHS [--max-steps N] [--runs R] [--warm-up W]
//! Prints one line per timed run: `<seconds> <final confidence, 9 decimals>`.

use std::hint::black_box;
use std::process::exit;
use std::time::Instant;

/// One observation, 16 bytes, array-of-structs as a plain Rust port would store it.
#[derive(Clone, Copy)]
struct Obs {
    pos: [f32; 3],
    feature: f32,
}

/// Data: t = 0.1 * i in f32; pos = (sin t, cos t, 0.5 t); feature = sin t + cos t.
/// Train and eval loaders yield this same sequence, so one Vec serves both.
fn build_data(size: usize) -> Vec<Obs> {
    (0..size)
        .map(|i| {
            let t = 0.1f32 * i as f32;
            let (s, c) = (t.sin(), t.cos());
            Obs { pos: [s, c, 0.5 * t], feature: s + c }
        })
        .collect()
}

/// Mean over the store of 1 / (1 + euclidean distance + |feature diff|).
/// A plain sequential f32 sum: without -ffast-math rustc keeps the additions in
/// order, so this is not vectorised, as in the reference (~1.6 ns/comparison).
fn similarity(store: &[Obs], o: &Obs) -> f32 {
    let mut sum = 0.0f32;
    for s in store {
        let dx = s.pos[0] - o.pos[0];
        let dy = s.pos[1] - o.pos[1];
        let dz = s.pos[2] - o.pos[2];
        let dist = (dx * dx + dy * dy + dz * dz).sqrt();
        sum += 1.0 / (1.0 + dist + (s.feature - o.feature).abs());
    }
    sum / store.len() as f32
}

/// One whole experiment from an empty store: `epochs` training episodes, then
/// `epochs` evaluation episodes, one episode per epoch, never done early.
/// Returns the confidence at the end of the last evaluation episode.
fn experiment(data: &[Obs], epochs: usize, max_steps: usize) -> f32 {
    // The store is never cleared between epochs: it holds size x epochs entries.
    let mut store: Vec<Obs> = Vec::new();
    for _ in 0..epochs {
        for o in data.iter().take(max_steps) {
            store.push(*o);
        }
    }
    let mut confidence = 0.0f32;
    for _ in 0..epochs {
        confidence = 0.0; // reset at the start of each episode
        for o in data.iter().take(max_steps) {
            confidence = (confidence + similarity(&store, o)) / 2.0;
        }
    }
    confidence
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!("usage: rust_seed SIZE EPOCHS [--max-steps N] [--runs R] [--warm-up W]");
    exit(2);
}

fn parse(name: &str, v: Option<String>) -> usize {
    match v.as_deref().map(str::parse::<usize>) {
        Some(Ok(n)) => n,
        Some(Err(_)) => usage(&format!("{name}: not a non-negative integer")),
        None => usage(&format!("{name}: missing value")),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut pos = Vec::new();
    let (mut max_steps, mut runs, mut warm_up) = (10_000usize, 1usize, 0usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-steps" => max_steps = parse(&a, args.next()),
            "--runs" => runs = parse(&a, args.next()),
            "--warm-up" => warm_up = parse(&a, args.next()),
            _ if a.starts_with("--") => usage(&format!("unknown option {a}")),
            _ => pos.push(a),
        }
    }
    if pos.len() != 2 {
        usage("expected SIZE and EPOCHS");
    }
    let size = parse("SIZE", Some(pos[0].clone()));
    let epochs = parse("EPOCHS", Some(pos[1].clone()));
    if size == 0 || epochs == 0 || max_steps == 0 {
        usage("SIZE, EPOCHS and --max-steps must be > 0");
    }

    // Data is built before timing: only the experiment is timed.
    let data = build_data(size);
    for _ in 0..warm_up {
        black_box(experiment(black_box(&data), black_box(epochs), black_box(max_steps)));
    }
    for _ in 0..runs {
        let start = Instant::now();
        // black_box on inputs and result: each run must redo all the work.
        let conf = black_box(experiment(black_box(&data), black_box(epochs), black_box(max_steps)));
        let secs = start.elapsed().as_secs_f64();
        println!("{secs:.9} {conf:.9}");
    }
}
