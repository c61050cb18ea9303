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

/// One unit of analysis work. The CLI runs one task per job on threads; the browser splits the
/// permutations of a job into ranges and runs them in Web Workers. Results do not depend on the
/// split: permutation and bootstrap draw `i` always comes from its own RNG stream `i`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Task {
    /// Paired swap-permutation null of the geometry metrics, draws `start..end`.
    GeometryNull {
        ml: usize,
        comparison: usize,
        start: usize,
        end: usize,
    },
    /// Question bootstrap of the geometry deltas, draws `start..end`.
    GeometryBootstrap {
        ml: usize,
        comparison: usize,
        start: usize,
        end: usize,
    },
    /// Held-out LDA of one checkpoint with its true labels.
    LdaObserved { ml: usize, checkpoint: usize },
    /// LDA under within-question label permutations `start..end` (M3 above chance).
    LdaLabelNull {
        ml: usize,
        checkpoint: usize,
        start: usize,
        end: usize,
    },
}

impl Task {
    /// Index of the (method, layer) this task belongs to.
    pub fn method_layer(&self) -> usize {
        match *self {
            Task::GeometryNull { ml, .. }
            | Task::GeometryBootstrap { ml, .. }
            | Task::LdaObserved { ml, .. }
            | Task::LdaLabelNull { ml, .. } => ml,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum TaskOutput {
    GeometryNull(Vec<[f64; 4]>),
    GeometryBootstrap(Vec<Option<[f64; 4]>>),
    LdaObserved(crate::lda::Evaluation),
    LdaLabelNull(Vec<[f64; 2]>),
}

/// Everything computed for one (method, layer): per comparison the geometry result (with its
/// null and bootstrap), per checkpoint the LDA evaluation and label-permutation null.
#[derive(Clone, Debug, PartialEq)]
pub struct CellResult {
    pub geometry: Vec<PairGeometryResult>,
    pub geometry_null: Vec<Vec<[f64; 4]>>,
    pub lda: Vec<crate::lda::Evaluation>,
    pub lda_null: Vec<Vec<[f64; 2]>>,
    /// Per comparison: the paired M3 test (computed once here, not per report).
    pub m3: Vec<M3Paired>,
}

/// The analysis of one bundle under one configuration: coordinates, comparisons and the task
/// list. Built identically in the CLI, the page and each Web Worker.
pub struct Plan {
    pub cfg: AnalysisConfig,
    pub coords: Vec<MethodLayerCoords>,
    pub comparisons: Vec<Comparison>,
    pub base: usize,
    pub axis: usize,
    pub n_checkpoints: usize,
    /// The last LDA built, reused by consecutive tasks of the same (method, layer, checkpoint).
    lda_cache: std::sync::Mutex<Option<((usize, usize), std::sync::Arc<Lda>)>>,
}

impl Plan {
    pub fn new(bundle: &Bundle, cfg: &AnalysisConfig) -> Result<Plan, AnalysisError> {
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
        let coords = bundle_coords(bundle, cfg.components, cfg.seed)?;
        Ok(Plan {
            cfg: cfg.clone(),
            coords,
            comparisons: comps,
            base,
            axis,
            n_checkpoints: bundle.checkpoints.len(),
            lda_cache: std::sync::Mutex::new(None),
        })
    }

    /// The tasks of (method, layer) `ml`, permutations split into ranges of at most `chunk`.
    pub fn tasks(&self, ml: usize, chunk: usize) -> Vec<Task> {
        let chunk = chunk.max(1);
        let ranges = |n: usize| {
            (0..n.div_ceil(chunk))
                .map(move |i| (i * chunk, ((i + 1) * chunk).min(n)))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        for checkpoint in 0..self.n_checkpoints {
            out.push(Task::LdaObserved { ml, checkpoint });
            for (start, end) in ranges(self.cfg.m3_label_permutations) {
                out.push(Task::LdaLabelNull {
                    ml,
                    checkpoint,
                    start,
                    end,
                });
            }
        }
        for comparison in 0..self.comparisons.len() {
            for (start, end) in ranges(self.cfg.permutations) {
                out.push(Task::GeometryNull {
                    ml,
                    comparison,
                    start,
                    end,
                });
            }
            for (start, end) in ranges(self.cfg.bootstrap) {
                out.push(Task::GeometryBootstrap {
                    ml,
                    comparison,
                    start,
                    end,
                });
            }
        }
        out
    }

    fn pair_geometry(&self, ml: usize, ci: usize) -> PairGeometry<'_> {
        let c = &self.coords[ml];
        let cmp = &self.comparisons[ci];
        let centre = if cmp.pre == self.base {
            Centre::FromPre
        } else {
            Centre::Fixed(mean_rows(&c.centroids[self.base], c.n_personas, c.dim))
        };
        PairGeometry::new(c, cmp.pre, cmp.post, self.axis, centre, self.cfg.seed)
    }

    fn lda(&self, ml: usize, ck: usize) -> std::sync::Arc<Lda> {
        let mut cache = self.lda_cache.lock().expect("no poisoned LDA cache");
        if let Some((key, lda)) = cache.as_ref() {
            if *key == (ml, ck) {
                return lda.clone();
            }
        }
        let lda = std::sync::Arc::new(Lda::new(
            Samples::from_coords(&self.coords[ml], ck),
            self.cfg.folds,
        ));
        *cache = Some(((ml, ck), lda.clone()));
        lda
    }

    fn lda_label(&self, ml: usize) -> String {
        let c = &self.coords[ml];
        format!("m3-labels/{}/L{}", c.method.name(), c.layer)
    }

    pub fn run_task(&self, task: &Task) -> TaskOutput {
        match *task {
            Task::GeometryNull {
                ml,
                comparison,
                start,
                end,
            } => {
                TaskOutput::GeometryNull(self.pair_geometry(ml, comparison).null_deltas(start..end))
            }
            Task::GeometryBootstrap {
                ml,
                comparison,
                start,
                end,
            } => TaskOutput::GeometryBootstrap(
                self.pair_geometry(ml, comparison)
                    .bootstrap_deltas(start..end),
            ),
            Task::LdaObserved { ml, checkpoint } => {
                TaskOutput::LdaObserved(self.lda(ml, checkpoint).observed())
            }
            Task::LdaLabelNull {
                ml,
                checkpoint,
                start,
                end,
            } => TaskOutput::LdaLabelNull(self.lda(ml, checkpoint).label_permutation_null(
                self.cfg.seed,
                &self.lda_label(ml),
                start..end,
            )),
        }
    }

    /// Puts the outputs of every task of `ml` (any order, any split) together.
    pub fn cell_result(&self, ml: usize, outputs: &[(Task, TaskOutput)]) -> CellResult {
        let nc = self.comparisons.len();
        let nck = self.n_checkpoints;
        let mut gnull: Vec<Vec<(usize, Vec<[f64; 4]>)>> = vec![vec![]; nc];
        let mut gboot: Vec<Vec<(usize, Vec<Option<[f64; 4]>>)>> = vec![vec![]; nc];
        let mut lobs: Vec<Option<crate::lda::Evaluation>> = vec![None; nck];
        let mut lnull: Vec<Vec<(usize, Vec<[f64; 2]>)>> = vec![vec![]; nck];
        for (task, out) in outputs {
            match (task, out) {
                (
                    Task::GeometryNull {
                        ml: m,
                        comparison,
                        start,
                        ..
                    },
                    TaskOutput::GeometryNull(v),
                ) if *m == ml => gnull[*comparison].push((*start, v.clone())),
                (
                    Task::GeometryBootstrap {
                        ml: m,
                        comparison,
                        start,
                        ..
                    },
                    TaskOutput::GeometryBootstrap(v),
                ) if *m == ml => gboot[*comparison].push((*start, v.clone())),
                (Task::LdaObserved { ml: m, checkpoint }, TaskOutput::LdaObserved(e))
                    if *m == ml =>
                {
                    lobs[*checkpoint] = Some(e.clone())
                }
                (
                    Task::LdaLabelNull {
                        ml: m,
                        checkpoint,
                        start,
                        ..
                    },
                    TaskOutput::LdaLabelNull(v),
                ) if *m == ml => lnull[*checkpoint].push((*start, v.clone())),
                _ => {}
            }
        }
        fn concat<T: Clone>(mut parts: Vec<(usize, Vec<T>)>) -> Vec<T> {
            parts.sort_by_key(|p| p.0);
            parts.into_iter().flat_map(|p| p.1).collect()
        }
        let c = &self.coords[ml];
        let (p, d) = (c.n_personas, c.dim);
        let mut geometry = Vec::new();
        let mut geometry_null = Vec::new();
        for (ci, (n, b)) in gnull.into_iter().zip(gboot).enumerate() {
            let g = self.pair_geometry(ml, ci);
            let (pre, post) = (&c.centroids[g.pre], &c.centroids[g.post]);
            let (pre_values, post_values) =
                crate::geometry::pair_levels(pre, post, p, d, self.axis, &g.centre);
            let delta: [f64; 4] = std::array::from_fn(|s| post_values[s] - pre_values[s]);
            let null = concat(n);
            geometry.push(g.assemble(pre_values, post_values, delta, &null, &concat(b)));
            geometry_null.push(null);
        }
        let lda: Vec<crate::lda::Evaluation> = lobs
            .into_iter()
            .map(|e| e.expect("every LdaObserved task ran"))
            .collect();
        let scores: Vec<Vec<Option<[f64; 2]>>> = (0..nck)
            .map(|ck| per_question_scores(&Samples::from_coords(c, ck), &lda[ck]))
            .collect();
        let m3 = self
            .comparisons
            .iter()
            .map(|cmp| self.m3_paired(ml, cmp, &scores))
            .collect();
        CellResult {
            geometry,
            geometry_null,
            lda,
            lda_null: lnull.into_iter().map(concat).collect(),
            m3,
        }
    }

    /// The report over the (method, layer)s whose results are present. With every cell present
    /// this is exactly `analyze`; with some missing (the page while workers run), corrections
    /// and verdicts cover the present cells only.
    pub fn report(&self, bundle: &Bundle, cells: &[Option<CellResult>]) -> Report {
        let cfg = &self.cfg;
        let base = self.base;
        let nck = self.n_checkpoints;
        let p = bundle.n_personas();
        let mut checkpoint_views = Vec::new();
        let mut pair_views = Vec::new();
        let mut rows = Vec::new();
        let ckname = |i: usize| bundle.checkpoints[i].name.clone();
        for (ml, c) in self.coords.iter().enumerate() {
            let Some(Some(cell)) = cells.get(ml) else {
                continue;
            };
            let centre = mean_rows(&c.centroids[base], p, c.dim);
            for ck in 0..nck {
                let obs = &cell.lda[ck];
                let null = &cell.lda_null[ck];
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
                    m3_p_above_chance_log_posterior: permutation_p_greater(
                        obs.mean_log_posterior,
                        &nl,
                    ),
                    m3_n_label_permutations: null.len(),
                    m3_null_mean_accuracy: na.iter().sum::<f64>() / na.len() as f64,
                    m3_null_mean_log_posterior: nl.iter().sum::<f64>() / nl.len() as f64,
                });
            }
            for (ci, cmp) in self.comparisons.iter().enumerate() {
                let g = cell.geometry[ci].clone();
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
                let m3 = &cell.m3[ci];
                for (s, name) in ["M3_accuracy", "M3_log_posterior"].iter().enumerate() {
                    let (pre_e, post_e) = (&cell.lda[cmp.pre], &cell.lda[cmp.post]);
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
                        delta: m3.delta[s],
                        ci95: m3.ci95[s],
                        p: m3.p[s],
                        p_bh: None,
                        p_holm: None,
                        n_permutations: m3.n_permutations,
                        p_floor: p_floor(m3.n_permutations),
                        n_questions: m3.n_questions,
                        n_bootstrap: m3.n_bootstrap,
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
                .filter(|&i| {
                    rows[i].family == fam && FAMILY_METRICS.contains(&rows[i].metric.as_str())
                })
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
        Report {
            tool_version: crate::TOOL_VERSION.into(),
            layer_convention: crate::LAYER_CONVENTION.into(),
            centre_note: "M1 centred: every checkpoint's centroids minus the mean of the base checkpoint's centroids (the same centre for all checkpoints; under permutation/bootstrap of a base comparison it is recomputed from the permuted base).".into(),
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
        }
    }

    /// M3 pre vs post: paired sign-flip test and bootstrap of per-question held-out scores
    /// (`scores` per checkpoint).
    fn m3_paired(&self, ml: usize, cmp: &Comparison, scores: &[Vec<Option<[f64; 2]>>]) -> M3Paired {
        let c = &self.coords[ml];
        let cfg = &self.cfg;
        let label = format!(
            "m3-paired/{}/L{}/{}->{}",
            c.method.name(),
            c.layer,
            cmp.pre,
            cmp.post
        );
        let ps = PairedScores::new(&scores[cmp.pre], &scores[cmp.post], cfg.seed, label);
        let obs = ps.observed();
        let null = ps.null(0..cfg.permutations);
        let boot = ps.bootstrap(0..cfg.bootstrap);
        let col = |v: &[[f64; 2]], s: usize| v.iter().map(|x| x[s]).collect::<Vec<f64>>();
        M3Paired {
            delta: obs,
            p: [0, 1].map(|s| permutation_p_two_sided(obs[s], &col(&null, s))),
            ci95: [0, 1].map(|s| basic_bootstrap_interval(obs[s], &col(&boot, s), 0.95)),
            n_permutations: null.len(),
            n_bootstrap: boot.len(),
            n_questions: ps.diffs.len(),
            null,
        }
    }
}

/// Result of the paired M3 test of one comparison ([accuracy, log posterior]).
#[derive(Clone, Debug, PartialEq)]
pub struct M3Paired {
    pub delta: [f64; 2],
    pub p: [f64; 2],
    pub ci95: [Option<[f64; 2]>; 2],
    pub n_permutations: usize,
    pub n_bootstrap: usize,
    pub n_questions: usize,
    pub null: Vec<[f64; 2]>,
}

pub fn analyze(
    bundle: &Bundle,
    cfg: &AnalysisConfig,
    progress: Progress,
) -> Result<Report, AnalysisError> {
    progress(&format!(
        "building analysis coordinates ({} residual components)",
        cfg.components
    ));
    let plan = Plan::new(bundle, cfg)?;
    // One task per job natively: threads already keep the cores busy.
    let chunk = cfg
        .permutations
        .max(cfg.bootstrap)
        .max(cfg.m3_label_permutations);
    let tasks: Vec<Task> = (0..plan.coords.len())
        .flat_map(|ml| plan.tasks(ml, chunk))
        .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = tasks.len();
    let outs = crate::parallel::par_map(tasks.len(), |i| {
        let out = plan.run_task(&tasks[i]);
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(&format!("analysis: {n}/{total} tasks done"));
        out
    });
    let pairs: Vec<(Task, TaskOutput)> = tasks.into_iter().zip(outs).collect();
    let cells: Vec<Option<CellResult>> = (0..plan.coords.len())
        .map(|ml| Some(plan.cell_result(ml, &pairs)))
        .collect();
    Ok(plan.report(bundle, &cells))
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
