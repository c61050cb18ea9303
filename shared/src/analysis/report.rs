//! The report of an analysis: its rows, per-checkpoint and per-pair views, corrections and
//! warnings (`Plan::report`).

use super::*;
use crate::geometry::{gram_of_rows, GEOMETRY_METRICS, N_GEOMETRY};
use crate::stats::{bh_adjust, holm_adjust, p_floor, permutation_p_greater};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Row {
    pub family: Family,
    pub pre: String,
    pub post: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    pub pre_value: f64,
    pub post_value: f64,
    pub delta: f64,
    pub ci95: Option<[f64; 2]>,
    /// The pre-registered test's p: two-sided for M1, one-sided in the hypothesised direction
    /// for M2 (up) and M3 (down).
    pub p: f64,
    #[serde(default)]
    pub p_two_sided: f64,
    pub p_bh: Option<f64>,
    pub p_holm: Option<f64>,
    pub n_permutations: usize,
    pub p_floor: f64,
    pub n_questions: usize,
    pub n_bootstrap: usize,
    pub seed: u64,
    pub test: String,
    /// False where the draws were made on a compact bundle's truncated coordinates.
    #[serde(default)]
    pub exact: bool,
    /// The same row from `analyze` on the full bundle, where a compact bundle carries it
    /// (`compact --reference`).
    #[serde(default)]
    pub reference: Option<ReferenceRow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointView {
    pub checkpoint: String,
    pub method: Method,
    pub layer: u32,
    /// personas x personas, row-major; centred = within-checkpoint centring.
    pub cos_raw: Vec<f64>,
    pub cos_centred: Vec<f64>,
    pub norms: Vec<f64>,
    pub m3_accuracy: f64,
    pub m3_log_posterior: f64,
    /// Ledoit-Wolf shrinkage per fold (M3's estimator: the mean over its per-class shrinkages).
    pub m3_shrinkage: Vec<f64>,
    pub m3_n_samples: usize,
    /// What M3 was fitted on (full activations or residual PCs).
    #[serde(default)]
    pub m3_features: String,
    /// The above-chance test's statistic: held-out accuracy and mean log posterior of the
    /// pooled-covariance LDA on the residual PCs (cheap to refit under relabelling).
    #[serde(default)]
    pub m3_pooled_accuracy: f64,
    #[serde(default)]
    pub m3_pooled_log_posterior: f64,
    /// One-sided label-permutation p-values of the pooled estimator (separable above chance?).
    pub m3_p_above_chance_accuracy: f64,
    pub m3_p_above_chance_log_posterior: f64,
    pub m3_n_label_permutations: usize,
    /// Label-permutation null means (chance level under this data).
    pub m3_null_mean_accuracy: f64,
    pub m3_null_mean_log_posterior: f64,
    /// N_effective after the paired empty-response filter: valid (persona, question) cells, the
    /// fewest valid questions of any persona, and the cells this checkpoint lost to the filter.
    #[serde(default)]
    pub n_effective: usize,
    #[serde(default)]
    pub n_effective_min_questions: usize,
    #[serde(default)]
    pub n_dropped_paired: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PairView {
    pub family: Family,
    pub pre: String,
    pub post: String,
    pub method: Method,
    pub layer: u32,
    pub geometry: PairGeometryResult,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BasisView {
    pub method: Method,
    pub layer: u32,
    pub dim: usize,
    pub k: usize,
    /// Within-persona variance kept by the LDA components (compact: by the stored components).
    pub residual_variance_retained: f64,
    /// True when M1/M2 draws are full-dimensional (full bundle).
    #[serde(default)]
    pub exact: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub tool_version: String,
    pub layer_convention: String,
    pub centre_note: String,
    pub config: AnalysisConfig,
    pub bundle_provenance: crate::bundle::Provenance,
    pub personas: Vec<String>,
    pub n_questions: usize,
    pub checkpoints: Vec<(String, String, String)>,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    pub bases: Vec<BasisView>,
    pub checkpoint_views: Vec<CheckpointView>,
    pub pair_views: Vec<PairView>,
    pub rows: Vec<Row>,
    pub sensitivity: Vec<SensitivityRow>,
    pub verdicts: Vec<Verdict>,
    /// Things a reader must know (p floors that cannot pass Holm, approximate draws).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Training-seed replication (≥ 2 EM and ≥ 2 benign checkpoints), else empty.
    #[serde(default)]
    pub adapter_level: Vec<AdapterLevelRow>,
    /// Replies of each checkpoint against base's (when the bundle keeps response texts).
    #[serde(default)]
    pub behaviour: Vec<crate::behaviour::BehaviourRow>,
    #[serde(skip)]
    pub ratio_draws: Vec<RatioDraws>,
}

impl Plan {
    /// The report over the (method, layer)s whose results are present. With every cell present
    /// this is exactly `analyze`; with some missing (the page while workers run), corrections
    /// and verdicts cover the present cells only.
    pub fn report(&self, bundle: &Bundle, cells: &[Option<CellResult>]) -> Report {
        let cfg = &self.cfg;
        let nck = self.n_checkpoints;
        let p = bundle.n_personas();
        let mut checkpoint_views = Vec::new();
        let mut pair_views = Vec::new();
        let mut rows = Vec::new();
        let mut ratio_draws = Vec::new();
        let mut warnings = Vec::new();
        let mut approximate = Vec::new();
        let ckname = |i: usize| bundle.checkpoints[i].name.clone();
        for (ml, c) in self.coords.iter().enumerate() {
            let Some(Some(cell)) = cells.get(ml) else {
                continue;
            };
            for ck in 0..nck {
                let obs = &cell.lda[ck];
                let [pooled_acc, pooled_lp] = cell.lda_pooled[ck];
                let null = &cell.lda_null[ck];
                let na: Vec<f64> = null.iter().map(|x| x[0]).collect();
                let nl: Vec<f64> = null.iter().map(|x| x[1]).collect();
                let rows_ck: Vec<&[f64]> = (0..p).map(|i| c.centroid(ck, i)).collect();
                let g = gram_of_rows(&rows_ck);
                let (n_eff, n_eff_min) = c.n_effective(ck);
                let tol = |v: f64| crate::geometry::tie_tolerance(c.exact, v);
                checkpoint_views.push(CheckpointView {
                    checkpoint: ckname(ck),
                    method: c.method,
                    layer: c.layer,
                    cos_raw: gram_cosines(&g, p),
                    cos_centred: gram_cosines(&crate::geometry::centred_gram(&g, p), p),
                    norms: (0..p).map(|i| g[i * p + i].max(0.0).sqrt()).collect(),
                    m3_accuracy: obs.accuracy,
                    m3_log_posterior: obs.mean_log_posterior,
                    m3_shrinkage: obs.shrinkage.clone(),
                    m3_n_samples: obs.correct.len(),
                    m3_features: self.m3_features_text(ml),
                    m3_pooled_accuracy: pooled_acc,
                    m3_pooled_log_posterior: pooled_lp,
                    m3_p_above_chance_accuracy: permutation_p_greater(
                        pooled_acc,
                        &na,
                        tol(pooled_acc),
                    ),
                    m3_p_above_chance_log_posterior: permutation_p_greater(
                        pooled_lp,
                        &nl,
                        tol(pooled_lp),
                    ),
                    m3_n_label_permutations: null.len(),
                    m3_null_mean_accuracy: na.iter().sum::<f64>() / na.len().max(1) as f64,
                    m3_null_mean_log_posterior: nl.iter().sum::<f64>() / nl.len().max(1) as f64,
                    n_effective: n_eff,
                    n_effective_min_questions: n_eff_min,
                    n_dropped_paired: c.n_dropped_paired[ck],
                });
            }
            for (ci, cmp) in self.comparisons.iter().enumerate() {
                let g = cell.geometry[ci].clone();
                // The fields every row of this comparison shares; each metric fills the rest.
                let template = Row {
                    family: cmp.family,
                    pre: ckname(cmp.pre),
                    post: ckname(cmp.post),
                    method: c.method,
                    layer: c.layer,
                    metric: String::new(),
                    pre_value: 0.0,
                    post_value: 0.0,
                    delta: 0.0,
                    ci95: None,
                    p: 1.0,
                    p_two_sided: 1.0,
                    p_bh: None,
                    p_holm: None,
                    n_permutations: 0,
                    p_floor: 1.0,
                    n_questions: 0,
                    n_bootstrap: 0,
                    seed: cfg.seed,
                    test: String::new(),
                    exact: c.exact,
                    reference: None,
                };
                for s in 0..N_GEOMETRY {
                    rows.push(Row {
                        metric: GEOMETRY_METRICS[s].to_string(),
                        pre_value: g.pre_values[s],
                        post_value: g.post_values[s],
                        delta: g.delta[s],
                        ci95: g.ci95_delta[s],
                        p: g.p[s],
                        p_two_sided: g.p_two_sided[s],
                        n_permutations: g.n_permutations,
                        p_floor: p_floor(g.n_permutations),
                        n_questions: g.n_questions_paired_min,
                        n_bootstrap: g.n_bootstrap - g.n_bootstrap_skipped,
                        test: if crate::geometry::GEOMETRY_IS_LEVEL[s] {
                            "paired question-level swap permutation (two-sided); basic question-bootstrap CI"
                        } else {
                            "paired question-level swap permutation (one-sided, greater; two-sided also reported); basic question-bootstrap CI"
                        }
                        .into(),
                        ..template.clone()
                    });
                }
                // M3 and (when fitted) the logistic probe: the same paired rows.
                let probe_test = format!("robustness row: multinomial L2 logistic probe (scikit-learn LogisticRegression(C=1) objective) on the top {} residual PCs, held out over the same folds; paired sign-flip permutation of per-question scores (one-sided: separability loss; two-sided also reported); not in the corrected families", c.lda_k);
                let m3_kinds = [
                    (
                        &M3_METRICS,
                        Some(&cell.m3[ci]),
                        &cell.lda,
                        "paired sign-flip permutation of per-question held-out scores (one-sided: separability loss; two-sided also reported); basic question-bootstrap CI".to_string(),
                        // Exact = scikit-learn's estimator on the full activations (the CLI's
                        // default); on residual components it approximates that value.
                        self.m3_on_full_activations(ml),
                    ),
                    // The probe sees the residual components on every path.
                    (&PROBE_METRICS, cell.probe_m3.get(ci), &cell.probe, probe_test, c.exact),
                ];
                for (names, paired, evals, test, exact) in m3_kinds {
                    let Some(m3) = paired else { continue };
                    let (pre_e, post_e) = (&evals[cmp.pre], &evals[cmp.post]);
                    let levels = [
                        (pre_e.accuracy, post_e.accuracy),
                        (pre_e.mean_log_posterior, post_e.mean_log_posterior),
                    ];
                    for (s, name) in names.iter().enumerate() {
                        rows.push(Row {
                            metric: name.to_string(),
                            pre_value: levels[s].0,
                            post_value: levels[s].1,
                            delta: m3.delta[s],
                            ci95: m3.ci95[s],
                            p: m3.p[s],
                            p_two_sided: m3.p_two_sided[s],
                            n_permutations: m3.n_permutations,
                            p_floor: p_floor(m3.n_permutations),
                            n_questions: m3.n_questions,
                            n_bootstrap: m3.n_bootstrap,
                            test: test.clone(),
                            exact,
                            ..template.clone()
                        });
                    }
                }
                pair_views.push(PairView {
                    family: cmp.family,
                    pre: ckname(cmp.pre),
                    post: ckname(cmp.post),
                    method: c.method,
                    layer: c.layer,
                    geometry: g,
                });
            }
            // Paired bootstrap draws of (Δ_EM, Δ_benign) for the ratio criteria.
            let em_cmp = self
                .comparisons
                .iter()
                .enumerate()
                .filter(|(_, x)| x.family == Family::EmVsBase);
            for (ei, e) in em_cmp {
                for (bi, b) in self
                    .comparisons
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.family == Family::BenignVsBase)
                {
                    for metric in FAMILY_METRICS {
                        let draws: Vec<[f64; 2]> =
                            match GEOMETRY_METRICS.iter().position(|m| *m == metric) {
                                Some(s) => cell.geometry_boot[ei]
                                    .iter()
                                    .zip(&cell.geometry_boot[bi])
                                    .filter_map(|(x, y)| Some([(*x)?[s], (*y)?[s]]))
                                    .collect(),
                                None => {
                                    let s = M3_METRICS
                                        .iter()
                                        .position(|m| *m == metric)
                                        .expect("a family metric is M1/M2 or M3");
                                    cell.m3[ei]
                                        .boot
                                        .iter()
                                        .zip(&cell.m3[bi].boot)
                                        .filter_map(|(x, y)| Some([(*x)?[s], (*y)?[s]]))
                                        .collect()
                                }
                            };
                        ratio_draws.push(RatioDraws {
                            em: ckname(e.post),
                            benign: ckname(b.post),
                            method: c.method,
                            layer: c.layer,
                            metric: metric.to_string(),
                            draws,
                        });
                    }
                }
            }
            if !c.exact {
                approximate.push(format!("{}/L{} (k = {})", c.method.name(), c.layer, c.k));
            }
        }
        if !approximate.is_empty() {
            warnings.push(format!(
                "compact coordinates at {}: M1/M2 permutation and bootstrap draws miss the within-persona variation outside the k stored residual components, so their p-values and intervals are approximate (the point estimates of M1_raw, M1_centred and M2 are exact; {}); M3 is fitted on the k components instead of the full activations, so its values approximate those of `analyze` on the full bundle",
                approximate.join(", "),
                if super::point_estimate_exact(bundle, "M1_separation") {
                    "so is M1_separation's: the bundle carries each persona's energy outside the components"
                } else {
                    "M1_separation's is approximate: this bundle was made before compact bundles carried each persona's energy outside the components, so that energy is spread evenly over checkpoints"
                }
            ));
        }
        // Corrections: one family per compared pair of checkpoints, over the family metrics.
        let mut groups: Vec<(Family, String, String)> = Vec::new();
        for r in &rows {
            let key = (r.family, r.pre.clone(), r.post.clone());
            if !groups.contains(&key) {
                groups.push(key);
            }
        }
        for (fam, pre, post) in groups {
            let idx: Vec<usize> = (0..rows.len())
                .filter(|&i| {
                    rows[i].family == fam
                        && rows[i].pre == pre
                        && rows[i].post == post
                        && FAMILY_METRICS.contains(&rows[i].metric.as_str())
                })
                .collect();
            let ps: Vec<f64> = idx.iter().map(|&i| rows[i].p).collect();
            let bh = bh_adjust(&ps);
            let holm = holm_adjust(&ps);
            for (j, &i) in idx.iter().enumerate() {
                rows[i].p_bh = Some(bh[j]);
                rows[i].p_holm = Some(holm[j]);
            }
            let floor = p_floor(cfg.permutations);
            if idx.len() as f64 * floor >= cfg.alpha {
                warnings.push(format!(
                    "family {} ({pre} -> {post}) has {} tests: with N = {} permutations the smallest Holm-adjusted p is {:.2e} >= alpha {}; raise --permutations to at least {}",
                    fam.name(),
                    idx.len(),
                    cfg.permutations,
                    idx.len() as f64 * floor,
                    cfg.alpha,
                    (idx.len() as f64 / cfg.alpha).ceil() as usize
                ));
            }
        }
        if let Some(refs) = bundle_reference(bundle) {
            for r in rows.iter_mut() {
                r.reference = refs.iter().find(|x| x.is_row(r)).cloned();
            }
        } else if !approximate.is_empty() {
            warnings.push("this compact bundle carries no exact reference values (make it with `compact --reference report.json` from `analyze` of the full bundle to show them beside the approximate ones)".into());
        }
        let (sensitivity, verdicts) = sensitivity_and_verdicts(bundle, &rows, &ratio_draws, cfg);
        let adapter_level = adapter_level_rows(bundle, &rows, &mut warnings);
        Report {
            tool_version: crate::TOOL_VERSION.into(),
            layer_convention: crate::LAYER_CONVENTION.into(),
            centre_note: "M1 centred: each checkpoint's centroids minus that checkpoint's own centroid mean (within-checkpoint centring). M1_separation: mean pairwise centroid distance over the within-persona spread (shift- and scale-invariant; compression lowers it). M2: mean over personas p != axis of cos(Δ_p, unit(Δ_axis)), Δ = post − pre centroid.".into(),
            config: cfg.clone(),
            bundle_provenance: bundle.provenance.clone(),
            personas: bundle.personas.iter().map(|p| p.name.clone()).collect(),
            n_questions: bundle.n_questions(),
            checkpoints: bundle
                .checkpoints
                .iter()
                .map(|c| (c.name.clone(), c.role.name().to_string(), c.label.clone()))
                .collect(),
            methods: bundle.methods.clone(),
            layers: bundle.layers.clone(),
            bases: self
                .coords
                .iter()
                .enumerate()
                .filter(|(ml, _)| matches!(cells.get(*ml), Some(Some(_))))
                .map(|(_, c)| basis_view(c))
                .collect(),
            checkpoint_views,
            pair_views,
            rows,
            sensitivity,
            verdicts,
            warnings,
            adapter_level,
            behaviour: crate::behaviour::behaviour_rows(bundle),
            ratio_draws,
        }
    }
}

/// Cosine matrix (row-major) from a Gram matrix.
fn gram_cosines(g: &[f64], p: usize) -> Vec<f64> {
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            let den = (g[i * p + i] * g[j * p + j]).max(0.0).sqrt();
            out[i * p + j] = if den > 0.0 { g[i * p + j] / den } else { 0.0 };
        }
    }
    out
}

fn basis_view(c: &MethodLayerCoords) -> BasisView {
    BasisView {
        method: c.method,
        layer: c.layer,
        dim: c.dim,
        k: c.lda_k,
        residual_variance_retained: c.retained_fraction(),
        exact: c.exact,
    }
}
