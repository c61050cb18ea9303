//! The whole analysis of a bundle: every (method, layer) x comparison x metric, tests,
//! corrections, the benign-vs-EM sensitivity rows and the pre-registered verdict.

use crate::bundle::{Bundle, Method, Role};
use crate::coords::{bundle_coords, CoordsError, CoordsMode, MethodLayerCoords};
use crate::geometry::{
    bootstrap_cell, bootstrap_weights, gram_of_rows, PairGeometry, PairGeometryResult, Stats,
    GEOMETRY_METRICS, N_GEOMETRY,
};
use crate::lda::{per_question_scores, Lda, PairedScores, Samples};
use crate::stats::{
    basic_bootstrap_interval, bh_adjust, holm_adjust, p_floor, permutation_p_greater,
    permutation_p_less, permutation_p_two_sided,
};
use serde::{Deserialize, Serialize};

/// The analysis defaults: one home for the CLI's arguments and the page.
pub mod defaults {
    pub const PERMUTATIONS: usize = 10_000;
    pub const M3_LABEL_PERMUTATIONS: usize = 500;
    pub const BOOTSTRAP: usize = 1_000;
    pub const SEED: u64 = 0;
    /// Residual principal components of M3's features (and of a compact bundle's basis).
    pub const COMPONENTS: usize = 256;
    pub const FOLDS: usize = 5;
    pub const ALPHA: f64 = 0.01;
    pub const THRESHOLDS: [f64; 3] = [1.5, 2.0, 3.0];
    pub const PRIMARY_THRESHOLD: f64 = 2.0;
    pub const KILL_P: f64 = 0.5;
    /// Equivalence margin of the kill rule's second form: every 95% CI inside ±δ.
    pub const EQUIVALENCE_DELTA: f64 = 0.01;
    pub const AXIS_PERSONA: &str = "assistant";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnalysisConfig {
    pub permutations: usize,
    /// Label permutations for the per-checkpoint "M3 above chance" test.
    pub m3_label_permutations: usize,
    pub bootstrap: usize,
    pub seed: u64,
    /// Residual principal components of M3's features (full bundles; compact bundles carry
    /// their own). M1/M2 always use every dimension of a full bundle.
    pub components: usize,
    pub folds: usize,
    /// Significance level on BH-adjusted p-values for the verdict.
    pub alpha: f64,
    /// EM/benign ratio thresholds of the sensitivity rows.
    pub thresholds: Vec<f64>,
    pub primary_threshold: f64,
    /// A metric supports success at >= this many layers (default: a majority, floor(L/2)+1).
    pub min_layers: Option<usize>,
    /// Kill rule (plan): every family p-value above this.
    pub kill_p: f64,
    /// Kill rule (equivalence): every 95% CI inside ±this.
    #[serde(default = "default_equivalence_delta")]
    pub equivalence_delta: f64,
    pub axis_persona: String,
}

fn default_equivalence_delta() -> f64 {
    defaults::EQUIVALENCE_DELTA
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            permutations: defaults::PERMUTATIONS,
            m3_label_permutations: defaults::M3_LABEL_PERMUTATIONS,
            bootstrap: defaults::BOOTSTRAP,
            seed: defaults::SEED,
            components: defaults::COMPONENTS,
            folds: defaults::FOLDS,
            alpha: defaults::ALPHA,
            thresholds: defaults::THRESHOLDS.to_vec(),
            primary_threshold: defaults::PRIMARY_THRESHOLD,
            min_layers: None,
            kill_p: defaults::KILL_P,
            equivalence_delta: defaults::EQUIVALENCE_DELTA,
            axis_persona: defaults::AXIS_PERSONA.into(),
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

/// Metric names of the rows. The family metrics form the corrected families (one family per
/// compared pair of checkpoints); M1_centred (within-checkpoint centring, for comparison with
/// #205) and the PC1 axis are reported with their raw p-values.
pub const FAMILY_METRICS: [&str; 5] = [
    "M1_raw",
    "M1_separation",
    "M2_em_axis",
    "M3_accuracy",
    "M3_log_posterior",
];
pub const ALL_METRICS: [&str; 7] = [
    "M1_raw",
    "M1_centred",
    "M1_separation",
    "M2_em_axis",
    "M2_pc1_axis",
    "M3_accuracy",
    "M3_log_posterior",
];

/// The direction EM is hypothesised to move a metric: +1 up (M1 raw/centred, M2), −1 down
/// (M1_separation: compression; M3: separability loss).
pub fn direction(metric: &str) -> f64 {
    match metric {
        "M1_separation" | "M3_accuracy" | "M3_log_posterior" => -1.0,
        _ => 1.0,
    }
}

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
    pub m3_shrinkage: Vec<f64>,
    pub m3_n_samples: usize,
    /// One-sided label-permutation p-values (separable above chance?).
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
    #[serde(skip)]
    pub ratio_draws: Vec<RatioDraws>,
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
    // Every benign checkpoint counts: EM vs each benign.
    for benign in bundle.checkpoint_by_role(&Role::Benign) {
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
    /// Question bootstrap of every comparison's geometry deltas, draws `start..end`.
    GeometryBootstrap { ml: usize, start: usize, end: usize },
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
    GeometryNull(Vec<Stats>),
    /// Per draw, per comparison.
    GeometryBootstrap(Vec<Vec<Option<Stats>>>),
    LdaObserved(crate::lda::Evaluation),
    LdaLabelNull(Vec<[f64; 2]>),
}

/// Everything computed for one (method, layer): per comparison the geometry result (with its
/// null and bootstrap), per checkpoint the LDA evaluation and label-permutation null.
#[derive(Clone, Debug, PartialEq)]
pub struct CellResult {
    pub geometry: Vec<PairGeometryResult>,
    pub geometry_null: Vec<Vec<Stats>>,
    /// Per comparison, per bootstrap draw (the same question resample across comparisons).
    pub geometry_boot: Vec<Vec<Option<Stats>>>,
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
        let coords = bundle_coords(
            bundle,
            CoordsMode::Exact {
                lda_components: cfg.components,
            },
            cfg.seed,
        )?;
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
        }
        for (start, end) in ranges(self.cfg.bootstrap) {
            out.push(Task::GeometryBootstrap { ml, start, end });
        }
        out
    }

    fn pair_geometry(&self, ml: usize, ci: usize) -> PairGeometry<'_> {
        let cmp = &self.comparisons[ci];
        PairGeometry::new(&self.coords[ml], cmp.pre, cmp.post, self.axis, self.cfg.seed)
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

    /// The bootstrap stream label of a (method, layer): shared by every comparison and by M3.
    fn bootstrap_label(&self, ml: usize) -> String {
        let c = &self.coords[ml];
        format!("{}/L{}", c.method.name(), c.layer)
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
            Task::GeometryBootstrap { ml, start, end } => {
                let pairs: Vec<(usize, usize)> =
                    self.comparisons.iter().map(|c| (c.pre, c.post)).collect();
                TaskOutput::GeometryBootstrap(bootstrap_cell(
                    &self.coords[ml],
                    &pairs,
                    self.axis,
                    self.cfg.seed,
                    start..end,
                ))
            }
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
        let mut gnull: Vec<Vec<(usize, Vec<Stats>)>> = vec![vec![]; nc];
        let mut gboot: Vec<(usize, Vec<Vec<Option<Stats>>>)> = vec![];
        let mut lobs: Vec<Option<crate::lda::Evaluation>> = vec![None; nck];
        let mut lnull: Vec<Vec<(usize, Vec<[f64; 2]>)>> = vec![vec![]; nck];
        for (task, out) in outputs {
            if task.method_layer() != ml {
                continue;
            }
            match (task, out) {
                (
                    Task::GeometryNull {
                        comparison, start, ..
                    },
                    TaskOutput::GeometryNull(v),
                ) => gnull[*comparison].push((*start, v.clone())),
                (Task::GeometryBootstrap { start, .. }, TaskOutput::GeometryBootstrap(v)) => {
                    gboot.push((*start, v.clone()))
                }
                (Task::LdaObserved { checkpoint, .. }, TaskOutput::LdaObserved(e)) => {
                    lobs[*checkpoint] = Some(e.clone())
                }
                (
                    Task::LdaLabelNull {
                        checkpoint, start, ..
                    },
                    TaskOutput::LdaLabelNull(v),
                ) => lnull[*checkpoint].push((*start, v.clone())),
                _ => {}
            }
        }
        fn concat<T: Clone>(mut parts: Vec<(usize, Vec<T>)>) -> Vec<T> {
            parts.sort_by_key(|p| p.0);
            parts.into_iter().flat_map(|p| p.1).collect()
        }
        let boot_draws = concat(gboot);
        let c = &self.coords[ml];
        let mut geometry = Vec::new();
        let mut geometry_null = Vec::new();
        let mut geometry_boot = Vec::new();
        for (ci, n) in gnull.into_iter().enumerate() {
            let g = self.pair_geometry(ml, ci);
            let null = concat(n);
            let boot: Vec<Option<Stats>> = boot_draws.iter().map(|d| d[ci]).collect();
            geometry.push(g.assemble(g.observed(), &null, &boot));
            geometry_null.push(null);
            geometry_boot.push(boot);
        }
        let lda: Vec<crate::lda::Evaluation> = lobs
            .into_iter()
            .map(|e| e.expect("every LdaObserved task ran"))
            .collect();
        let scores: Vec<Vec<Option<[f64; 2]>>> = (0..nck)
            .map(|ck| per_question_scores(&Samples::from_coords(c, ck), &lda[ck]))
            .collect();
        let weights: Vec<Vec<f64>> = (0..self.cfg.bootstrap)
            .map(|i| bootstrap_weights(self.cfg.seed, &self.bootstrap_label(ml), c.n_questions, i))
            .collect();
        let m3 = self
            .comparisons
            .iter()
            .map(|cmp| self.m3_paired(ml, cmp, &scores, &weights))
            .collect();
        CellResult {
            geometry,
            geometry_null,
            geometry_boot,
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
        let nck = self.n_checkpoints;
        let p = bundle.n_personas();
        let mut checkpoint_views = Vec::new();
        let mut pair_views = Vec::new();
        let mut rows = Vec::new();
        let mut ratio_draws = Vec::new();
        let mut warnings = Vec::new();
        let ckname = |i: usize| bundle.checkpoints[i].name.clone();
        for (ml, c) in self.coords.iter().enumerate() {
            let Some(Some(cell)) = cells.get(ml) else {
                continue;
            };
            for ck in 0..nck {
                let obs = &cell.lda[ck];
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
                    m3_p_above_chance_accuracy: permutation_p_greater(
                        obs.accuracy,
                        &na,
                        tol(obs.accuracy),
                    ),
                    m3_p_above_chance_log_posterior: permutation_p_greater(
                        obs.mean_log_posterior,
                        &nl,
                        tol(obs.mean_log_posterior),
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
                for s in 0..N_GEOMETRY {
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
                        p: g.p[s],
                        p_two_sided: g.p_two_sided[s],
                        p_bh: None,
                        p_holm: None,
                        n_permutations: g.n_permutations,
                        p_floor: p_floor(g.n_permutations),
                        n_questions: g.n_questions_paired_min,
                        n_bootstrap: g.n_bootstrap - g.n_bootstrap_skipped,
                        seed: cfg.seed,
                        test: if crate::geometry::GEOMETRY_IS_LEVEL[s] {
                            "paired question-level swap permutation (two-sided); basic question-bootstrap CI"
                        } else {
                            "paired question-level swap permutation (one-sided, greater; two-sided also reported); basic question-bootstrap CI"
                        }
                        .into(),
                        exact: c.exact,
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
                        p_two_sided: m3.p_two_sided[s],
                        p_bh: None,
                        p_holm: None,
                        n_permutations: m3.n_permutations,
                        p_floor: p_floor(m3.n_permutations),
                        n_questions: m3.n_questions,
                        n_bootstrap: m3.n_bootstrap,
                        seed: cfg.seed,
                        test: "paired sign-flip permutation of per-question held-out scores (one-sided: separability loss; two-sided also reported); basic question-bootstrap CI".into(),
                        exact: true,
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
                    for (mi, metric) in FAMILY_METRICS.iter().enumerate() {
                        let draws: Vec<[f64; 2]> = match GEOMETRY_METRICS
                            .iter()
                            .position(|m| m == metric)
                        {
                            Some(s) => cell.geometry_boot[ei]
                                .iter()
                                .zip(&cell.geometry_boot[bi])
                                .filter_map(|(x, y)| Some([(*x)?[s], (*y)?[s]]))
                                .collect(),
                            None => {
                                let s = mi + 2 - FAMILY_METRICS.len(); // M3 metrics are last
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
                warnings.push(format!(
                    "method {} layer {}: compact coordinates (k = {} of the residual directions): M1/M2 permutation and bootstrap draws miss the residual outside them, so their p-values and intervals are approximate; run `analyze` on the full bundle for exact values",
                    c.method.name(),
                    c.layer,
                    c.k
                ));
            }
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
            ratio_draws,
        }
    }

    /// M3 pre vs post: paired sign-flip test and bootstrap of per-question held-out scores
    /// (`scores` per checkpoint).
    fn m3_paired(
        &self,
        ml: usize,
        cmp: &Comparison,
        scores: &[Vec<Option<[f64; 2]>>],
        weights: &[Vec<f64>],
    ) -> M3Paired {
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
        let boot = ps.bootstrap(weights);
        let col = |v: &[[f64; 2]], s: usize| v.iter().map(|x| x[s]).collect::<Vec<f64>>();
        let kept: Vec<[f64; 2]> = boot.iter().flatten().copied().collect();
        // Scale of each statistic: accuracy lives in [0, 1]; the log posterior's scale is the
        // magnitude of the levels it is the difference of.
        let lp_scale = cell_lp_scale(scores, cmp);
        let tol = |s: usize| crate::geometry::tie_tolerance(c.exact, if s == 0 { 1.0 } else { lp_scale });
        M3Paired {
            delta: obs,
            // Pre-registered: separability falls (one-sided, less).
            p: [0, 1].map(|s| permutation_p_less(obs[s], &col(&null, s), tol(s))),
            p_two_sided: [0, 1].map(|s| permutation_p_two_sided(obs[s], &col(&null, s), tol(s))),
            ci95: [0, 1].map(|s| basic_bootstrap_interval(obs[s], &col(&kept, s), 0.95)),
            n_permutations: null.len(),
            n_bootstrap: kept.len(),
            n_questions: ps.diffs.len(),
            null,
            boot,
        }
    }
}

/// The adapter-level rows of a report (see [`AdapterLevelRow`]).
fn adapter_level_rows(bundle: &Bundle, rows: &[Row], warnings: &mut Vec<String>) -> Vec<AdapterLevelRow> {
    let names = |role: Role| -> Vec<String> {
        bundle
            .checkpoint_by_role(&role)
            .iter()
            .map(|&i| bundle.checkpoints[i].name.clone())
            .collect()
    };
    let (em, benign) = (names(Role::Em), names(Role::Benign));
    if em.len() < 2 || benign.len() < 2 {
        return vec![];
    }
    let mut out = Vec::new();
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
                    deltas(Family::EmVsBase, &em),
                    deltas(Family::BenignVsBase, &benign),
                ) else {
                    continue;
                };
                let scale = a.iter().chain(&b).map(|x| x.abs()).fold(0.0, f64::max);
                let Some((p1, p2, n)) =
                    arm_permutation_test(&a, &b, direction(metric), 1e-12 * scale.max(1e-300))
                else {
                    warnings.push(format!(
                        "adapter-level test skipped: {} EM and {} benign checkpoints have more than a million arm labellings",
                        em.len(),
                        benign.len()
                    ));
                    return out;
                };
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                out.push(AdapterLevelRow {
                    method: m,
                    layer: l,
                    metric: metric.to_string(),
                    em: em.clone(),
                    benign: benign.clone(),
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
    out
}

/// Mean |per-question log posterior| of the two compared checkpoints (scale of M3's Δ).
fn cell_lp_scale(scores: &[Vec<Option<[f64; 2]>>], cmp: &Comparison) -> f64 {
    let vals: Vec<f64> = [cmp.pre, cmp.post]
        .iter()
        .flat_map(|&ck| scores[ck].iter().flatten().map(|s| s[1].abs()))
        .collect();
    (vals.iter().sum::<f64>() / vals.len().max(1) as f64).max(1e-12)
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

/// Result of the paired M3 test of one comparison ([accuracy, log posterior]).
#[derive(Clone, Debug, PartialEq)]
pub struct M3Paired {
    pub delta: [f64; 2],
    /// One-sided (separability loss), the pre-registered test.
    pub p: [f64; 2],
    pub p_two_sided: [f64; 2],
    pub ci95: [Option<[f64; 2]>; 2],
    pub n_permutations: usize,
    pub n_bootstrap: usize,
    pub n_questions: usize,
    pub null: Vec<[f64; 2]>,
    /// Bootstrap draws with the (method, layer)'s shared question weights.
    pub boot: Vec<Option<[f64; 2]>>,
}

pub fn analyze(
    bundle: &Bundle,
    cfg: &AnalysisConfig,
    progress: Progress,
) -> Result<Report, AnalysisError> {
    progress(&format!(
        "building analysis coordinates (full width for M1/M2; {} residual components for M3)",
        cfg.components
    ));
    let plan = Plan::new(bundle, cfg)?;
    // Natively, ranges of about N/2 keep both cores busy without repeating per-task setup much.
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
    let cells: Vec<Option<CellResult>> =
        crate::parallel::par_map(plan.coords.len(), |ml| Some(plan.cell_result(ml, &pairs)));
    Ok(plan.report(bundle, &cells))
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

pub fn criterion_name(t: f64) -> String {
    format!("{t}x")
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
    let min_layers = cfg
        .min_layers
        .unwrap_or(bundle.layers.len() / 2 + 1)
        .max(1);
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
                    // Per benign: (name, Δ_b, direct test ok, draws).
                    let per_benign: Vec<(String, f64, bool, f64, &[[f64; 2]])> = benigns
                        .iter()
                        .filter_map(|b| {
                            let rb = find(Family::BenignVsBase, None, b, m, l, metric)?;
                            let rd = find(Family::EmVsBenign, Some(b), em_name, m, l, metric);
                            let direct_p = rd.and_then(|r| r.p_bh).unwrap_or(1.0);
                            let direct_ok = rd.is_some_and(|r| dir * r.delta > 0.0)
                                && direct_p < cfg.alpha;
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
                            Some((b.clone(), rb.delta, direct_ok, direct_p, d))
                        })
                        .collect();
                    let worst = per_benign
                        .iter()
                        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
                    let passes = criteria
                        .iter()
                        .map(|(name, t)| {
                            let ok = match t {
                                None => sig,
                                Some(t) => {
                                    sig && !per_benign.is_empty()
                                        && per_benign.iter().all(|(_, db, direct_ok, _, d)| {
                                            *direct_ok
                                                && ratio_margin_lower(re.delta, *db, dir, *t, d)
                                                    > 0.0
                                        })
                                }
                            };
                            (name.clone(), ok)
                        })
                        .collect();
                    let (benign, delta_benign, ratio_ci95) = match worst {
                        Some((b, db, _, _, d)) => {
                            let reps: Vec<f64> = d.iter().map(|x| x[0] / x[1]).collect();
                            (
                                b.clone(),
                                *db,
                                basic_bootstrap_interval(re.delta / db, &reps, 0.95),
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
                            .map(|x| x.3)
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
            && fam_rows.iter().all(|r| {
                r.ci95
                    .is_some_and(|ci| ci[0] > -delta && ci[1] < delta)
            });
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
                ("not evaluable", "no EM-vs-base rows for this checkpoint".to_string())
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
                            format!("every EM-vs-base family p-value > {} (plan's rule)", cfg.kill_p)
                        } else {
                            String::new()
                        },
                        if kill_plan && kill_equivalence { "; " } else { "" },
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
