//! The whole analysis of a bundle: every (method, layer) x comparison x metric, tests,
//! corrections, the benign-vs-EM sensitivity rows and the pre-registered verdict.
//! This module: the configuration and its defaults, the comparisons and the plan (tasks, cells);
//! `report`: the report and its corrections; `verdict`: sensitivity rows, verdicts and the
//! adapter-level test.

use crate::bundle::{Bundle, Method, Role};
use crate::coords::{bundle_coords, CoordsError, CoordsMode, MethodLayerCoords};
use crate::geometry::{bootstrap_cell, bootstrap_weights, PairGeometry, PairGeometryResult, Stats};
use crate::lda::logistic::evaluate_logistic_probe;
use crate::lda::per_class::evaluate_per_class_lda;
use crate::lda::{per_question_scores, Lda, PairedScores, Samples};
use crate::stats::{basic_bootstrap_interval, permutation_p_less, permutation_p_two_sided};
use serde::{Deserialize, Serialize};

mod reference;
mod report;
mod verdict;
pub use reference::*;
pub use report::*;
pub use verdict::*;

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
    /// M3's features on full bundles: every hidden dimension (scikit-learn's estimator on the
    /// activations themselves, the default) or the top `components` residual PCs. Compact
    /// bundles always use their stored components.
    #[serde(default)]
    pub m3_features: M3Features,
    /// Also fit the logistic probe (M3's robustness rows, on the residual components).
    #[serde(default)]
    pub logistic_probe: bool,
}

/// What M3's LDA is fitted on (full bundles).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum M3Features {
    #[default]
    FullActivations,
    Components,
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
            m3_features: M3Features::FullActivations,
            logistic_probe: false,
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
/// M3's metrics, in the order of `M3Paired`'s arrays.
pub const M3_METRICS: [&str; 2] = ["M3_accuracy", "M3_log_posterior"];
/// The logistic probe's rows (`--logistic-probe`), outside the families.
pub const PROBE_METRICS: [&str; 2] = ["M3_probe_accuracy", "M3_probe_log_posterior"];
/// Metrics whose point estimate a compact bundle reproduces exactly (functions of the centroids,
/// which it stores exactly). `M1_separation` also needs each persona's within-persona spread:
/// exact when the bundle carries the energy outside its stored components per persona
/// (`coords::OUTSIDE_ENERGY_KEY`, compact bundles made since 2026-11-30), otherwise that energy
/// is spread evenly over checkpoints (approximate). M3 is fitted on the k components.
pub const COMPACT_EXACT_METRICS: [&str; 4] = ["M1_raw", "M1_centred", "M2_em_axis", "M2_pc1_axis"];

/// Whether `analyze` on this bundle gives `metric`'s point estimate exactly (as on the full
/// bundle it came from).
pub fn point_estimate_exact(bundle: &Bundle, metric: &str) -> bool {
    bundle.compact.is_none()
        || COMPACT_EXACT_METRICS.contains(&metric)
        || (metric == "M1_separation"
            && bundle
                .provenance
                .get(crate::coords::OUTSIDE_ENERGY_KEY)
                .is_some())
}

pub const ALL_METRICS: [&str; 7] = [
    "M1_raw",
    "M1_centred",
    "M1_separation",
    "M2_em_axis",
    "M2_pc1_axis",
    "M3_accuracy",
    "M3_log_posterior",
];

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
    /// Held-out M3 of one checkpoint with its true labels (scikit-learn's estimator), and the
    /// pooled estimator's observed scores for the above-chance test.
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
    LdaObserved {
        m3: crate::lda::Evaluation,
        pooled: [f64; 2],
        /// The logistic probe (when configured).
        probe: Option<crate::lda::Evaluation>,
    },
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
    /// Per checkpoint: M3 (scikit-learn's shrinkage LDA) held out.
    pub lda: Vec<crate::lda::Evaluation>,
    /// Per checkpoint: the pooled estimator's observed (accuracy, log posterior) and its
    /// label-permutation null (the above-chance test).
    pub lda_pooled: Vec<[f64; 2]>,
    pub lda_null: Vec<Vec<[f64; 2]>>,
    /// Per comparison: the paired M3 test (computed once here, not per report).
    pub m3: Vec<M3Paired>,
    /// Per checkpoint and per comparison: the logistic probe and its paired test (empty unless
    /// `logistic_probe`).
    pub probe: Vec<crate::lda::Evaluation>,
    pub probe_m3: Vec<M3Paired>,
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
    /// Geometry ranges are rounded up to whole draw batches: a range that ends inside a batch
    /// makes the next range compute that batch again (`DisplacedGram::terms`).
    pub fn tasks(&self, ml: usize, chunk: usize) -> Vec<Task> {
        let ranges = |n: usize, chunk: usize| {
            let chunk = chunk.max(1);
            (0..n.div_ceil(chunk))
                .map(move |i| (i * chunk, ((i + 1) * chunk).min(n)))
                .collect::<Vec<_>>()
        };
        let draw_chunk = chunk
            .max(1)
            .div_ceil(crate::geometry::DRAW_BATCH)
            .saturating_mul(crate::geometry::DRAW_BATCH);
        let mut out = Vec::new();
        for checkpoint in 0..self.n_checkpoints {
            out.push(Task::LdaObserved { ml, checkpoint });
            for (start, end) in ranges(self.cfg.m3_label_permutations, chunk) {
                out.push(Task::LdaLabelNull {
                    ml,
                    checkpoint,
                    start,
                    end,
                });
            }
        }
        for comparison in 0..self.comparisons.len() {
            for (start, end) in ranges(self.cfg.permutations, draw_chunk) {
                out.push(Task::GeometryNull {
                    ml,
                    comparison,
                    start,
                    end,
                });
            }
        }
        for (start, end) in ranges(self.cfg.bootstrap, draw_chunk) {
            out.push(Task::GeometryBootstrap { ml, start, end });
        }
        out
    }

    fn pair_geometry(&self, ml: usize, ci: usize) -> PairGeometry<'_> {
        let cmp = &self.comparisons[ci];
        PairGeometry::new(
            &self.coords[ml],
            cmp.pre,
            cmp.post,
            self.axis,
            self.cfg.seed,
        )
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

    /// M3's samples of a checkpoint: full activations (exact coordinates, the default) or the
    /// stored residual components.
    pub fn m3_samples(&self, ml: usize, ck: usize) -> Samples {
        let c = &self.coords[ml];
        if self.m3_on_full_activations(ml) {
            Samples::full_activations(c, ck).expect("exact full-width coordinates")
        } else {
            Samples::from_coords(c, ck)
        }
    }

    pub fn m3_on_full_activations(&self, ml: usize) -> bool {
        let c = &self.coords[ml];
        self.cfg.m3_features == M3Features::FullActivations && c.exact && c.k == c.dim
    }

    /// What M3 is fitted on in (method, layer) `ml`, in words.
    pub fn m3_features_text(&self, ml: usize) -> String {
        let c = &self.coords[ml];
        if self.m3_on_full_activations(ml) {
            format!("full activations ({} dims)", c.dim)
        } else {
            format!("top {} within-persona residual PCs", c.lda_k)
        }
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
                let pooled = self.lda(ml, checkpoint).observed();
                TaskOutput::LdaObserved {
                    m3: evaluate_per_class_lda(&self.m3_samples(ml, checkpoint), self.cfg.folds),
                    pooled: [pooled.accuracy, pooled.mean_log_posterior],
                    probe: self.cfg.logistic_probe.then(|| {
                        evaluate_logistic_probe(
                            &Samples::from_coords(&self.coords[ml], checkpoint),
                            self.cfg.folds,
                        )
                    }),
                }
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
        let mut lpooled = vec![[f64::NAN; 2]; nck];
        let mut lprobe: Vec<Option<crate::lda::Evaluation>> = vec![None; nck];
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
                (
                    Task::LdaObserved { checkpoint, .. },
                    TaskOutput::LdaObserved { m3, pooled, probe },
                ) => {
                    lobs[*checkpoint] = Some(m3.clone());
                    lpooled[*checkpoint] = *pooled;
                    lprobe[*checkpoint] = probe.clone();
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
            .map(|cmp| self.m3_paired(ml, cmp, &scores, &weights, "m3-paired"))
            .collect();
        let probe: Vec<crate::lda::Evaluation> = lprobe.into_iter().flatten().collect();
        let probe_m3 = if probe.len() == nck {
            let scores: Vec<Vec<Option<[f64; 2]>>> = (0..nck)
                .map(|ck| per_question_scores(&Samples::from_coords(c, ck), &probe[ck]))
                .collect();
            self.comparisons
                .iter()
                .map(|cmp| self.m3_paired(ml, cmp, &scores, &weights, "m3-probe-paired"))
                .collect()
        } else {
            vec![]
        };
        CellResult {
            geometry,
            geometry_null,
            geometry_boot,
            lda,
            lda_pooled: lpooled,
            lda_null: lnull.into_iter().map(concat).collect(),
            m3,
            probe,
            probe_m3,
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
        stream: &str,
    ) -> M3Paired {
        let c = &self.coords[ml];
        let cfg = &self.cfg;
        let label = format!(
            "{stream}/{}/L{}/{}->{}",
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
        // M3's noise floor is wider than the geometry's: standardisation and the Woodbury solve
        // amplify the f32 rounding of stored activations, so a Δ that is zero by construction
        // (a pure shift) comes out at ~1e-7 of the scale (measured on the default study).
        let tol = |s: usize| {
            let scale = if s == 0 { 1.0 } else { lp_scale };
            crate::geometry::tie_tolerance(c.exact, scale).max(M3_TIE_REL_TOL * scale)
        };
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

/// Relative tie tolerance of M3's Δ tests (see `m3_paired`).
pub const M3_TIE_REL_TOL: f64 = 1e-6;

/// Mean |per-question log posterior| of the two compared checkpoints (scale of M3's Δ).
fn cell_lp_scale(scores: &[Vec<Option<[f64; 2]>>], cmp: &Comparison) -> f64 {
    let vals: Vec<f64> = [cmp.pre, cmp.post]
        .iter()
        .flat_map(|&ck| scores[ck].iter().flatten().map(|s| s[1].abs()))
        .collect();
    (vals.iter().sum::<f64>() / vals.len().max(1) as f64).max(1e-12)
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
    analyze_with_cells(bundle, cfg, progress).map(|(report, _, _)| report)
}

/// [`analyze`], also returning the plan and every (method, layer)'s cell (with the permutation
/// nulls the report summarises), for `analyze --figures`' null histograms.
pub fn analyze_with_cells(
    bundle: &Bundle,
    cfg: &AnalysisConfig,
    progress: Progress,
) -> Result<(Report, Plan, Vec<Option<CellResult>>), AnalysisError> {
    progress(&format!(
        "building analysis coordinates (full width for M1/M2 and M3; {} residual components for the above-chance test and the logistic probe)",
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
    let report = plan.report(bundle, &cells);
    Ok((report, plan, cells))
}
