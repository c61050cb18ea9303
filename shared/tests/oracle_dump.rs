//! Writes cases for the independent Python oracles (tests/oracle/check_sklearn.py): LDA held-out
//! scores and Ledoit-Wolf shrinkage (scikit-learn), BH and Holm (statsmodels).
//! The directory is $PG_ORACLE_DIR (default: <tmp>/pg-oracle).

use shared::coords::bundle_coords;
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
