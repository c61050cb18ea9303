//! The whole analysis of a bundle: every (method, layer) x comparison x metric, tests,
//! corrections, the benign-vs-EM sensitivity rows and the pre-registered verdict.

use crate::bundle::{Bundle, Method, Role};
use crate::coords::{bundle_coords, CoordsError, MethodLayerCoords};
use crate::geometry::{
    cosine_matrix, mean_rows, Centre, PairGeometry, PairGeometryResult, GEOMETRY_METRICS,
};
use crate::lda::{per_question_scores, Lda, PairedScores, Samples};
use crate::stats::{
    basic_bootstrap_interval, bh_adjust, holm_adjust, p_floor, permutation_p_greater,
    permutation_p_two_sided,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnalysisConfig {
    pub permutations: usize,
    /// Label permutations for the per-checkpoint "M3 above chance" test.
    pub m3_label_permutations: usize,
    pub bootstrap: usize,
    pub seed: u64,
    /// Residual principal components of the analysis basis (see `coords`).
    pub components: usize,
    pub folds: usize,
    /// Significance level on BH-adjusted p-values for the verdict.
    pub alpha: f64,
    /// EM/benign ratio thresholds of the sensitivity rows.
    pub thresholds: Vec<f64>,
    pub primary_threshold: f64,
    /// A metric supports success at >= this many layers (default: 3 of 5, i.e. ceil(0.6 L)).
    pub min_layers: Option<usize>,
    /// Kill rule: every family p-value above this.
    pub kill_p: f64,
    pub axis_persona: String,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            permutations: 10_000,
            m3_label_permutations: 500,
            bootstrap: 1_000,
            seed: 0,
            components: 256,
            folds: 5,
            alpha: 0.01,
            thresholds: vec![1.5, 2.0, 3.0],
            primary_threshold: 2.0,
            min_layers: None,
            kill_p: 0.5,
            axis_persona: "assistant".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    EmVsBase,
    BenignVsBase,
    EmVsBenign,
    OtherVsBase,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::EmVsBase => "em_vs_base",
            Family::BenignVsBase => "benign_vs_base",
            Family::EmVsBenign => "em_vs_benign",
            Family::OtherVsBase => "other_vs_base",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Comparison {
    pub family: Family,
    pub pre: usize,
    pub post: usize,
}

/// Metric names of the rows. The first five form the corrected families; the PC1 axis is a
/// robustness check reported with its raw p-value.
pub const FAMILY_METRICS: [&str; 5] = [
    "M1_raw",
    "M1_centred",
    "M2_em_axis",
    "M3_accuracy",
    "M3_log_posterior",
];
pub const ALL_METRICS: [&str; 6] = [
    "M1_raw",
    "M1_centred",
    "M2_em_axis",
    "M2_pc1_axis",
    "M3_accuracy",
    "M3_log_posterior",
];

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
    pub p: f64,
    pub p_bh: Option<f64>,
    pub p_holm: Option<f64>,
    pub n_permutations: usize,
    pub p_floor: f64,
    pub n_questions: usize,
    pub n_bootstrap: usize,
    pub seed: u64,
    pub test: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointView {
    pub checkpoint: String,
    pub method: Method,
    pub layer: u32,
    /// personas x personas, row-major.
    pub cos_raw: Vec<f64>,
    pub cos_centred: Vec<f64>,
    pub norms: Vec<f64>,
    pub m3_accuracy: f64,
    pub m3_log_posterior: f64,
    pub m3_shrinkage: Vec<f64>,
    pub m3_n_samples: usize,
    /// One-sided label-permutation p-values (separable above chance?).
    pub m3_p_above_chance_accuracy: f64,
    pub m3_p_above_chance_log_posterior: f64,
    pub m3_n_label_permutations: usize,
    /// Label-permutation null means (chance level under this data).
    pub m3_null_mean_accuracy: f64,
    pub m3_null_mean_log_posterior: f64,
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
    pub residual_variance_retained: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SensitivityRow {
    pub em: String,
    pub benign: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    pub delta_em: f64,
    pub delta_benign: f64,
    pub ratio: f64,
    pub p_bh_em: f64,
    pub p_holm_em: f64,
    /// (criterion, passes): "1.5x", "2x", "3x", ..., "p-only".
    pub passes: Vec<(String, bool)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    pub em: String,
    pub criterion: String,
    pub verdict: String,
    /// Metrics meeting the success rule, with the layers where both methods agree.
    pub supporting: Vec<(String, Vec<u32>)>,
    pub explanation: String,
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
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the bundle has no checkpoint with role `base`; analysis compares every checkpoint against base (set one checkpoint's role to base)")]
    NoBase,
    #[error("axis persona `{0}` is not among the bundle's personas; pass --axis-persona with one of: {1}")]
    NoAxisPersona(String, String),
    #[error("permutations and bootstrap must be >= 1 and folds >= 2 (got permutations={0}, bootstrap={1}, folds={2})")]
    BadConfig(usize, usize, usize),
    #[error("{0}")]
    Coords(#[from] CoordsError),
}

pub fn comparisons(bundle: &Bundle) -> Result<Vec<Comparison>, AnalysisError> {
    let base = *bundle
        .checkpoint_by_role(&Role::Base)
        .first()
        .ok_or(AnalysisError::NoBase)?;
    let mut out = Vec::new();
    for (ck, c) in bundle.checkpoints.iter().enumerate() {
        if ck == base {
            continue;
        }
        let family = match c.role {
            Role::Em => Family::EmVsBase,
            Role::Benign => Family::BenignVsBase,
            Role::Base | Role::Other(_) => Family::OtherVsBase,
        };
        out.push(Comparison {
            family,
            pre: base,
            post: ck,
        });
    }
    if let Some(&benign) = bundle.checkpoint_by_role(&Role::Benign).first() {
        for em in bundle.checkpoint_by_role(&Role::Em) {
            out.push(Comparison {
                family: Family::EmVsBenign,
                pre: benign,
                post: em,
            });
        }
    }
    Ok(out)
}

/// Progress messages (stderr in the CLI, a status line in the browser).
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

pub fn analyze(
    bundle: &Bundle,
    cfg: &AnalysisConfig,
    progress: Progress,
) -> Result<Report, AnalysisError> {
    if cfg.permutations == 0
        || cfg.bootstrap == 0
        || cfg.folds < 2
        || cfg.m3_label_permutations == 0
    {
        return Err(AnalysisError::BadConfig(
            cfg.permutations,
            cfg.bootstrap,
            cfg.folds,
        ));
    }
    let axis = bundle
        .personas
        .iter()
        .position(|p| p.name == cfg.axis_persona)
        .ok_or_else(|| {
            AnalysisError::NoAxisPersona(
                cfg.axis_persona.clone(),
                bundle
                    .personas
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    let comps = comparisons(bundle)?;
    let base = comps.first().map(|c| c.pre).unwrap_or(0);
    progress(&format!(
        "building analysis coordinates ({} residual components)",
        cfg.components
    ));
    let coords = bundle_coords(bundle, cfg.components, cfg.seed)?;
    let nck = bundle.checkpoints.len();
    let p = bundle.n_personas();

    // Independent jobs: geometry per (method-layer, comparison), LDA per (method-layer, checkpoint).
    enum Job {
        Geometry(usize, usize),
        Lda(usize, usize),
    }
    enum Out {
        Geometry(PairGeometryResult),
        Lda(Box<(crate::lda::Evaluation, Samples, Vec<[f64; 2]>)>),
    }
    let mut jobs = Vec::new();
    for ml in 0..coords.len() {
        for ck in 0..nck {
            jobs.push(Job::Lda(ml, ck));
        }
        for ci in 0..comps.len() {
            jobs.push(Job::Geometry(ml, ci));
        }
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = jobs.len();
    let outs = crate::parallel::par_map(jobs.len(), |i| {
        let out = match jobs[i] {
            Job::Geometry(ml, ci) => {
                let c = &coords[ml];
                let cmp = &comps[ci];
                let centre = if cmp.pre == base {
                    Centre::FromPre
                } else {
                    Centre::Fixed(mean_rows(&c.centroids[base], p, c.dim))
                };
                let g = PairGeometry::new(c, cmp.pre, cmp.post, axis, centre, cfg.seed);
                Out::Geometry(g.run(cfg.permutations, cfg.bootstrap))
            }
            Job::Lda(ml, ck) => {
                let c = &coords[ml];
                let lda = Lda::new(Samples::from_coords(c, ck), cfg.folds);
                let obs = lda.observed();
                let label = format!("m3-labels/{}/L{}", c.method.name(), c.layer);
                let null =
                    lda.label_permutation_null(cfg.seed, &label, 0..cfg.m3_label_permutations);
                let samples = lda.samples().clone();
                Out::Lda(Box::new((obs, samples, null)))
            }
        };
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(&format!("analysis: {n}/{total} jobs done"));
        out
    });
    let mut geom: Vec<Vec<Option<PairGeometryResult>>> =
        vec![vec![None; comps.len()]; coords.len()];
    let mut ldas: Vec<Vec<Option<(crate::lda::Evaluation, Samples, Vec<[f64; 2]>)>>> = (0..coords
        .len())
        .map(|_| (0..nck).map(|_| None).collect())
        .collect();
    for (job, out) in jobs.iter().zip(outs) {
        match (job, out) {
            (Job::Geometry(ml, ci), Out::Geometry(r)) => geom[*ml][*ci] = Some(r),
            (Job::Lda(ml, ck), Out::Lda(r)) => ldas[*ml][*ck] = Some(*r),
            _ => unreachable!("job and output kinds match"),
        }
    }

    let mut checkpoint_views = Vec::new();
    let mut pair_views = Vec::new();
    let mut rows = Vec::new();
    let ckname = |i: usize| bundle.checkpoints[i].name.clone();
    for (ml, c) in coords.iter().enumerate() {
        let centre = mean_rows(&c.centroids[base], p, c.dim);
        for ck in 0..nck {
            let (obs, _, null) = ldas[ml][ck].as_ref().expect("every LDA job ran");
            let na: Vec<f64> = null.iter().map(|x| x[0]).collect();
            let nl: Vec<f64> = null.iter().map(|x| x[1]).collect();
            checkpoint_views.push(CheckpointView {
                checkpoint: ckname(ck),
                method: c.method,
                layer: c.layer,
                cos_raw: cosine_matrix(&c.centroids[ck], p, c.dim, None),
                cos_centred: cosine_matrix(&c.centroids[ck], p, c.dim, Some(&centre)),
                norms: (0..p)
                    .map(|i| crate::linalg::norm(c.centroid(ck, i)))
                    .collect(),
                m3_accuracy: obs.accuracy,
                m3_log_posterior: obs.mean_log_posterior,
                m3_shrinkage: obs.shrinkage.clone(),
                m3_n_samples: obs.correct.len(),
                m3_p_above_chance_accuracy: permutation_p_greater(obs.accuracy, &na),
                m3_p_above_chance_log_posterior: permutation_p_greater(obs.mean_log_posterior, &nl),
                m3_n_label_permutations: null.len(),
                m3_null_mean_accuracy: na.iter().sum::<f64>() / na.len() as f64,
                m3_null_mean_log_posterior: nl.iter().sum::<f64>() / nl.len() as f64,
            });
        }
        for (ci, cmp) in comps.iter().enumerate() {
            let g = geom[ml][ci].clone().expect("every geometry job ran");
            for s in 0..4 {
                rows.push(Row {
                    family: cmp.family,
                    pre: ckname(cmp.pre),
                    post: ckname(cmp.post),
                    method: c.method,
                    layer: c.layer,
                    metric: GEOMETRY_METRICS[s].to_string(),
                    pre_value: g.pre_values[s],
                    post_value: g.post_values[s],
                    delta: g.delta[s],
                    ci95: g.ci95_delta[s],
                    p: g.p_two_sided[s],
                    p_bh: None,
                    p_holm: None,
                    n_permutations: g.n_permutations,
                    p_floor: p_floor(g.n_permutations),
                    n_questions: g.n_questions_paired_min,
                    n_bootstrap: g.n_bootstrap - g.n_bootstrap_skipped,
                    seed: cfg.seed,
                    test: "paired question-level swap permutation (two-sided); basic question-bootstrap CI".into(),
                });
            }
            // M3: paired test on held-out per-question scores.
            let (pre_e, pre_s, _) = ldas[ml][cmp.pre].as_ref().expect("ran");
            let (post_e, post_s, _) = ldas[ml][cmp.post].as_ref().expect("ran");
            let label = format!(
                "m3-paired/{}/L{}/{}->{}",
                c.method.name(),
                c.layer,
                cmp.pre,
                cmp.post
            );
            let ps = PairedScores::new(
                &per_question_scores(pre_s, pre_e),
                &per_question_scores(post_s, post_e),
                cfg.seed,
                label,
            );
            let obs = ps.observed();
            let null = ps.null(0..cfg.permutations);
            let boot = ps.bootstrap(0..cfg.bootstrap);
            for (s, name) in ["M3_accuracy", "M3_log_posterior"].iter().enumerate() {
                let ns: Vec<f64> = null.iter().map(|x| x[s]).collect();
                let bs: Vec<f64> = boot.iter().map(|x| x[s]).collect();
                let (pre_v, post_v) = if s == 0 {
                    (pre_e.accuracy, post_e.accuracy)
                } else {
                    (pre_e.mean_log_posterior, post_e.mean_log_posterior)
                };
                rows.push(Row {
                    family: cmp.family,
                    pre: ckname(cmp.pre),
                    post: ckname(cmp.post),
                    method: c.method,
                    layer: c.layer,
                    metric: name.to_string(),
                    pre_value: pre_v,
                    post_value: post_v,
                    delta: obs[s],
                    ci95: basic_bootstrap_interval(obs[s], &bs, 0.95),
                    p: permutation_p_two_sided(obs[s], &ns),
                    p_bh: None,
                    p_holm: None,
                    n_permutations: ns.len(),
                    p_floor: p_floor(ns.len()),
                    n_questions: ps.diffs.len(),
                    n_bootstrap: bs.len(),
                    seed: cfg.seed,
                    test: "paired sign-flip permutation of per-question held-out scores (two-sided); basic question-bootstrap CI".into(),
                });
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
    }
    // Corrections within each family, over the family metrics.
    for fam in [
        Family::EmVsBase,
        Family::BenignVsBase,
        Family::EmVsBenign,
        Family::OtherVsBase,
    ] {
        let idx: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].family == fam && FAMILY_METRICS.contains(&rows[i].metric.as_str()))
            .collect();
        let ps: Vec<f64> = idx.iter().map(|&i| rows[i].p).collect();
        let bh = bh_adjust(&ps);
        let holm = holm_adjust(&ps);
        for (j, &i) in idx.iter().enumerate() {
            rows[i].p_bh = Some(bh[j]);
            rows[i].p_holm = Some(holm[j]);
        }
    }
    let (sensitivity, verdicts) = sensitivity_and_verdicts(bundle, &rows, cfg);
    Ok(Report {
        tool_version: crate::TOOL_VERSION.into(),
        layer_convention: crate::LAYER_CONVENTION.into(),
        centre_note: "M1 centred: every checkpoint's centroids minus the mean of the base checkpoint's centroids (the same centre for all checkpoints; under permutation/bootstrap of a base comparison it is recomputed from the permuted base).".into(),
        config: cfg.clone(),
        bundle_provenance: bundle.provenance.clone(),
        personas: bundle.personas.iter().map(|p| p.name.clone()).collect(),
        n_questions: bundle.n_questions(),
        checkpoints: bundle.checkpoints.iter().map(|c| (c.name.clone(), c.role.name().to_string(), c.label.clone())).collect(),
        methods: bundle.methods.clone(),
        layers: bundle.layers.clone(),
        bases: coords.iter().map(basis_view).collect(),
        checkpoint_views,
        pair_views,
        rows,
        sensitivity,
        verdicts,
    })
}

fn basis_view(c: &MethodLayerCoords) -> BasisView {
    BasisView {
        method: c.method,
        layer: c.layer,
        dim: c.dim,
        k: c.k,
        residual_variance_retained: c.retained_fraction(),
    }
}

pub fn criterion_name(t: f64) -> String {
    format!("{t}x")
}

/// Sensitivity rows (EM vs benign ratio per cell) and verdicts under every criterion.
/// A cell passes a ratio criterion t when its EM-vs-base BH-adjusted p < alpha and
/// |Δ_EM| >= t·|Δ_benign|; under "p-only" the p condition alone. A metric supports success when
/// it passes under both methods with the same sign of Δ_EM at >= min_layers layers.
/// Kill: every family p-value of this EM condition (raw, EM vs base) is > kill_p at every layer
/// under both methods. Otherwise inconclusive.
pub fn sensitivity_and_verdicts(
    bundle: &Bundle,
    rows: &[Row],
    cfg: &AnalysisConfig,
) -> (Vec<SensitivityRow>, Vec<Verdict>) {
    let mut sens = Vec::new();
    let mut verdicts = Vec::new();
    let benign = bundle
        .checkpoint_by_role(&Role::Benign)
        .first()
        .map(|&i| bundle.checkpoints[i].name.clone());
    let min_layers = cfg
        .min_layers
        .unwrap_or(((bundle.layers.len() as f64) * 0.6).ceil() as usize)
        .max(1);
    let mut criteria: Vec<(String, Option<f64>)> = cfg
        .thresholds
        .iter()
        .map(|&t| (criterion_name(t), Some(t)))
        .collect();
    criteria.push(("p-only".into(), None));
    for em in bundle.checkpoint_by_role(&Role::Em) {
        let em_name = &bundle.checkpoints[em].name;
        let find = |fam: Family, post: &str, m: Method, l: u32, metric: &str| {
            rows.iter().find(|r| {
                r.family == fam
                    && r.post == post
                    && r.method == m
                    && r.layer == l
                    && r.metric == metric
            })
        };
        for metric in FAMILY_METRICS {
            for &m in &bundle.methods {
                for &l in &bundle.layers {
                    let Some(re) = find(Family::EmVsBase, em_name, m, l, metric) else {
                        continue;
                    };
                    let rb = benign
                        .as_ref()
                        .and_then(|b| find(Family::BenignVsBase, b, m, l, metric));
                    let delta_benign = rb.map(|r| r.delta).unwrap_or(f64::NAN);
                    let sig = re.p_bh.unwrap_or(1.0) < cfg.alpha;
                    let passes = criteria
                        .iter()
                        .map(|(name, t)| {
                            let ok = match t {
                                None => sig,
                                Some(t) => {
                                    sig && rb.is_some() && re.delta.abs() >= t * delta_benign.abs()
                                }
                            };
                            (name.clone(), ok)
                        })
                        .collect();
                    sens.push(SensitivityRow {
                        em: em_name.clone(),
                        benign: benign.clone().unwrap_or_default(),
                        method: m,
                        layer: l,
                        metric: metric.to_string(),
                        delta_em: re.delta,
                        delta_benign,
                        ratio: re.delta / delta_benign,
                        p_bh_em: re.p_bh.unwrap_or(1.0),
                        p_holm_em: re.p_holm.unwrap_or(1.0),
                        passes,
                    });
                }
            }
        }
        let kill = rows
            .iter()
            .filter(|r| {
                r.family == Family::EmVsBase
                    && r.post == *em_name
                    && FAMILY_METRICS.contains(&r.metric.as_str())
            })
            .all(|r| r.p > cfg.kill_p);
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
                    let signs: Vec<f64> = cells.iter().map(|s| s.delta_em.signum()).collect();
                    let same_sign = signs.windows(2).all(|w| w[0] == w[1]);
                    if all_methods && same_sign && cells.len() == bundle.methods.len() {
                        layers_ok.push(l);
                    }
                }
                if layers_ok.len() >= min_layers {
                    supporting.push((metric.to_string(), layers_ok));
                }
            }
            let (verdict, explanation) = if !supporting.is_empty() {
                (
                    "success",
                    format!(
                        "{} metric(s) significant (BH p < {}{}) with the same direction under every method at >= {min_layers} of {} layers",
                        supporting.len(),
                        cfg.alpha,
                        if cname == "p-only" { String::new() } else { format!(", |Δ_EM| >= {cname} |Δ_benign|") },
                        bundle.layers.len()
                    ),
                )
            } else if kill {
                (
                    "kill",
                    format!(
                        "every EM-vs-base p-value > {} at every layer under every method",
                        cfg.kill_p
                    ),
                )
            } else {
                ("inconclusive", format!("no metric meets the success rule at >= {min_layers} layers, and the kill rule does not hold"))
            };
            verdicts.push(Verdict {
                em: em_name.clone(),
                criterion: cname.clone(),
                verdict: verdict.into(),
                supporting,
                explanation,
            });
        }
    }
    (sens, verdicts)
}
