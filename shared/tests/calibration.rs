//! Null calibration with truncation: studies with no planted effect, anisotropic noise (a
//! power-law within-persona spectrum), hidden size larger than the analysis truncation K. Every
//! reported test must reject at α = 0.05 in [2%, 8%] of the studies, on the CLI path (full
//! bundle, exact draws) at every K. The page's path (compact bundle, K stored components) is
//! measured and printed; its p-values are labelled approximate (see ARCHITECTURE.md).
//!
//! Also the known-answer transforms of M1/M2 (pure shift, contraction, global rescaling).

use shared::analysis::{analyze, AnalysisConfig, Family, Report};
use shared::bundle::{Bundle, Method};
use shared::synth::{synth_bundle, SynthSpec};

fn quiet(_: &str) {}

const METRICS: [&str; 7] = shared::analysis::ALL_METRICS;

fn null_study(seed: u64) -> Bundle {
    synth_bundle(&SynthSpec {
        personas: 12,
        questions: 60,
        hidden: 256,
        layers: vec![20],
        methods: vec![Method::A],
        // Noise 10 keeps M3 unsaturated at full width (held-out accuracy ~0.7); at 2.5 every
        // persona is perfectly separable, M3's Δ is identically 0 and its test cannot reject.
        noise: 10.0,
        spectrum_decay: 1.0,
        seed,
        ..SynthSpec::default()
    })
}

fn cfg(k: usize, seed: u64) -> AnalysisConfig {
    AnalysisConfig {
        permutations: 199,
        m3_label_permutations: 1,
        bootstrap: 1,
        components: k,
        seed,
        ..AnalysisConfig::default()
    }
}

/// Which tests reject at 0.05 (the pre-registered p and the two-sided p of every metric).
fn rejections(r: &Report) -> Vec<bool> {
    METRICS
        .iter()
        .flat_map(|m| {
            let row = r
                .rows
                .iter()
                .find(|x| x.family == Family::EmVsBase && x.metric == *m)
                .expect("row");
            [row.p <= 0.05, row.p_two_sided <= 0.05]
        })
        .collect()
}

fn rates(rej: &[Vec<bool>]) -> Vec<f64> {
    (0..rej[0].len())
        .map(|i| rej.iter().filter(|r| r[i]).count() as f64 / rej.len() as f64)
        .collect()
}

fn print_rates(what: &str, rates: &[f64]) {
    for (i, m) in METRICS.iter().enumerate() {
        eprintln!(
            "{what} {m}: p {:.3}  two-sided {:.3}",
            rates[2 * i],
            rates[2 * i + 1]
        );
    }
}

/// 300 null studies on the CLI path (PG_CAL_N and PG_CAL_SEED0 override the count and the
/// first seed): every test within [0.02, 0.08], and independent of the truncation K.
#[test]
fn cli_null_is_calibrated_at_any_truncation() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n_studies, seed0) = (env("PG_CAL_N", 300), env("PG_CAL_SEED0", 20_000));
    let k = 16;
    let rej = shared::parallel::par_map(n_studies, |s| {
        let b = null_study((seed0 + s) as u64);
        rejections(&analyze(&b, &cfg(k, s as u64), &quiet).unwrap())
    });
    let rates = rates(&rej);
    print_rates(&format!("CLI K={k}"), &rates);
    for (i, r) in rates.iter().enumerate() {
        // M3 is fitted on the full activations (256 dims) at every K. Its per-question
        // sign flip is slightly liberal (1,000 studies, PG_CAL_N=1000 PG_CAL_SEED0=50000:
        // 0.063-0.075; see PairedScores), inside the band but above 0.05.
        assert!(
            (0.02..=0.08).contains(r),
            "K={k} {} ({}): rejection rate {r}",
            METRICS[i / 2],
            if i % 2 == 0 { "p" } else { "two-sided" }
        );
    }
    // No reported test depends on K on this path (M1/M2 draws are full-width, M3 is fitted on
    // the activations; K only sets the above-chance test's and the probe's features): the
    // same studies at K = 64 give identical p-values, so the rates above hold at any K.
    for s in 0..20 {
        let b = null_study((seed0 + s) as u64);
        let r16 = analyze(&b, &cfg(16, s as u64), &quiet).unwrap();
        let r64 = analyze(&b, &cfg(64, s as u64), &quiet).unwrap();
        for m in METRICS {
            let (a, c) = (row(&r16, m), row(&r64, m));
            assert_eq!(
                (a.delta, a.p, a.p_two_sided),
                (c.delta, c.p, c.p_two_sided),
                "{m}"
            );
        }
    }
}

/// The logistic probe's rows (`--logistic-probe`, on the K residual PCs): null studies at
/// K = 16, both its tests within [0.02, 0.08]. 120 studies in the suite (each fits 15 probes,
/// ~1.3 s); 200 studies measured 0.035/0.050 (accuracy) and 0.045/0.035 (log posterior).
#[test]
fn probe_null_is_calibrated() {
    let n_studies = 120;
    let rej = shared::parallel::par_map(n_studies, |s| {
        let b = null_study(30_000 + s as u64);
        let r = analyze(
            &b,
            &AnalysisConfig {
                logistic_probe: true,
                ..cfg(16, s as u64)
            },
            &quiet,
        )
        .unwrap();
        shared::analysis::PROBE_METRICS
            .iter()
            .flat_map(|m| {
                let x = row(&r, m);
                [x.p <= 0.05, x.p_two_sided <= 0.05]
            })
            .collect::<Vec<bool>>()
    });
    let rates = rates(&rej);
    for (i, m) in shared::analysis::PROBE_METRICS.iter().enumerate() {
        eprintln!(
            "probe K=16 {m}: p {:.3}  two-sided {:.3}",
            rates[2 * i],
            rates[2 * i + 1]
        );
        for r in &rates[2 * i..2 * i + 2] {
            assert!((0.02..=0.08).contains(r), "{m}: rejection rate {r}");
        }
    }
}

/// The page's path (compact bundle with K components): measured, printed, and held to a looser
/// bound (at most 0.2, where the truncated draws of the previous analysis reached 0.53 for
/// M1_raw and 1.0 for M1_centred); the page labels these p-values approximate.
#[test]
fn compact_null_rejection_is_bounded() {
    let n_studies = 100;
    let k = 16;
    let rej = shared::parallel::par_map(n_studies, |s| {
        let b = null_study(9000 + s as u64);
        let c = shared::coords::compact_bundle(&b, k, false, s as u64).unwrap();
        rejections(&analyze(&c, &cfg(k, s as u64), &quiet).unwrap())
    });
    let rates = rates(&rej);
    print_rates(&format!("compact K={k}"), &rates);
    for (i, r) in rates.iter().enumerate() {
        assert!(
            *r <= 0.2,
            "compact K={k} {}: rejection rate {r}",
            METRICS[i / 2]
        );
    }
}

fn row<'a>(r: &'a Report, metric: &str) -> &'a shared::analysis::Row {
    r.rows
        .iter()
        .find(|x| x.family == Family::EmVsBase && x.metric == metric)
        .expect("row")
}

/// Replaces the `em` checkpoint's activations by a transform of base's.
fn transformed(b: &Bundle, f: impl Fn(&[f32], &[f32], &[f32]) -> Vec<f32>) -> Bundle {
    let mut out = b.clone();
    let (p, q, h) = (b.n_personas(), b.n_questions(), b.hidden_size as usize);
    for &m in &b.methods {
        for &l in &b.layers {
            let base = b.cell(0, m, l).unwrap();
            let x = base.per_question.to_f32();
            let c = base.centroids.to_f32();
            let mean: Vec<f32> = (0..h)
                .map(|j| (0..p).map(|i| c[i * h + j]).sum::<f32>() / p as f32)
                .collect();
            let mut nx = vec![0.0f32; p * q * h];
            let mut nc = vec![0.0f32; p * h];
            for i in 0..p {
                let ci = &c[i * h..(i + 1) * h];
                let mut acc = vec![0.0f64; h];
                let mut n = 0;
                for qi in 0..q {
                    let o = (i * q + qi) * h;
                    let y = f(&x[o..o + h], ci, &mean);
                    nx[o..o + h].copy_from_slice(&y);
                    if base.valid[i * q + qi] {
                        n += 1;
                        for j in 0..h {
                            acc[j] += y[j] as f64;
                        }
                    }
                }
                for j in 0..h {
                    nc[i * h + j] = (acc[j] / n as f64) as f32;
                }
            }
            let idx = out.cell_index(1, m, l).unwrap();
            out.cells[idx].per_question = shared::bundle::Blob::from_f32(&nx);
            out.cells[idx].centroids = shared::bundle::Blob::from_f32(&nc);
            out.cells[idx].valid = base.valid.clone();
        }
    }
    out
}

#[test]
fn known_answers_shift_contraction_rescaling() {
    let b = synth_bundle(&SynthSpec {
        personas: 6,
        questions: 40,
        hidden: 64,
        layers: vec![3],
        methods: vec![Method::A],
        spectrum_decay: 1.0,
        seed: 3,
        ..SynthSpec::default()
    });
    let c = AnalysisConfig {
        permutations: 49,
        m3_label_permutations: 1,
        bootstrap: 20,
        components: 16,
        ..AnalysisConfig::default()
    };
    let h = b.hidden_size as usize;
    // Pure translation by a large vector: M1 raw rises, the separation index does not move,
    // and a Δ of zero by construction gets p = 1.
    let t: Vec<f32> = (0..h)
        .map(|j| if j % 3 == 0 { 8.0 } else { -2.0 })
        .collect();
    let shifted = transformed(&b, |x, _, _| x.iter().zip(&t).map(|(a, b)| a + b).collect());
    let r = analyze(&shifted, &c, &quiet).unwrap();
    assert!(
        row(&r, "M1_raw").delta > 0.01,
        "{}",
        row(&r, "M1_raw").delta
    );
    let sep = row(&r, "M1_separation");
    assert!(sep.delta.abs() < 1e-9 * sep.pre_value, "{}", sep.delta);
    assert_eq!(sep.p, 1.0);
    // A shared shift: every persona moves along the same direction as the assistant: M2 ≈ 1.
    assert!(
        row(&r, "M2_em_axis").delta > 0.999,
        "{}",
        row(&r, "M2_em_axis").delta
    );
    // Contraction of the centroids toward their mean by s (questions move with them): the
    // index scales by s.
    let s = 0.6f32;
    let contracted = transformed(&b, |x, ci, m| {
        x.iter()
            .zip(ci)
            .zip(m)
            .map(|((xv, cv), mv)| xv - (1.0 - s) * (cv - mv))
            .collect()
    });
    let r = analyze(&contracted, &c, &quiet).unwrap();
    let sep = row(&r, "M1_separation");
    assert!(
        (sep.post_value / sep.pre_value - s as f64).abs() < 1e-5,
        "{} {}",
        sep.post_value,
        sep.pre_value
    );
    assert!(row(&r, "M1_raw").delta > 0.0);
    // Global rescaling: every scale-free statistic is unchanged.
    let scaled = transformed(&b, |x, _, _| x.iter().map(|v| 2.5 * v).collect());
    let r = analyze(&scaled, &c, &quiet).unwrap();
    for m in ["M1_raw", "M1_centred", "M1_separation", "M3_accuracy"] {
        assert!(row(&r, m).delta.abs() < 1e-6, "{m}: {}", row(&r, m).delta);
        assert_eq!(row(&r, m).p, 1.0, "{m}");
    }
}

#[test]
fn m2_is_zero_for_orthogonal_moves_and_near_zero_for_random_moves() {
    use shared::geometry::pair_statistics;
    // Independent random persona shifts in 2,000 dimensions: M2 ≈ 0.
    let (p, d) = (12usize, 2000usize);
    let mut rng = shared::rng::Rng::new(11);
    let pre: Vec<Vec<f64>> = (0..p)
        .map(|_| (0..d).map(|_| rng.normal()).collect())
        .collect();
    let post: Vec<Vec<f64>> = pre
        .iter()
        .map(|r| r.iter().map(|x| x + 0.3 * rng.normal()).collect())
        .collect();
    let rows: Vec<&[f64]> = pre.iter().chain(&post).map(|r| r.as_slice()).collect();
    let g = shared::geometry::gram_of_rows(&rows);
    let msq = vec![d as f64 * 2.0; p];
    let (_, s) = pair_statistics(&g, &msq, &msq, p, p - 1);
    assert!(s[3].abs() < 0.1, "{}", s[3]);
}

#[test]
fn null_draws_equal_brute_force_swaps() {
    use shared::geometry::{gram_of_rows, pair_statistics, PairGeometry};
    let b = null_study(77);
    let coords = shared::coords::bundle_coords(
        &b,
        shared::coords::CoordsMode::Exact { lda_components: 8 },
        0,
    )
    .unwrap();
    let c = &coords[0];
    let g = PairGeometry::new(c, 0, 1, c.n_personas - 1, 5);
    let null = g.null_deltas(0..5);
    let (p, q, h) = (c.n_personas, c.n_questions, c.dim);
    let x = |ck: usize| b.cell(ck, Method::A, 20).unwrap().per_question.to_f32();
    let (x0, x1) = (x(0), x(1));
    for (i, nd) in null.iter().enumerate() {
        let mut rng = shared::rng::Rng::stream(5, "geometry/A/L20/0->1", i as u64);
        let sw: Vec<bool> = (0..q).map(|_| rng.coin()).collect();
        let mut cents = vec![vec![0.0f64; h]; 2 * p];
        let mut msq = vec![0.0f64; 2 * p];
        for pi in 0..p {
            for qi in 0..q {
                let o = (pi * q + qi) * h;
                let (a, bb) = if sw[qi] { (&x1, &x0) } else { (&x0, &x1) };
                for j in 0..h {
                    cents[pi][j] += a[o + j] as f64 / q as f64;
                    cents[p + pi][j] += bb[o + j] as f64 / q as f64;
                }
                msq[pi] += a[o..o + h].iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / q as f64;
                msq[p + pi] += bb[o..o + h]
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    / q as f64;
            }
        }
        let rows: Vec<&[f64]> = cents.iter().map(|r| r.as_slice()).collect();
        let (pre, post) = pair_statistics(&gram_of_rows(&rows), &msq[..p], &msq[p..], p, p - 1);
        for s in 0..5 {
            let want = post[s] - pre[s];
            // The draws add f32-stored residual differences: 1e-6 of the statistics' scale.
            assert!(
                (nd[s] - want).abs() < 1e-6,
                "draw {i} stat {s}: {} vs {want}",
                nd[s]
            );
        }
    }
}

#[test]
fn arm_permutation_test_known_answers() {
    use shared::analysis::arm_permutation_test;
    // 6 choose 3 = 20 labellings; the observed split is the most extreme one in its direction,
    // and its complement is equally extreme in the other.
    let (p1, p2, n) = arm_permutation_test(&[3.0, 4.0, 5.0], &[0.0, 1.0, 2.0], 1.0, 1e-12).unwrap();
    assert_eq!(n, 20);
    assert!(
        (p1 - 0.05).abs() < 1e-15 && (p2 - 0.10).abs() < 1e-15,
        "{p1} {p2}"
    );
    // Hypothesised direction down: the same data is the least favourable.
    let (p1, _, _) = arm_permutation_test(&[3.0, 4.0, 5.0], &[0.0, 1.0, 2.0], -1.0, 1e-12).unwrap();
    assert!((p1 - 1.0).abs() < 1e-15);
    // All equal: every labelling ties, p = 1.
    let (p1, p2, _) = arm_permutation_test(&[1.0, 1.0], &[1.0, 1.0], 1.0, 1e-12).unwrap();
    assert_eq!((p1, p2), (1.0, 1.0));
}

/// A small one-layer study whose checkpoints stand in for one training seed of each arm.
fn seed_study_spec(compression: f64, benign_scale: f64, seed: u64) -> SynthSpec {
    SynthSpec {
        personas: 4,
        questions: 20,
        hidden: 16,
        layers: vec![1],
        methods: vec![Method::A],
        compression,
        benign_scale,
        seed,
        ..SynthSpec::default()
    }
}

/// A study with two EM and two benign checkpoints (training seeds) gets adapter-level rows.
#[test]
fn adapter_level_rows_with_two_seeds_per_arm() {
    use shared::bundle::{Checkpoint, Role};
    let spec = |compression, benign_scale| seed_study_spec(compression, benign_scale, 1);
    let mut b = synth_bundle(&spec(0.3, 0.25));
    // A second "training seed" of each arm: the same study with slightly different effects.
    let other = synth_bundle(&spec(0.35, 0.3));
    for (src_ck, name, role) in [(1usize, "em_s2", Role::Em), (2, "benign_s2", Role::Benign)] {
        let new_ck = b.checkpoints.len() as u32;
        b.checkpoints.push(Checkpoint {
            name: name.into(),
            role,
            label: name.into(),
            provenance: vec![],
        });
        let mut cell = other.cell(src_ck, Method::A, 1).unwrap().clone();
        cell.checkpoint = new_ck;
        b.cells.push(cell);
    }
    b.responses.clear();
    let b = Bundle::decode(&b.encode().unwrap()).unwrap();
    let r = analyze(&b, &cfg(8, 0), &quiet).unwrap();
    assert_eq!(r.adapter_level.len(), 5);
    let row = r
        .adapter_level
        .iter()
        .find(|x| x.metric == "M1_raw")
        .unwrap();
    assert_eq!(row.n_labellings, 6);
    // Both EM seeds compress more than both benign seeds: the most extreme of 6 labellings.
    assert!(row.difference > 0.0);
    assert!((row.p_one_sided - 1.0 / 6.0).abs() < 1e-12, "{row:?}");
}

/// Two control arms (a benign twin and a null finetune, told apart by the `arm` provenance
/// entry): the EM arm is tested against each and against both pooled.
#[test]
fn adapter_level_rows_per_control_arm() {
    use shared::bundle::{Checkpoint, Role};
    let spec = seed_study_spec;
    let mut b = synth_bundle(&spec(0.3, 0.25, 1));
    let seeds = [
        synth_bundle(&spec(0.35, 0.3, 1)),
        synth_bundle(&spec(0.3, 0.25, 2)),
        synth_bundle(&spec(0.32, 0.2, 3)),
    ];
    // em + em_s2; benign + benign_s2 (arm "benign"); null_s1, null_s2 (arm "null", copies of
    // benign checkpoints of other synthetic seeds).
    let extra = [
        (&seeds[0], 1usize, "em_s2", Role::Em, None),
        (&seeds[0], 2, "benign_s2", Role::Benign, None),
        (&seeds[1], 2, "null_s1", Role::Benign, Some("null")),
        (&seeds[2], 2, "null_s2", Role::Benign, Some("null")),
    ];
    for (src, src_ck, name, role, arm) in extra {
        let new_ck = b.checkpoints.len() as u32;
        b.checkpoints.push(Checkpoint {
            name: name.into(),
            role,
            label: name.into(),
            provenance: arm
                .map(|a| vec![("arm".to_string(), a.to_string())])
                .unwrap_or_default(),
        });
        let mut cell = src.cell(src_ck, Method::A, 1).unwrap().clone();
        cell.checkpoint = new_ck;
        b.cells.push(cell);
    }
    b.responses.clear();
    let b = Bundle::decode(&b.encode().unwrap()).unwrap();
    let r = analyze(&b, &cfg(8, 0), &quiet).unwrap();
    let m1 = |control: &str| {
        r.adapter_level
            .iter()
            .find(|x| x.metric == "M1_raw" && x.control == control)
            .unwrap_or_else(|| panic!("no row for {control}: {:?}", r.adapter_level))
    };
    let (benign, null, all) = (m1("benign"), m1("null"), m1("all controls"));
    assert_eq!(benign.benign, vec!["benign", "benign_s2"]);
    assert_eq!(null.benign, vec!["null_s1", "null_s2"]);
    assert_eq!(all.benign.len(), 4);
    assert_eq!(
        (benign.n_labellings, null.n_labellings, all.n_labellings),
        (6, 6, 15)
    );
    // The pooled row's means are the means over the four controls' rows.
    let delta = |name: &str| {
        r.rows
            .iter()
            .find(|x| x.post == name && x.metric == "M1_raw" && x.pre == "base")
            .unwrap()
            .delta
    };
    let pooled = (delta("benign") + delta("benign_s2") + delta("null_s1") + delta("null_s2")) / 4.0;
    assert!((all.mean_delta_benign - pooled).abs() < 1e-12);
    assert_eq!(r.adapter_level.len(), 3 * 5);
    let md = shared::report_md::render(&r);
    assert!(md.contains("vs null (null_s1, null_s2)"), "{md}");
}
