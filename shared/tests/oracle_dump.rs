//! Writes cases for the independent Python oracles (tests/oracle/check_sklearn.py): LDA held-out
//! scores and Ledoit-Wolf shrinkage (scikit-learn), BH and Holm (statsmodels).
//! The directory is $PG_ORACLE_DIR (default: <tmp>/pg-oracle).

use shared::coords::bundle_coords;
use shared::lda::per_class::evaluate_per_class_lda;
use shared::lda::{question_fold, Lda, Samples};
use shared::stats::{bh_adjust, holm_adjust};
use shared::synth::{synth_bundle, SynthSpec};

fn oracle_dir() -> std::path::PathBuf {
    let d = std::env::var_os("PG_ORACLE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("pg-oracle"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn dump_lda_cases() {
    let mut cases = Vec::new();
    for (i, (p, q, h, noise, k)) in [
        (6usize, 30usize, 20usize, 1.0, 20usize),
        (12, 40, 64, 2.0, 48),
        (4, 25, 8, 3.0, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let b = synth_bundle(&SynthSpec {
            personas: p,
            questions: q,
            hidden: h,
            layers: vec![2],
            noise,
            separability_loss: 0.5,
            seed: 40 + i as u64,
            ..SynthSpec::default()
        });
        let coords =
            bundle_coords(&b, shared::coords::CoordsMode::Basis { components: k }, 0).unwrap();
        for c in &coords {
            for ck in [0usize, 1] {
                let s = Samples::from_coords(c, ck);
                let lda = Lda::new(s.clone(), 5);
                let e = lda.observed();
                // One permuted labelling too, to check the fast relabelling path.
                let perm = lda.permuted_labels(7, "oracle", 3);
                let ep = lda.evaluate(&perm);
                cases.push(serde_json::json!({
                    "k": s.k,
                    "x": s.x,
                    "labels": s.persona,
                    "questions": s.question,
                    "folds": s.question.iter().map(|&q| question_fold(q, 5)).collect::<Vec<_>>(),
                    "accuracy": e.accuracy,
                    "log_posterior": e.log_posterior,
                    "shrinkage": e.shrinkage,
                    "perm_labels": perm,
                    "perm_accuracy": ep.accuracy,
                    "perm_log_posterior": ep.log_posterior,
                }));
            }
        }
    }
    let path = oracle_dir().join("lda_cases.json");
    std::fs::write(&path, serde_json::to_vec(&cases).unwrap()).unwrap();
    assert!(path.exists());
}

/// M3's estimator against scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr",
/// shrinkage="auto")`: full activations with more features than training rows (the Woodbury
/// path, as at 3,584 dims), few features (the direct path), power-law noise, and a constant
/// feature (StandardScaler's scale-1 rule).
#[test]
fn dump_per_class_lda_cases() {
    let mut cases = Vec::new();
    let case = |s: &Samples, tag: &str| {
        let e = evaluate_per_class_lda(s, 5);
        serde_json::json!({
            "tag": tag,
            "k": s.k,
            "x": s.x,
            "labels": s.persona,
            "folds": s.question.iter().map(|&q| question_fold(q, 5)).collect::<Vec<_>>(),
            "accuracy": e.accuracy,
            "log_posterior": e.log_posterior,
        })
    };
    for (i, (p, q, h, decay)) in [(6usize, 30usize, 200usize, 1.0), (4, 20, 90, 0.0)]
        .into_iter()
        .enumerate()
    {
        let b = synth_bundle(&SynthSpec {
            personas: p,
            questions: q,
            hidden: h,
            layers: vec![2],
            methods: vec![shared::bundle::Method::A],
            noise: 3.0,
            spectrum_decay: decay,
            separability_loss: 0.5,
            seed: 60 + i as u64,
            ..SynthSpec::default()
        });
        let coords = bundle_coords(
            &b,
            shared::coords::CoordsMode::Exact { lda_components: 8 },
            0,
        )
        .unwrap();
        let full = Samples::full_activations(&coords[0], 1).expect("exact coordinates");
        assert!(full.k > full.len(), "the Woodbury path needs d > n");
        cases.push(case(&full, "full activations, d > n"));
    }
    let b = synth_bundle(&SynthSpec {
        personas: 12,
        questions: 40,
        hidden: 64,
        layers: vec![2],
        methods: vec![shared::bundle::Method::A],
        noise: 2.0,
        spectrum_decay: 1.5,
        seed: 70,
        ..SynthSpec::default()
    });
    let coords =
        bundle_coords(&b, shared::coords::CoordsMode::Basis { components: 24 }, 0).unwrap();
    let mut s = Samples::from_coords(&coords[0], 0);
    cases.push(case(&s, "24 components, d < n"));
    write_logistic_cases(&s);
    // Append a constant feature.
    let k = s.k;
    let rows: Vec<f64> =
        s.x.chunks(k)
            .flat_map(|r| r.iter().copied().chain([2.5]))
            .collect();
    s.x = rows;
    s.k = k + 1;
    cases.push(case(&s, "with a constant feature"));
    std::fs::write(
        oracle_dir().join("per_class_lda_cases.json"),
        serde_json::to_vec(&cases).unwrap(),
    )
    .unwrap();
}

/// The logistic probe against scikit-learn's `LogisticRegression(C=1)` on the same samples and
/// folds: the 24-component samples, and the same scaled by 30 (near-separable: the weak
/// penalty lets the weights grow, the hard case for a solver).
fn write_logistic_cases(s: &Samples) {
    use shared::lda::logistic::evaluate_logistic_probe;
    let mut cases = Vec::new();
    for (scale, tag) in [(1.0, "24 components"), (30.0, "24 components x 30")] {
        let mut t = s.clone();
        t.x.iter_mut().for_each(|v| *v *= scale);
        let e = evaluate_logistic_probe(&t, 5);
        cases.push(serde_json::json!({
            "tag": tag,
            "k": t.k,
            "x": t.x,
            "labels": t.persona,
            "folds": t.question.iter().map(|&q| question_fold(q, 5)).collect::<Vec<_>>(),
            "accuracy": e.accuracy,
            "log_posterior": e.log_posterior,
        }));
    }
    std::fs::write(
        oracle_dir().join("logistic_cases.json"),
        serde_json::to_vec(&cases).unwrap(),
    )
    .unwrap();
}

#[test]
fn dump_correction_cases() {
    let mut rng = shared::rng::Rng::new(3);
    let mut cases = Vec::new();
    for n in [1usize, 2, 5, 17, 60, 300] {
        let mut p: Vec<f64> = (0..n).map(|_| rng.next_f64().powi(3)).collect();
        if n > 4 {
            p[1] = p[0]; // ties
            p[2] = 1.0;
        }
        cases.push(serde_json::json!({"p": p, "bh": bh_adjust(&p), "holm": holm_adjust(&p)}));
    }
    std::fs::write(
        oracle_dir().join("corrections.json"),
        serde_json::to_vec(&cases).unwrap(),
    )
    .unwrap();
}
