//! End-to-end on the real model with steering controls (the default study until issue #15) at a tiny size
//! (studies/e2e-tiny.toml: SmolLM2-135M, 4 personas x 8 questions, 16 tokens):
//! extract -> analyze -> compact, then the effects known in advance:
//! - steering adds exactly alpha x unit(direction) to block 15's output, so under Method A at
//!   layer 15 every persona's projection on the EM axis (the assistant's shift) moves by alpha = 60,
//!   for both controls;
//! - the positive control rotates the personas toward the steering axis (villain - assistant of
//!   base): the mean signed cosine of the centroids with that axis rises by far more than under
//!   the negative control (random direction of the same norm).
//!
//! The tool's M2 (mean |cos| with the checkpoint's own EM axis) is reported, not asserted: under a
//! constant shift it responds to a direction initially orthogonal to the personas (the random one)
//! more than to one they were anti-aligned with; docs/default-study.md gives the numbers.
//! With PG_E2E_DIR set, the compact bundle is written there for the browser test (explorer decode).

use extractor::io_util::{read_bundle, write_bundle};
use extractor::study::run_study;
use shared::analysis::{analyze, AnalysisConfig, Family};
use shared::bundle::Method;
use shared::coords::{bundle_coords, compact_bundle};
use shared::linalg::cosine as cos;
use std::path::PathBuf;

mod common;

#[test]
fn default_study_controls_end_to_end() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(_model) = common::smollm2() else {
        return;
    };
    let dir = match std::env::var_os("PG_E2E_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("pg-e2e-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let full = dir.join("e2e-tiny.pgb");
    let _ = std::fs::remove_file(&full);
    let _ = std::fs::remove_dir_all(dir.join("e2e-tiny.pgb.parts"));
    run_study(&root.join("studies/e2e-tiny.toml"), Some(&full), false).unwrap();
    let bundle = read_bundle(&full).unwrap();
    assert_eq!(bundle.n_personas(), 4);
    assert_eq!(bundle.n_questions(), 8);

    let cfg = AnalysisConfig {
        permutations: 500,
        bootstrap: 200,
        m3_label_permutations: 50,
        ..AnalysisConfig::default()
    };
    let report = analyze(&bundle, &cfg, &|_| {}).unwrap();
    let compact = compact_bundle(&bundle, 256, false, 0).unwrap();
    write_bundle(&dir.join("e2e-tiny.compact.pgb"), &compact).unwrap();
    let compact = read_bundle(&dir.join("e2e-tiny.compact.pgb")).unwrap();

    // (1) Exact steering: Δ projection on the EM axis = alpha at the steered layer (Method A).
    for post in ["em", "benign"] {
        let pv = report
            .pair_views
            .iter()
            .find(|v| {
                v.family != Family::EmVsBenign
                    && v.post == post
                    && v.method == Method::A
                    && v.layer == 15
            })
            .unwrap();
        for (p, (a, b)) in pv
            .geometry
            .proj_axis_pre
            .iter()
            .zip(&pv.geometry.proj_axis_post)
            .enumerate()
        {
            assert!(
                ((b - a) - 60.0).abs() < 0.6,
                "{post}: persona {p} moved by {} along the EM axis, expected 60",
                b - a
            );
        }
    }

    // (2) Rotation toward the steering axis: positive control >> negative control. Computed on
    // the compact bundle, the explorer's input (coordinates are exact for centroids).
    let coords = bundle_coords(
        &compact,
        shared::coords::CoordsMode::Basis { components: 256 },
        0,
    )
    .unwrap();
    let c = coords
        .iter()
        .find(|c| c.method == Method::A && c.layer == 15)
        .unwrap();
    let idx = |name: &str| {
        compact
            .personas
            .iter()
            .position(|p| p.name == name)
            .unwrap()
    };
    let ck = |name: &str| {
        compact
            .checkpoints
            .iter()
            .position(|c| c.name == name)
            .unwrap()
    };
    let (v, a) = (idx("villain"), idx("assistant"));
    let axis: Vec<f64> = c
        .centroid(ck("base"), v)
        .iter()
        .zip(c.centroid(ck("base"), a))
        .map(|(x, y)| x - y)
        .collect();
    let mean_cos = |k: usize| {
        (0..c.n_personas)
            .map(|p| cos(c.centroid(k, p), &axis))
            .sum::<f64>()
            / c.n_personas as f64
    };
    let base = mean_cos(ck("base"));
    let (d_em, d_benign) = (mean_cos(ck("em")) - base, mean_cos(ck("benign")) - base);
    eprintln!("Δ mean cos with the steering axis: em {d_em:.4}, benign {d_benign:.4}");
    assert!(d_em > 0.2, "positive control rotation {d_em}");
    assert!(
        d_em > 3.0 * d_benign.abs(),
        "positive {d_em} vs negative {d_benign}"
    );
    // The EM axis of the positive control is the planted direction; the negative control's is not.
    let em_axis = |k: usize| -> Vec<f64> {
        c.centroid(k, a)
            .iter()
            .zip(c.centroid(ck("base"), a))
            .map(|(x, y)| x - y)
            .collect()
    };
    assert!(cos(&em_axis(ck("em")), &axis) > 0.99);
    assert!(cos(&em_axis(ck("benign")), &axis).abs() < 0.3);

    // The tool's M2 for both controls, reported for the record.
    for r in report
        .rows
        .iter()
        .filter(|r| r.metric == "M2_em_axis" && r.method == Method::A)
    {
        eprintln!(
            "M2_em_axis A/{} {} -> {}: Δ {:.4} (p {:.4})",
            r.layer, r.pre, r.post, r.delta, r.p
        );
    }
}
