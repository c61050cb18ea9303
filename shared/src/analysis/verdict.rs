//! The benign-vs-EM sensitivity rows, the verdict under every criterion, and the
//! training-seed (adapter-level) test.

use super::*;
use crate::stats::basic_bootstrap_interval;
use serde::{Deserialize, Serialize};

/// The direction EM is hypothesised to move a metric: +1 up (M1 raw/centred, M2), −1 down
/// (M1_separation: compression; M3: separability loss).
pub fn direction(metric: &str) -> f64 {
    match metric {
        "M1_separation" | "M3_accuracy" | "M3_log_posterior" => -1.0,
        _ => 1.0,
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SensitivityRow {
    pub em: String,
    /// The least favourable benign checkpoint (largest |Δ_benign|).
    pub benign: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    pub delta_em: f64,
    pub delta_benign: f64,
    pub ratio: f64,
    /// Basic bootstrap CI of Δ_EM/Δ_benign, paired (the same question resamples for both).
    #[serde(default)]
    pub ratio_ci95: Option<[f64; 2]>,
    pub p_bh_em: f64,
    pub p_holm_em: f64,
    /// The direct EM-vs-benign test (BH within its family), least favourable over benigns.
    #[serde(default)]
    pub p_bh_em_vs_benign: f64,
    /// Δ_EM in the hypothesised direction.
    #[serde(default)]
    pub direction_ok: bool,
    /// (criterion, passes): "1.5x", "2x", "3x", ..., "p-only".
    pub passes: Vec<(String, bool)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    pub em: String,
    pub criterion: String,
    /// success | kill | inconclusive | not evaluable
    pub verdict: String,
    /// Metrics meeting the success rule, with the layers where both methods agree.
    pub supporting: Vec<(String, Vec<u32>)>,
    pub explanation: String,
    /// The plan's kill rule (every p > kill_p) and its equivalence form (every CI inside ±δ).
    #[serde(default)]
    pub kill_plan: bool,
    #[serde(default)]
    pub kill_equivalence: bool,
}

/// Training-seed replication: the EM arm's checkpoints against the benign arm's, each
/// checkpoint's Δ vs base one observation, tested exactly over every assignment of the arm
/// labels (same arm sizes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdapterLevelRow {
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    /// The control arm (a benign checkpoint's `arm`, or "all controls" pooled).
    #[serde(default)]
    pub control: String,
    pub em: Vec<String>,
    pub benign: Vec<String>,
    pub mean_delta_em: f64,
    pub mean_delta_benign: f64,
    /// mean Δ_EM − mean Δ_benign.
    pub difference: f64,
    /// In the hypothesised direction (EM moves the metric more in its direction).
    pub p_one_sided: f64,
    pub p_two_sided: f64,
    pub n_labellings: usize,
    /// Smallest attainable one-sided p: 1 / n_labellings.
    pub p_floor: f64,
}

/// Exact permutation test of mean(a) − mean(b) over every relabelling that keeps the group
/// sizes: (one-sided in direction `dir`, two-sided, number of labellings). None when there are
/// more than a million labellings (enumeration refused).
pub fn arm_permutation_test(a: &[f64], b: &[f64], dir: f64, tol: f64) -> Option<(f64, f64, usize)> {
    let all: Vec<f64> = a.iter().chain(b).copied().collect();
    let (n, k) = (all.len(), a.len());
    if k == 0 || k == n {
        return None;
    }
    let mut count = 1f64;
    for i in 0..k {
        count = count * (n - i) as f64 / (i + 1) as f64;
    }
    if count > 1e6 {
        return None;
    }
    let total: f64 = all.iter().sum();
    let stat = |sum_a: f64| sum_a / k as f64 - (total - sum_a) / (n - k) as f64;
    let obs = stat(a.iter().sum());
    let (mut ge, mut ge_abs, mut m) = (0usize, 0usize, 0usize);
    // Enumerate k-subsets in lexicographic order.
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        let t = stat(idx.iter().map(|&i| all[i]).sum());
        m += 1;
        if dir * t >= dir * obs - tol {
            ge += 1;
        }
        if t.abs() >= obs.abs() - tol {
            ge_abs += 1;
        }
        let mut i = k;
        while i > 0 && idx[i - 1] == n - k + i - 1 {
            i -= 1;
        }
        if i == 0 {
            break;
        }
        idx[i - 1] += 1;
        for j in i..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
    Some((ge as f64 / m as f64, ge_abs as f64 / m as f64, m))
}

/// Paired bootstrap draws of (Δ_EM, Δ_benign) for one sensitivity cell (kept in memory for the
/// page's instant threshold changes; not written to report.json).
#[derive(Clone, Debug, PartialEq)]
pub struct RatioDraws {
    pub em: String,
    pub benign: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    pub draws: Vec<[f64; 2]>,
}

/// The adapter-level rows of a report (see [`AdapterLevelRow`]).
pub(super) fn adapter_level_rows(
    bundle: &Bundle,
    rows: &[Row],
    warnings: &mut Vec<String>,
) -> Vec<AdapterLevelRow> {
    let names = |role: Role| -> Vec<String> {
        bundle
            .checkpoint_by_role(&role)
            .iter()
            .map(|&i| bundle.checkpoints[i].name.clone())
            .collect()
    };
    let em = names(Role::Em);
    // The control arms: benign checkpoints grouped by arm (e.g. the benign twin and the null
    // finetune), each tested on its own; with several arms, all controls pooled as well.
    let mut arms: Vec<(String, Vec<String>)> = Vec::new();
    for i in bundle.checkpoint_by_role(&Role::Benign) {
        let c = &bundle.checkpoints[i];
        let arm = c.arm();
        match arms.iter_mut().find(|(a, _)| *a == arm) {
            Some((_, v)) => v.push(c.name.clone()),
            None => arms.push((arm, vec![c.name.clone()])),
        }
    }
    if arms.len() > 1 {
        arms.push(("all controls".into(), names(Role::Benign)));
    }
    let mut out = Vec::new();
    for (control, benign) in arms {
        if em.len() < 2 || benign.len() < 2 {
            continue;
        }
        if !arm_rows(bundle, rows, &em, &benign, &control, &mut out) {
            warnings.push(format!(
                "adapter-level test skipped for {control}: {} EM and {} control checkpoints have more than a million arm labellings",
                em.len(),
                benign.len()
            ));
        }
    }
    out
}

/// The adapter-level rows of the EM arm against one control arm; false when enumeration is
/// refused.
fn arm_rows(
    bundle: &Bundle,
    rows: &[Row],
    em: &[String],
    benign: &[String],
    control: &str,
    out: &mut Vec<AdapterLevelRow>,
) -> bool {
    for &m in &bundle.methods {
        for &l in &bundle.layers {
            for metric in FAMILY_METRICS {
                let deltas = |fam: Family, post: &[String]| -> Option<Vec<f64>> {
                    post.iter()
                        .map(|name| {
                            rows.iter()
                                .find(|r| {
                                    r.family == fam
                                        && r.post == *name
                                        && r.method == m
                                        && r.layer == l
                                        && r.metric == metric
                                })
                                .map(|r| r.delta)
                        })
                        .collect()
                };
                let (Some(a), Some(b)) = (
                    deltas(Family::EmVsBase, em),
                    deltas(Family::BenignVsBase, benign),
                ) else {
                    continue;
                };
                let scale = a.iter().chain(&b).map(|x| x.abs()).fold(0.0, f64::max);
                let Some((p1, p2, n)) =
                    arm_permutation_test(&a, &b, direction(metric), 1e-12 * scale.max(1e-300))
                else {
                    return false;
                };
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                out.push(AdapterLevelRow {
                    method: m,
                    layer: l,
                    metric: metric.to_string(),
                    control: control.to_string(),
                    em: em.to_vec(),
                    benign: benign.to_vec(),
                    mean_delta_em: mean(&a),
                    mean_delta_benign: mean(&b),
                    difference: mean(&a) - mean(&b),
                    p_one_sided: p1,
                    p_two_sided: p2,
                    n_labellings: n,
                    p_floor: 1.0 / n as f64,
                });
            }
        }
    }
    true
}

pub fn criterion_name(t: f64) -> String {
    format!("{t}x")
}

/// The verdict rules in one sentence each, as `sensitivity_and_verdicts` applies them:
/// (success under `criterion`, kill). For the page's summary and report.md.
pub fn rule_sentences(criterion: &str, cfg: &AnalysisConfig, n_layers: usize) -> [String; 2] {
    let min_layers = cfg.min_layers.unwrap_or(n_layers / 2 + 1).max(1);
    let base = format!(
        "Success: for at least one metric (M1_raw, M1_separation, M2_em_axis, M3), the EM-vs-base Δ has BH-adjusted p < {} and points in the hypothesised direction (M1_raw up, M1_separation down, M2 up, M3 down) under every method at >= {min_layers} of {n_layers} layers",
        cfg.alpha
    );
    let success = if criterion == "p-only" {
        format!("{base}.")
    } else {
        format!(
            "{base}, and at each of those, against every benign checkpoint, the paired-bootstrap 95% CI of dir·Δ_EM − {criterion}·|Δ_benign| lies above 0 and the direct EM-vs-benign test is significant."
        )
    };
    let kill = format!(
        "Kill (when success fails): every EM-vs-base family p-value > {} (the plan's rule), or every family 95% CI inside ±{} (equivalence form). Otherwise inconclusive.",
        cfg.kill_p, cfg.equivalence_delta
    );
    [success, kill]
}

/// One benign checkpoint's side of a sensitivity cell.
struct BenignCell<'a> {
    name: String,
    delta: f64,
    /// The direct EM-vs-benign test: significant (BH) in the hypothesised direction.
    direct_ok: bool,
    direct_p: f64,
    /// Paired bootstrap draws of (Δ_EM, Δ_benign).
    draws: &'a [[f64; 2]],
}

/// Lower end of the basic bootstrap 95% interval of dir·Δ_EM − t·|Δ_benign| (paired draws).
fn ratio_margin_lower(delta_em: f64, delta_b: f64, dir: f64, t: f64, draws: &[[f64; 2]]) -> f64 {
    let est = dir * delta_em - t * delta_b.abs();
    let reps: Vec<f64> = draws.iter().map(|d| dir * d[0] - t * d[1].abs()).collect();
    basic_bootstrap_interval(est, &reps, 0.95)
        .map(|ci| ci[0])
        .unwrap_or(f64::NEG_INFINITY)
}

/// Sensitivity rows (EM vs benign per cell) and verdicts under every criterion.
///
/// A cell (EM checkpoint, method, layer, metric) passes "p-only" when its EM-vs-base BH p < α
/// and Δ_EM points in the hypothesised direction (M1 up, M2 up, M1_separation and M3 down). It
/// passes ratio criterion t when, in addition, for *every* benign checkpoint b: the paired
/// bootstrap 95% interval of dir·Δ_EM − t·|Δ_b| lies above 0 (the EM effect exceeds t times
/// the benign one, both directions of Δ_b counted) and the direct EM-vs-b test has BH p < α
/// in the hypothesised direction. Without a benign checkpoint no ratio criterion can pass.
/// A metric supports success when its cells pass under every method at a majority of layers
/// (`min_layers`, default floor(L/2)+1). Kill: every EM-vs-base family p > kill_p (the plan's
/// rule) or every family 95% CI inside ±equivalence_delta (equivalence form); both are
/// reported. No rows: "not evaluable".
pub fn sensitivity_and_verdicts(
    bundle: &Bundle,
    rows: &[Row],
    draws: &[RatioDraws],
    cfg: &AnalysisConfig,
) -> (Vec<SensitivityRow>, Vec<Verdict>) {
    let mut sens = Vec::new();
    let mut verdicts = Vec::new();
    let benigns: Vec<String> = bundle
        .checkpoint_by_role(&Role::Benign)
        .iter()
        .map(|&i| bundle.checkpoints[i].name.clone())
        .collect();
    let min_layers = cfg.min_layers.unwrap_or(bundle.layers.len() / 2 + 1).max(1);
    let mut criteria: Vec<(String, Option<f64>)> = cfg
        .thresholds
        .iter()
        .map(|&t| (criterion_name(t), Some(t)))
        .collect();
    criteria.push(("p-only".into(), None));
    let find = |fam: Family, pre: Option<&str>, post: &str, m: Method, l: u32, metric: &str| {
        rows.iter().find(|r| {
            r.family == fam
                && pre.is_none_or(|x| r.pre == x)
                && r.post == post
                && r.method == m
                && r.layer == l
                && r.metric == metric
        })
    };
    for em in bundle.checkpoint_by_role(&Role::Em) {
        let em_name = &bundle.checkpoints[em].name;
        for metric in FAMILY_METRICS {
            let dir = direction(metric);
            for &m in &bundle.methods {
                for &l in &bundle.layers {
                    let Some(re) = find(Family::EmVsBase, None, em_name, m, l, metric) else {
                        continue;
                    };
                    let direction_ok = dir * re.delta > 0.0;
                    let sig = re.p_bh.unwrap_or(1.0) < cfg.alpha && direction_ok;
                    let per_benign: Vec<BenignCell> = benigns
                        .iter()
                        .filter_map(|b| {
                            let rb = find(Family::BenignVsBase, None, b, m, l, metric)?;
                            let rd = find(Family::EmVsBenign, Some(b), em_name, m, l, metric);
                            let direct_p = rd.and_then(|r| r.p_bh).unwrap_or(1.0);
                            let direct_ok =
                                rd.is_some_and(|r| dir * r.delta > 0.0) && direct_p < cfg.alpha;
                            let d = draws
                                .iter()
                                .find(|d| {
                                    d.em == *em_name
                                        && d.benign == *b
                                        && d.method == m
                                        && d.layer == l
                                        && d.metric == metric
                                })
                                .map(|d| d.draws.as_slice())
                                .unwrap_or(&[]);
                            Some(BenignCell {
                                name: b.clone(),
                                delta: rb.delta,
                                direct_ok,
                                direct_p,
                                draws: d,
                            })
                        })
                        .collect();
                    let worst = per_benign
                        .iter()
                        .max_by(|a, b| a.delta.abs().total_cmp(&b.delta.abs()));
                    let passes = criteria
                        .iter()
                        .map(|(name, t)| {
                            let ok = match t {
                                None => sig,
                                Some(t) => {
                                    sig && !per_benign.is_empty()
                                        && per_benign.iter().all(|b| {
                                            b.direct_ok
                                                && ratio_margin_lower(
                                                    re.delta, b.delta, dir, *t, b.draws,
                                                ) > 0.0
                                        })
                                }
                            };
                            (name.clone(), ok)
                        })
                        .collect();
                    let (benign, delta_benign, ratio_ci95) = match worst {
                        Some(b) => {
                            let reps: Vec<f64> = b.draws.iter().map(|x| x[0] / x[1]).collect();
                            (
                                b.name.clone(),
                                b.delta,
                                basic_bootstrap_interval(re.delta / b.delta, &reps, 0.95),
                            )
                        }
                        None => (String::new(), f64::NAN, None),
                    };
                    sens.push(SensitivityRow {
                        em: em_name.clone(),
                        benign,
                        method: m,
                        layer: l,
                        metric: metric.to_string(),
                        delta_em: re.delta,
                        delta_benign,
                        ratio: re.delta / delta_benign,
                        ratio_ci95,
                        p_bh_em: re.p_bh.unwrap_or(1.0),
                        p_holm_em: re.p_holm.unwrap_or(1.0),
                        p_bh_em_vs_benign: per_benign
                            .iter()
                            .map(|x| x.direct_p)
                            .fold(f64::NAN, |a: f64, b| a.max(b)),
                        direction_ok,
                        passes,
                    });
                }
            }
        }
        let fam_rows: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                r.family == Family::EmVsBase
                    && r.post == *em_name
                    && FAMILY_METRICS.contains(&r.metric.as_str())
            })
            .collect();
        let evaluable = !fam_rows.is_empty();
        let kill_plan = evaluable && fam_rows.iter().all(|r| r.p > cfg.kill_p);
        let delta = cfg.equivalence_delta;
        let kill_equivalence = evaluable
            && fam_rows
                .iter()
                .all(|r| r.ci95.is_some_and(|ci| ci[0] > -delta && ci[1] < delta));
        for (ci, (cname, _)) in criteria.iter().enumerate() {
            let mut supporting = Vec::new();
            for metric in FAMILY_METRICS {
                let mut layers_ok = Vec::new();
                for &l in &bundle.layers {
                    let cells: Vec<&SensitivityRow> = sens
                        .iter()
                        .filter(|s| s.em == *em_name && s.metric == metric && s.layer == l)
                        .collect();
                    let all_methods = bundle
                        .methods
                        .iter()
                        .all(|&m| cells.iter().any(|s| s.method == m && s.passes[ci].1));
                    if all_methods && cells.len() == bundle.methods.len() {
                        layers_ok.push(l);
                    }
                }
                if layers_ok.len() >= min_layers {
                    supporting.push((metric.to_string(), layers_ok));
                }
            }
            let (verdict, explanation) = if !evaluable {
                (
                    "not evaluable",
                    "no EM-vs-base rows for this checkpoint".to_string(),
                )
            } else if !supporting.is_empty() {
                (
                    "success",
                    format!(
                        "{} metric(s) with BH p < {} and Δ in the hypothesised direction under every method at >= {min_layers} of {} layers{}",
                        supporting.len(),
                        cfg.alpha,
                        bundle.layers.len(),
                        if cname == "p-only" {
                            String::new()
                        } else {
                            format!(
                                "; against every benign checkpoint: paired-bootstrap 95% CI of dir·Δ_EM − {cname}·|Δ_benign| above 0 and the direct EM-vs-benign test significant"
                            )
                        }
                    ),
                )
            } else if kill_plan || kill_equivalence {
                (
                    "kill",
                    format!(
                        "{}{}{}",
                        if kill_plan {
                            format!(
                                "every EM-vs-base family p-value > {} (plan's rule)",
                                cfg.kill_p
                            )
                        } else {
                            String::new()
                        },
                        if kill_plan && kill_equivalence {
                            "; "
                        } else {
                            ""
                        },
                        if kill_equivalence {
                            format!("every EM-vs-base family 95% CI inside ±{delta} (equivalence)")
                        } else {
                            String::new()
                        }
                    ),
                )
            } else {
                (
                    "inconclusive",
                    format!(
                        "no metric meets the success rule at >= {min_layers} layers; neither kill form holds (every family p > {}; every family CI inside ±{delta})",
                        cfg.kill_p
                    ),
                )
            };
            verdicts.push(Verdict {
                em: em_name.clone(),
                criterion: cname.clone(),
                verdict: verdict.into(),
                supporting,
                explanation,
                kill_plan,
                kill_equivalence,
            });
        }
    }
    (sens, verdicts)
}
