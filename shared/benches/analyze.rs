//! Benchmark (prints figures; not a timed test):
//! 1. the full `analyze` of a synthetic study of the default size (3 checkpoints x 2 methods x
//!    5 layers x 12 personas x 240 questions x 3584 dims, N = 10,000 permutations);
//! 2. one M3 cell's label-permutation test, timed here and written out so that
//!    `bench/m3_vs_sklearn.py` times scikit-learn's `permutation_test_score` with the same LDA
//!    and folds on the same data, in the same run (`bench/run.sh` prints the ratio).
//! Environment: PG_BENCH_QUESTIONS, PG_BENCH_HIDDEN, PG_BENCH_PERMS, PG_BENCH_DIR.

use shared::analysis::{analyze, AnalysisConfig};
use shared::coords::bundle_coords;
use shared::lda::{question_fold, Lda, Samples};
use shared::synth::{synth_bundle, SynthSpec};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let q = env("PG_BENCH_QUESTIONS", 240);
    let h = env("PG_BENCH_HIDDEN", 3584);
    let perms = env("PG_BENCH_PERMS", 10_000);
    let dir = std::env::var("PG_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().join("pg-bench").display().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let spec = SynthSpec {
        questions: q,
        hidden: h,
        compression: 0.05,
        rotation: 0.05,
        separability_loss: 0.1,
        ..SynthSpec::default()
    };
    let t = Instant::now();
    let b = synth_bundle(&spec);
    println!("synthetic study: 3 checkpoints x 2 methods x 5 layers x 12 personas x {q} questions x {h} dims ({:.1} s to generate)", t.elapsed().as_secs_f64());
    let cfg = AnalysisConfig {
        permutations: perms,
        ..AnalysisConfig::default()
    };
    let t = Instant::now();
    let coords = bundle_coords(
        &b,
        shared::coords::CoordsMode::Exact {
            lda_components: cfg.components,
        },
        cfg.seed,
    )
    .unwrap();
    let t_coords = t.elapsed().as_secs_f64();
    println!(
        "analysis coordinates (full width for M1/M2, randomized PCA k = {} for M3): {t_coords:.1} s",
        cfg.components
    );
    let t = Instant::now();
    let compact = shared::coords::compact_bundle(&b, cfg.components, false, cfg.seed)
        .unwrap()
        .encode()
        .unwrap();
    let retained: Vec<f64> = coords
        .iter()
        .map(|c| 100.0 * c.retained_fraction())
        .collect();
    println!(
        "compact form: {:.1} MB (goal <= 48 MB; full bundle {:.0} MB) in {:.1} s; within-persona variance retained {:.1}-{:.1}%",
        compact.len() as f64 / 1e6,
        b.encode().unwrap().len() as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        retained.iter().cloned().fold(f64::INFINITY, f64::min),
        retained.iter().cloned().fold(0.0, f64::max)
    );
    drop(compact);
    let only_m3 = std::env::var("PG_BENCH_ONLY_M3").is_ok();
    let t = Instant::now();
    let report = if only_m3 {
        None
    } else {
        Some(analyze(&b, &cfg, &|_| {}).unwrap())
    };
    let t_full = t.elapsed().as_secs_f64();
    if let Some(report) = report {
        println!(
        "full analyze (coordinates included), N = {perms} permutations, {} bootstrap, {} M3 label permutations: {t_full:.1} s  ({} rows, goal < 120 s)",
        cfg.bootstrap,
        cfg.m3_label_permutations,
        report.rows.len()
    );
    }

    // One M3 cell: base checkpoint, first method and layer.
    let c = &coords[0];
    let s = Samples::from_coords(c, 0);
    let m3_perms = env("PG_BENCH_M3_PERMS", 1000);
    let t = Instant::now();
    let lda = Lda::new(s.clone(), 5);
    let obs = lda.observed();
    let null = lda.label_permutation_null(1, "bench", 0..m3_perms);
    let t_m3 = t.elapsed().as_secs_f64();
    let p = shared::stats::permutation_p_greater(
        obs.accuracy,
        &null.iter().map(|x| x[0]).collect::<Vec<_>>(),
        shared::geometry::tie_tolerance(true, obs.accuracy),
    );
    println!("M3 cell ({} samples x {} dims, 5 folds): {m3_perms} label permutations in {t_m3:.2} s = {:.3} ms/permutation (accuracy {:.4}, p {p:.4})", s.len(), s.k, 1e3 * t_m3 / m3_perms as f64, obs.accuracy);
    let case = serde_json::json!({
        "k": s.k, "x": s.x, "labels": s.persona, "groups": s.question,
        "folds": s.question.iter().map(|&q| question_fold(q, 5)).collect::<Vec<_>>(),
        "rust_seconds_per_permutation": t_m3 / m3_perms as f64,
        "rust_accuracy": obs.accuracy,
    });
    std::fs::write(
        format!("{dir}/m3_cell.json"),
        serde_json::to_vec(&case).unwrap(),
    )
    .unwrap();
    println!("wrote {dir}/m3_cell.json");
}
