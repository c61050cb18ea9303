//! M1 (compression of persona centroids) and M2 (rotation toward the EM axis) for one
//! (method, layer) and one pair of checkpoints (pre -> post), with the paired question-level
//! permutation test and the question bootstrap.
//!
//! Definitions (c_p = persona centroid of one checkpoint, P personas, a = the axis persona,
//! Δ_p = c_p^post − c_p^pre):
//! - `M1_raw`        = mean over the P(P−1)/2 pairs of cos(c_p, c_r) (the plan's statistic).
//! - `M1_centred`    = the same on c_p − m, m = the mean of *that checkpoint's* centroids
//!   (within-checkpoint centring, as the upstream scripts; for comparison with #205).
//! - `M1_separation` = mean pairwise centroid distance ‖c_p − c_r‖ over the within-persona spread
//!   S = sqrt(mean_p mean_q ‖x_pq − c_p‖²). Invariant to a common shift and to a global
//!   rescaling; a contraction of the centroids toward their mean by s multiplies it by s.
//!   Compression = a *decrease*.
//! - `M2_em_axis`    = mean over p ≠ a of cos(Δ_p, e), e = unit(Δ_a): how far the personas' own
//!   moves point along the assistant's move. Signed; a shared shift along e raises it toward 1,
//!   a shift orthogonal to e leaves it at 0, independent random moves give ≈ 0.
//! - `M2_pc1_axis`   = the same with e = the first principal direction (uncentred) of the P
//!   deltas, signed so that the deltas project positively on it (robustness check).
//!
//! M1 statistics are levels of each checkpoint, Δ = level(post) − level(pre); swapping every
//! question negates Δ, so the null is symmetric and the test two-sided. M2 statistics are defined
//! on the change itself (their value is reported as `post`, with `pre` = 0); they are unchanged
//! when every question is swapped, so their null is not centred on zero and the test is one-sided
//! (greater), with the two-sided p = 2·min(p_greater, p_less) also reported.
//!
//! Every statistic is a function of the Gram matrix of the 2P centroids and of each persona's
//! mean squared activation norm. The permutation (swap pre/post of question q for every persona
//! at once, where both are valid) and the bootstrap (resample questions, the same draw for every
//! checkpoint) move each centroid by a weighted sum of per-question vectors, so the Gram matrix
//! of a draw is K0 + linear terms + a quadratic term ([`DisplacedGram`]): a handful of matrix
//! products per batch of draws, on full-width data when the coordinates are exact.

use crate::coords::MethodLayerCoords;
use crate::linalg::{cosine, dot, norm, sym_eigen_desc};
use crate::rng::Rng;
use crate::stats::{
    basic_bootstrap_interval, permutation_p_greater, permutation_p_less, permutation_p_two_sided,
};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use std::ops::Range;

pub const N_GEOMETRY: usize = 5;
pub const GEOMETRY_METRICS: [&str; N_GEOMETRY] = [
    "M1_raw",
    "M1_centred",
    "M1_separation",
    "M2_em_axis",
    "M2_pc1_axis",
];
/// Level statistics (Δ = post − pre, symmetric null) vs statistics of the change (one-sided).
pub const GEOMETRY_IS_LEVEL: [bool; N_GEOMETRY] = [true, true, true, false, false];

pub type Stats = [f64; N_GEOMETRY];

/// Draws processed per matrix product (memory: sources x dims x DRAW_BATCH f64).
pub const DRAW_BATCH: usize = 128;

/// Entry (i, j) of a row-major n x n matrix.
#[inline]
fn at(g: &[f64], n: usize, i: usize, j: usize) -> f64 {
    g[i * n + j]
}

fn safe_cos(num: f64, a2: f64, b2: f64) -> f64 {
    let den = (a2.max(0.0) * b2.max(0.0)).sqrt();
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Mean off-diagonal cosine of the P vectors whose Gram matrix is `g` (P x P, row-major).
pub fn mean_offdiag_cosine_gram(g: &[f64], p: usize) -> f64 {
    let mut s = 0.0;
    let mut n = 0usize;
    for i in 0..p {
        for j in i + 1..p {
            s += safe_cos(at(g, p, i, j), at(g, p, i, i), at(g, p, j, j));
            n += 1;
        }
    }
    s / n.max(1) as f64
}

/// The Gram matrix of the same vectors minus their mean (H G H, H = I − 11ᵀ/P).
pub fn centred_gram(g: &[f64], p: usize) -> Vec<f64> {
    let row: Vec<f64> = (0..p)
        .map(|i| (0..p).map(|j| at(g, p, i, j)).sum::<f64>() / p as f64)
        .collect();
    let all = row.iter().sum::<f64>() / p as f64;
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            out[i * p + j] = at(g, p, i, j) - row[i] - row[j] + all;
        }
    }
    out
}

/// Mean pairwise distance of the P vectors over the within-persona spread (see module doc).
/// `msq[p]` = mean over persona p's valid questions of ‖x_pq‖².
pub fn separation_index(g: &[f64], msq: &[f64], p: usize) -> f64 {
    let mut dist = 0.0;
    let mut n = 0usize;
    for i in 0..p {
        for j in i + 1..p {
            dist += (at(g, p, i, i) + at(g, p, j, j) - 2.0 * at(g, p, i, j))
                .max(0.0)
                .sqrt();
            n += 1;
        }
    }
    let spread2 = (0..p).map(|i| msq[i] - at(g, p, i, i)).sum::<f64>() / p as f64;
    if spread2 > 0.0 {
        dist / n.max(1) as f64 / spread2.sqrt()
    } else {
        0.0
    }
}

/// The P x P block (a, b) of the 2P x 2P Gram matrix `g` (block 0 = pre, 1 = post).
fn block(g: &[f64], p: usize, a: usize, b: usize) -> Vec<f64> {
    let n = 2 * p;
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            out[i * p + j] = at(g, n, a * p + i, b * p + j);
        }
    }
    out
}

/// Gram matrix of the deltas Δ_p = post_p − pre_p.
fn delta_gram(g: &[f64], p: usize) -> Vec<f64> {
    let n = 2 * p;
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            out[i * p + j] =
                at(g, n, p + i, p + j) - at(g, n, p + i, j) - at(g, n, i, p + j) + at(g, n, i, j);
        }
    }
    out
}

/// Per persona cos(Δ_p, e) with e = unit(Δ_a).
pub fn delta_cos_axis(gd: &[f64], p: usize, a: usize) -> Vec<f64> {
    (0..p)
        .map(|i| safe_cos(at(gd, p, i, a), at(gd, p, i, i), at(gd, p, a, a)))
        .collect()
}

/// Per persona cos(Δ_p, u), u = first principal direction (uncentred) of the deltas, signed so
/// that Σ_p ⟨Δ_p, u⟩ ≥ 0. With (λ, v) the top eigenpair of the deltas' Gram matrix,
/// u = Σ v_i Δ_i, ⟨Δ_p, u⟩ = λ v_p and ‖u‖² = λ.
pub fn delta_cos_pc1(gd: &[f64], p: usize) -> Vec<f64> {
    let (vals, vecs) = sym_eigen_desc(DMatrix::from_row_slice(p, p, gd));
    let lambda = vals.first().copied().unwrap_or(0.0);
    if lambda <= 0.0 {
        return vec![0.0; p];
    }
    let sign = if (0..p).map(|i| vecs[(i, 0)]).sum::<f64>() < 0.0 {
        -1.0
    } else {
        1.0
    };
    (0..p)
        .map(|i| {
            let gii = at(gd, p, i, i);
            if gii > 0.0 {
                sign * vecs[(i, 0)] * (lambda / gii).sqrt()
            } else {
                0.0
            }
        })
        .collect()
}

fn mean_excluding(v: &[f64], skip: usize) -> f64 {
    let n = v.len().saturating_sub(1).max(1);
    v.iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, x)| x)
        .sum::<f64>()
        / n as f64
}

/// The five statistics from the Gram matrix of [pre; post] centroids (2P x 2P, row-major) and
/// each persona's mean squared activation norm. Returns (pre, post); the M2 statistics are
/// statistics of the change, reported in `post` with `pre` = 0.
pub fn pair_statistics(
    g: &[f64],
    msq_pre: &[f64],
    msq_post: &[f64],
    p: usize,
    a: usize,
) -> (Stats, Stats) {
    let level = |b: usize, msq: &[f64]| {
        let gb = block(g, p, b, b);
        [
            mean_offdiag_cosine_gram(&gb, p),
            mean_offdiag_cosine_gram(&centred_gram(&gb, p), p),
            separation_index(&gb, msq, p),
        ]
    };
    let pre = level(0, msq_pre);
    let post = level(1, msq_post);
    let gd = delta_gram(g, p);
    let m2 = mean_excluding(&delta_cos_axis(&gd, p, a), a);
    let pc1 = mean_excluding(&delta_cos_pc1(&gd, p), a);
    (
        [pre[0], pre[1], pre[2], 0.0, 0.0],
        [post[0], post[1], post[2], m2, pc1],
    )
}

fn delta_of(l: (Stats, Stats)) -> Stats {
    std::array::from_fn(|s| l.1[s] - l.0[s])
}

/// Row-major Gram matrix of row vectors (each of width d).
pub fn gram_of_rows(rows: &[&[f64]]) -> Vec<f64> {
    let n = rows.len();
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = dot(rows[i], rows[j]);
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
    g
}

/// Gram matrices of `m` base vectors C_i, each displaced by a weighted sum of per-question
/// source vectors, for many weight vectors w (one per draw) at once:
/// v_i(w) = C_i + coef_i · Σ_q w_q u_{s(i), q}. With σ_s(w) = Σ_q w_q u_{s,q}:
/// ⟨v_i, v_j⟩ = K0_ij + coef_j ⟨C_i, σ_s(j)⟩ + coef_i ⟨C_j, σ_s(i)⟩ + coef_i coef_j ⟨σ_s(i), σ_s(j)⟩.
/// ⟨C_i, σ_s⟩ is linear in w (precomputed inner products of C with every source vector);
/// ⟨σ_s, σ_t⟩ comes from one matrix product for the whole batch plus a small one per draw.
pub struct DisplacedGram {
    m: usize,
    n_src: usize,
    q: usize,
    /// Source width (sources live in the first `sd` coordinates).
    sd: usize,
    k0: Vec<f64>,
    /// (n_src·m) x q: row s·m + i = ⟨C_i, u_{s,q}⟩.
    lin: DMatrix<f64>,
    /// (n_src·sd) x q: column q = the sources of question q, concatenated.
    src: Sources,
}

/// The per-question sources, in f64 or f32. f64 where the page computes the same draws (compact
/// bundles: wasm32 without FMA and the CLI must agree to rounding); f32 on full bundles (CLI
/// only), where it halves the time of the largest product and moves a Gram entry by ~1e-9 of
/// its size (the inner products with the centroids stay f64).
enum Sources {
    F64(DMatrix<f64>),
    F32(DMatrix<f32>),
}

/// One draw's linear and quadratic terms: lin[s·m + i] = ⟨C_i, σ_s⟩, quad[s·n_src + t] = ⟨σ_s, σ_t⟩.
pub struct DrawTerms {
    pub lin: Vec<f64>,
    pub quad: Vec<f64>,
}

impl DisplacedGram {
    /// `base`: m vectors (width ≥ sd); `src`: laid out [q][s][sd] (question-major);
    /// `single`: keep the sources in f32 (see [`Sources`]).
    pub fn new(
        base: &[&[f64]],
        src: Vec<f64>,
        n_src: usize,
        q: usize,
        sd: usize,
        single: bool,
    ) -> Self {
        let m = base.len();
        assert_eq!(src.len(), n_src * sd * q, "source layout");
        let k0 = gram_of_rows(base);
        let src = DMatrix::from_vec(n_src * sd, q, src);
        // ⟨C_i, u_{s,q}⟩ for all i, s, q: the source buffer viewed as sd x (q·n_src).
        let c = DMatrix::<f64>::from_fn(m, sd, |i, j| base[i][j]);
        let view = nalgebra::DMatrixView::<f64>::from_slice(src.as_slice(), sd, q * n_src);
        let all = &c * view; // m x (q·n_src), column q·n_src + s
                             // Column-major m x (q·n_src) is (n_src·m) x q column-major with row s·m + i.
        let lin = DMatrix::<f64>::from_vec(n_src * m, q, all.data.into());
        let src = if single {
            Sources::F32(src.map(|v| v as f32))
        } else {
            Sources::F64(src)
        };
        DisplacedGram {
            m,
            n_src,
            q,
            sd,
            k0,
            lin,
            src,
        }
    }

    pub fn k0(&self) -> &[f64] {
        &self.k0
    }

    /// Linear and quadratic terms of draws `range`, with `weights(i)` the weights of draw i.
    /// Draws are computed in batches aligned to multiples of DRAW_BATCH, whatever the range: a
    /// matrix product's rounding depends on the shape of the batch, and draw i must come out
    /// bit-identical however the work is split (threads, Web Workers).
    pub fn terms(
        &self,
        range: Range<usize>,
        weights: impl Fn(usize) -> Vec<f64>,
    ) -> Vec<(Vec<f64>, DrawTerms)> {
        let mut out = Vec::with_capacity(range.len());
        if range.is_empty() {
            return out;
        }
        for batch in range.start / DRAW_BATCH..=(range.end - 1) / DRAW_BATCH {
            let all: Vec<usize> = (batch * DRAW_BATCH..(batch + 1) * DRAW_BATCH).collect();
            let w_all: Vec<Vec<f64>> = all.iter().map(|&i| weights(i)).collect();
            let w = DMatrix::<f64>::from_fn(self.q, DRAW_BATCH, |qi, j| w_all[j][qi]);
            let lin = &self.lin * &w; // (n_src·m) x DRAW_BATCH
            let sig = match &self.src {
                Sources::F64(src) => src * &w, // (n_src·sd) x DRAW_BATCH
                Sources::F32(src) => (src * w.map(|v| v as f32)).map(|v| v as f64),
            };
            for (j, (&i, wi)) in all.iter().zip(w_all).enumerate() {
                if !range.contains(&i) {
                    continue;
                }
                let col = sig.column(j);
                let s = nalgebra::DMatrixView::<f64>::from_slice(
                    &col.as_slice()[..self.n_src * self.sd],
                    self.sd,
                    self.n_src,
                );
                let quad = s.transpose() * s; // n_src x n_src
                out.push((
                    wi,
                    DrawTerms {
                        lin: lin.column(j).iter().copied().collect(),
                        quad: quad.iter().copied().collect(),
                    },
                ));
            }
        }
        out
    }

    /// The displaced Gram matrix (row-major m x m) for one draw: vector i uses source
    /// `src_of[i]` with coefficient `coef[i]`.
    pub fn gram(&self, t: &DrawTerms, src_of: &[usize], coef: &[f64]) -> Vec<f64> {
        let (m, ns) = (self.m, self.n_src);
        let mut g = self.k0.clone();
        for i in 0..m {
            for j in 0..m {
                let (si, sj) = (src_of[i], src_of[j]);
                g[i * m + j] += coef[j] * t.lin[sj * m + i]
                    + coef[i] * t.lin[si * m + j]
                    + coef[i] * coef[j] * t.quad[si * ns + sj];
            }
        }
        g
    }
}

/// Inputs of the pair tests that depend on the data only: built once per (method, layer,
/// comparison).
pub struct PairGeometry<'a> {
    pub coords: &'a MethodLayerCoords,
    pub pre: usize,
    pub post: usize,
    pub axis_persona: usize,
    label: String,
    seed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PairGeometryResult {
    pub pre_values: Stats,
    pub post_values: Stats,
    pub delta: Stats,
    /// The p-value of the pre-registered test: two-sided for M1, one-sided (greater) for M2.
    pub p: Stats,
    pub p_two_sided: Stats,
    pub ci95_delta: [Option<[f64; 2]>; N_GEOMETRY],
    pub n_permutations: usize,
    pub n_bootstrap: usize,
    /// Bootstrap resamples dropped because some persona had no valid question in them.
    pub n_bootstrap_skipped: usize,
    /// Per persona: |c_p| pre and post.
    pub norm_pre: Vec<f64>,
    pub norm_post: Vec<f64>,
    /// Per persona: cos(c_p, e) and signed projection ⟨c_p, e⟩, pre and post (e = unit(Δ_a)).
    pub cos_axis_pre: Vec<f64>,
    pub cos_axis_post: Vec<f64>,
    pub proj_axis_pre: Vec<f64>,
    pub proj_axis_post: Vec<f64>,
    /// Per persona: cos(Δ_p, e), the terms of M2.
    pub delta_cos_axis: Vec<f64>,
    /// ΔM1_raw split (Shapley, both orders averaged) into the change of the common mean of the
    /// centroids and the change of the persona offsets from it: [mean part, offsets part].
    pub m1_raw_split: [f64; 2],
    /// Questions swappable in the permutation (valid in both checkpoints), minimum over personas.
    pub n_questions_paired_min: usize,
}

/// Tolerance of "at least as extreme", relative to the statistic's scale (the larger |level|),
/// so that a Δ that is zero by construction (equal up to rounding) counts as a tie with itself
/// and gets p = 1. Full bundles: f32 data, f64 statistics (rounding ~1e-8 of the scale); compact
/// bundles: f16 residuals (~1e-6). Far below any Δ a test can detect (e.g. M1_raw's null spread
/// is ~5e-5 of its level for 240 questions at hidden size 3,584).
pub const TIE_REL_TOL: f64 = 1e-7;
pub const TIE_REL_TOL_COMPACT: f64 = 1e-5;

pub fn tie_tolerance(exact: bool, scale: f64) -> f64 {
    (if exact {
        TIE_REL_TOL
    } else {
        TIE_REL_TOL_COMPACT
    }) * scale.abs().max(1e-12)
}

/// The p-values of one statistic: (pre-registered p, two-sided p).
pub fn geometry_p(s: usize, delta: f64, null: &[f64], tol: f64) -> (f64, f64) {
    let two = permutation_p_two_sided(delta, null, tol);
    if GEOMETRY_IS_LEVEL[s] {
        (two, two)
    } else {
        let g = permutation_p_greater(delta, null, tol);
        let l = permutation_p_less(delta, null, tol);
        (g, (2.0 * g.min(l)).min(1.0))
    }
}

impl<'a> PairGeometry<'a> {
    pub fn new(
        coords: &'a MethodLayerCoords,
        pre: usize,
        post: usize,
        axis_persona: usize,
        seed: u64,
    ) -> Self {
        PairGeometry {
            coords,
            pre,
            post,
            axis_persona,
            label: format!(
                "geometry/{}/L{}/{}->{}",
                coords.method.name(),
                coords.layer,
                pre,
                post
            ),
            seed,
        }
    }

    fn centroid_rows(&self) -> Vec<&[f64]> {
        let c = self.coords;
        (0..c.n_personas)
            .map(|i| c.centroid(self.pre, i))
            .chain((0..c.n_personas).map(|i| c.centroid(self.post, i)))
            .collect()
    }

    /// Observed Gram matrix of [pre; post] centroids.
    pub fn observed_gram(&self) -> Vec<f64> {
        gram_of_rows(&self.centroid_rows())
    }

    /// Observed levels (pre, post).
    pub fn observed(&self) -> (Stats, Stats) {
        let c = self.coords;
        pair_statistics(
            &self.observed_gram(),
            &c.mean_sq_norm[self.pre],
            &c.mean_sq_norm[self.post],
            c.n_personas,
            self.axis_persona,
        )
    }

    /// Swap indicators of permutation i (the same for every persona).
    fn swaps(&self, i: usize) -> Vec<f64> {
        let mut rng = Rng::stream(self.seed, &self.label, i as u64);
        (0..self.coords.n_questions)
            .map(|_| if rng.coin() { 1.0 } else { 0.0 })
            .collect()
    }

    /// Δ of the statistics under permutations `range` (indices into 0..N). Swapping question q
    /// moves pre_p by +d_pq/n_p and post_p by −d_pq/n_p, d_pq = x_pq^post − x_pq^pre (zero where
    /// either is invalid; the paired filter makes n_p the same in both checkpoints).
    pub fn null_deltas(&self, range: Range<usize>) -> Vec<Stats> {
        let c = self.coords;
        let (p, q, d) = (c.n_personas, c.n_questions, c.dim);
        if range.is_empty() {
            return vec![];
        }
        // Sources u_{p,q} = d_pq in all d coordinates: [q][p][d].
        let mut src = vec![0.0f64; q * p * d];
        let mut dsq = vec![0.0f64; p * q]; // ‖x^post‖² − ‖x^pre‖²
        for pi in 0..p {
            let (cpre, cpost) = (c.centroid(self.pre, pi), c.centroid(self.post, pi));
            for qi in 0..q {
                if !(c.is_valid(self.pre, pi, qi) && c.is_valid(self.post, pi, qi)) {
                    continue;
                }
                let o = (qi * p + pi) * d;
                let (rpre, rpost) = (c.residual(self.pre, pi, qi), c.residual(self.post, pi, qi));
                for j in 0..d {
                    let r = if j < c.k {
                        rpost[j] as f64 - rpre[j] as f64
                    } else {
                        0.0
                    };
                    src[o + j] = cpost[j] - cpre[j] + r;
                }
                dsq[pi * q + qi] = c.sq_norm(self.post, pi, qi) - c.sq_norm(self.pre, pi, qi);
            }
        }
        let rows = self.centroid_rows();
        let dg = DisplacedGram::new(&rows, src, p, q, d, c.exact);
        let inv_n: Vec<f64> = (0..p)
            .map(|pi| 1.0 / c.n_valid(self.pre, pi).max(1) as f64)
            .collect();
        let src_of: Vec<usize> = (0..2 * p).map(|i| i % p).collect();
        let coef: Vec<f64> = (0..2 * p)
            .map(|i| if i < p { inv_n[i] } else { -inv_n[i - p] })
            .collect();
        let terms = dg.terms(range, |i| self.swaps(i));
        let (msq_pre0, msq_post0) = (&c.mean_sq_norm[self.pre], &c.mean_sq_norm[self.post]);
        terms
            .iter()
            .map(|(w, t)| {
                let g = dg.gram(t, &src_of, &coef);
                let mut msq_pre = msq_pre0.clone();
                let mut msq_post = msq_post0.clone();
                for pi in 0..p {
                    let moved: f64 =
                        (0..q).map(|qi| w[qi] * dsq[pi * q + qi]).sum::<f64>() * inv_n[pi];
                    msq_pre[pi] += moved;
                    msq_post[pi] -= moved;
                }
                delta_of(pair_statistics(
                    &g,
                    &msq_pre,
                    &msq_post,
                    p,
                    self.axis_persona,
                ))
            })
            .collect()
    }

    /// Observed values, permutation p-values and bootstrap CIs (the bootstrap replicates come
    /// from [`bootstrap_cell`]).
    pub fn assemble(
        &self,
        levels: (Stats, Stats),
        null: &[Stats],
        boot: &[Option<Stats>],
    ) -> PairGeometryResult {
        let c = self.coords;
        let (p, q, a) = (c.n_personas, c.n_questions, self.axis_persona);
        let (pre_values, post_values) = levels;
        let delta = delta_of(levels);
        let mut pv = [1.0; N_GEOMETRY];
        let mut p_two = [1.0; N_GEOMETRY];
        let mut ci95_delta = [None; N_GEOMETRY];
        let kept: Vec<Stats> = boot.iter().flatten().copied().collect();
        for s in 0..N_GEOMETRY {
            let ns: Vec<f64> = null.iter().map(|x| x[s]).collect();
            let scale = pre_values[s].abs().max(post_values[s].abs()).max(1e-300);
            (pv[s], p_two[s]) = geometry_p(s, delta[s], &ns, tie_tolerance(c.exact, scale));
            let bs: Vec<f64> = kept.iter().map(|x| x[s]).collect();
            ci95_delta[s] = basic_bootstrap_interval(delta[s], &bs, 0.95);
        }
        let rows = self.centroid_rows();
        let (pre, post) = rows.split_at(p);
        let axis: Vec<f64> = {
            let v: Vec<f64> = post[a].iter().zip(pre[a]).map(|(x, y)| x - y).collect();
            let n = norm(&v);
            if n > 0.0 {
                v.into_iter().map(|x| x / n).collect()
            } else {
                v
            }
        };
        let g = self.observed_gram();
        let gd = delta_gram(&g, p);
        PairGeometryResult {
            pre_values,
            post_values,
            delta,
            p: pv,
            p_two_sided: p_two,
            ci95_delta,
            n_permutations: null.len(),
            n_bootstrap: boot.len(),
            n_bootstrap_skipped: boot.len() - kept.len(),
            norm_pre: pre.iter().map(|r| norm(r)).collect(),
            norm_post: post.iter().map(|r| norm(r)).collect(),
            cos_axis_pre: pre.iter().map(|r| cosine(r, &axis)).collect(),
            cos_axis_post: post.iter().map(|r| cosine(r, &axis)).collect(),
            proj_axis_pre: pre.iter().map(|r| dot(r, &axis)).collect(),
            proj_axis_post: post.iter().map(|r| dot(r, &axis)).collect(),
            delta_cos_axis: delta_cos_axis(&gd, p, a),
            m1_raw_split: m1_raw_split(&g, p),
            n_questions_paired_min: (0..p)
                .map(|pi| {
                    (0..q)
                        .filter(|&qi| c.is_valid(self.pre, pi, qi) && c.is_valid(self.post, pi, qi))
                        .count()
                })
                .min()
                .unwrap_or(0),
        }
    }
}

/// ΔM1_raw = [change due to the common mean] + [change due to the persona offsets], the Shapley
/// split of f(m, o) = M1_raw({m + o_p}) between (m_pre, o_pre) and (m_post, o_post).
pub fn m1_raw_split(g: &[f64], p: usize) -> [f64; 2] {
    // Every vector involved is a combination of the 2P centroids: v = Σ coefs · [pre; post].
    let n = 2 * p;
    let f = |mean_from: usize, off_from: usize| {
        let coefs: Vec<Vec<f64>> = (0..p)
            .map(|i| {
                let mut c = vec![0.0; n];
                for j in 0..p {
                    c[mean_from * p + j] += 1.0 / p as f64;
                    c[off_from * p + j] -= 1.0 / p as f64;
                }
                c[off_from * p + i] += 1.0;
                c
            })
            .collect();
        let mut gm = vec![0.0; p * p];
        for a in 0..p {
            for b in 0..p {
                let mut s = 0.0;
                for i in 0..n {
                    if coefs[a][i] == 0.0 {
                        continue;
                    }
                    for j in 0..n {
                        s += coefs[a][i] * coefs[b][j] * at(g, n, i, j);
                    }
                }
                gm[a * p + b] = s;
            }
        }
        mean_offdiag_cosine_gram(&gm, p)
    };
    let (f00, f10, f01, f11) = (f(0, 0), f(1, 0), f(0, 1), f(1, 1));
    [
        0.5 * ((f10 - f00) + (f11 - f01)),
        0.5 * ((f01 - f00) + (f11 - f10)),
    ]
}

/// Question weights of bootstrap draw i of a (method, layer): multinomial counts over the
/// questions, the same draw for every checkpoint and every comparison (so that ratios of two
/// comparisons' Δ have paired intervals).
pub fn bootstrap_weights(seed: u64, label: &str, q: usize, i: usize) -> Vec<f64> {
    let mut rng = Rng::stream(seed, &format!("bootstrap/{label}"), i as u64);
    let mut w = vec![0.0f64; q];
    for _ in 0..q {
        w[rng.below(q)] += 1.0;
    }
    w
}

/// Bootstrap over questions for every comparison of a (method, layer) at once: per draw, per
/// comparison (pre, post), Δ of the statistics; None where some persona of a compared checkpoint
/// has no valid question in the resample.
pub fn bootstrap_cell(
    c: &MethodLayerCoords,
    comparisons: &[(usize, usize)],
    axis_persona: usize,
    seed: u64,
    range: Range<usize>,
) -> Vec<Vec<Option<Stats>>> {
    let (p, q, k) = (c.n_personas, c.n_questions, c.k);
    let nck = c.centroids.len();
    if range.is_empty() {
        return vec![];
    }
    let m = nck * p;
    let rows: Vec<&[f64]> = (0..nck)
        .flat_map(|ck| (0..p).map(move |pi| (ck, pi)))
        .map(|(ck, pi)| c.centroid(ck, pi))
        .collect();
    // Sources: the residuals x_pq − c_p of every checkpoint, in the first k coordinates.
    let mut src = vec![0.0f64; q * m * k];
    for ck in 0..nck {
        for pi in 0..p {
            for qi in 0..q {
                if c.is_valid(ck, pi, qi) {
                    let o = (qi * m + ck * p + pi) * k;
                    for (a, &b) in src[o..o + k].iter_mut().zip(c.residual(ck, pi, qi)) {
                        *a = b as f64;
                    }
                }
            }
        }
    }
    let dg = DisplacedGram::new(&rows, src, m, q, k, c.exact);
    let label = format!("{}/L{}", c.method.name(), c.layer);
    let terms = dg.terms(range, |i| bootstrap_weights(seed, &label, q, i));
    let src_of: Vec<usize> = (0..m).collect();
    terms
        .iter()
        .map(|(w, t)| {
            // Per (checkpoint, persona): total weight W and weighted mean squared norm.
            let mut tot = vec![0.0f64; m];
            let mut msq = vec![0.0f64; m];
            for ck in 0..nck {
                for pi in 0..p {
                    for qi in 0..q {
                        if w[qi] > 0.0 && c.is_valid(ck, pi, qi) {
                            tot[ck * p + pi] += w[qi];
                            msq[ck * p + pi] += w[qi] * c.sq_norm(ck, pi, qi);
                        }
                    }
                }
            }
            let coef: Vec<f64> = tot
                .iter()
                .map(|&t| if t > 0.0 { 1.0 / t } else { 0.0 })
                .collect();
            for i in 0..m {
                msq[i] *= coef[i];
            }
            let g = dg.gram(t, &src_of, &coef);
            comparisons
                .iter()
                .map(|&(pre, post)| {
                    let idx: Vec<usize> = (pre * p..(pre + 1) * p)
                        .chain(post * p..(post + 1) * p)
                        .collect();
                    if idx.iter().any(|&i| tot[i] == 0.0) {
                        return None;
                    }
                    let n = idx.len();
                    let mut gp = vec![0.0; n * n];
                    for (a, &i) in idx.iter().enumerate() {
                        for (b, &j) in idx.iter().enumerate() {
                            gp[a * n + b] = g[i * m + j];
                        }
                    }
                    Some(delta_of(pair_statistics(
                        &gp,
                        &msq[pre * p..(pre + 1) * p],
                        &msq[post * p..(post + 1) * p],
                        p,
                        axis_persona,
                    )))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(rows: &[Vec<f64>]) -> Vec<f64> {
        gram_of_rows(&rows.iter().map(|r| r.as_slice()).collect::<Vec<_>>())
    }

    #[test]
    fn mean_offdiag_cosine_hand_example() {
        // Three 2-d vectors: e1, e2, (1,1)/sqrt2 -> cosines 0, 1/sqrt2, 1/sqrt2.
        let g = gram(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]]);
        let want = (2.0 / 2f64.sqrt()) / 3.0;
        assert!((mean_offdiag_cosine_gram(&g, 3) - want).abs() < 1e-15);
        // Centred on their mean (2/3, 2/3): (1/3,-2/3), (-2/3,1/3), (1/3,1/3).
        let a = [1.0 / 3.0, -2.0 / 3.0];
        let b = [-2.0 / 3.0, 1.0 / 3.0];
        let v = [1.0 / 3.0, 1.0 / 3.0];
        let want_c = (cosine(&a, &b) + cosine(&a, &v) + cosine(&b, &v)) / 3.0;
        assert!((mean_offdiag_cosine_gram(&centred_gram(&g, 3), 3) - want_c).abs() < 1e-15);
    }

    #[test]
    fn separation_index_hand_example() {
        // Two personas at distance 2; each has questions at ±1 around its centroid along a
        // perpendicular axis: spread = 1, index = 2.
        let c = [vec![1.0, 0.0], vec![-1.0, 0.0]];
        let g = gram(&c);
        // mean ‖x‖² = ‖c‖² + 1.
        let msq = [2.0, 2.0];
        assert!((separation_index(&g, &msq, 2) - 2.0).abs() < 1e-15);
    }

    #[test]
    fn m2_axis_known_answers() {
        // 3 personas in 4-d, axis persona = 2. Shared shift along e = x: every Δ = e -> 1.
        let pre = [
            vec![1.0, 2.0, 0.0, 0.0],
            vec![0.0, 1.0, 1.0, 0.0],
            vec![2.0, 0.0, 0.0, 1.0],
        ];
        let shift = |t: &[f64; 4], extra: &[[f64; 4]; 3]| {
            let mut rows: Vec<Vec<f64>> = pre.to_vec();
            for (i, r) in pre.iter().enumerate() {
                rows.push((0..4).map(|j| r[j] + t[j] + extra[i][j]).collect());
            }
            gram(&rows)
        };
        let msq = [10.0; 3];
        let zero = [[0.0; 4]; 3];
        let (_, post) = pair_statistics(&shift(&[0.5, 0.0, 0.0, 0.0], &zero), &msq, &msq, 3, 2);
        assert!((post[3] - 1.0).abs() < 1e-12, "{post:?}");
        // Assistant moves along x, the others orthogonally (along w): M2 = 0.
        let ortho = [
            [0.0, 0.0, 0.0, 0.3],
            [0.0, 0.0, 0.0, 0.7],
            [0.5, 0.0, 0.0, 0.0],
        ];
        let (_, post) = pair_statistics(&shift(&[0.0; 4], &ortho), &msq, &msq, 3, 2);
        assert!(post[3].abs() < 1e-12, "{post:?}");
    }

    #[test]
    fn separation_is_shift_and_scale_invariant_and_scales_under_contraction() {
        let c = [
            vec![1.0, 2.0, 0.5],
            vec![-1.0, 0.3, 0.0],
            vec![0.2, -0.7, 1.1],
        ];
        let msq_of =
            |rows: &[Vec<f64>]| -> Vec<f64> { rows.iter().map(|r| dot(r, r) + 0.8).collect() };
        let base = separation_index(&gram(&c), &msq_of(&c), 3);
        let shifted: Vec<Vec<f64>> = c
            .iter()
            .map(|r| r.iter().zip([5.0, -3.0, 2.0]).map(|(x, t)| x + t).collect())
            .collect();
        assert!((separation_index(&gram(&shifted), &msq_of(&shifted), 3) - base).abs() < 1e-12);
        let scaled: Vec<Vec<f64>> = c
            .iter()
            .map(|r| r.iter().map(|x| 3.0 * x).collect())
            .collect();
        let msq_scaled: Vec<f64> = scaled.iter().map(|r| dot(r, r) + 9.0 * 0.8).collect();
        assert!((separation_index(&gram(&scaled), &msq_scaled, 3) - base).abs() < 1e-12);
        let mean: Vec<f64> = (0..3)
            .map(|j| c.iter().map(|r| r[j]).sum::<f64>() / 3.0)
            .collect();
        let contracted: Vec<Vec<f64>> = c
            .iter()
            .map(|r| (0..3).map(|j| mean[j] + 0.5 * (r[j] - mean[j])).collect())
            .collect();
        let got = separation_index(&gram(&contracted), &msq_of(&contracted), 3);
        assert!((got - 0.5 * base).abs() < 1e-12, "{got} {base}");
    }

    #[test]
    fn m1_split_adds_up() {
        let rows = vec![
            vec![1.0, 2.0, 0.5],
            vec![-1.0, 0.3, 0.0],
            vec![0.2, -0.7, 1.1],
            vec![1.5, 2.0, 0.9],
            vec![-0.4, 0.1, 0.3],
            vec![0.9, -0.2, 1.0],
        ];
        let g = gram(&rows);
        let split = m1_raw_split(&g, 3);
        let want = mean_offdiag_cosine_gram(&block(&g, 3, 1, 1), 3)
            - mean_offdiag_cosine_gram(&block(&g, 3, 0, 0), 3);
        assert!((split[0] + split[1] - want).abs() < 1e-12);
    }

    #[test]
    fn displaced_gram_equals_direct_computation() {
        let (m, ns, q, sd) = (3, 2, 4, 3);
        let base = [
            vec![1.0, 2.0, 0.5, 9.0],
            vec![-1.0, 0.3, 0.0, 1.0],
            vec![0.2, -0.7, 1.1, 0.0],
        ];
        let mut rng = Rng::new(5);
        let src: Vec<f64> = (0..q * ns * sd).map(|_| rng.normal()).collect();
        let refs: Vec<&[f64]> = base.iter().map(|r| r.as_slice()).collect();
        let dg = DisplacedGram::new(&refs, src.clone(), ns, q, sd, false);
        let w = vec![vec![1.0, 0.0, 2.0, 1.0]];
        let t = &dg.terms(0..1, |_| w[0].clone())[0].1;
        let src_of = [0, 1, 0];
        let coef = [0.5, -0.25, 1.0];
        let g = dg.gram(t, &src_of, &coef);
        let moved: Vec<Vec<f64>> = (0..m)
            .map(|i| {
                let mut v = base[i].clone();
                for qi in 0..q {
                    for j in 0..sd {
                        v[j] += coef[i] * w[0][qi] * src[(qi * ns + src_of[i]) * sd + j];
                    }
                }
                v
            })
            .collect();
        let want = gram(&moved);
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{g:?} {want:?}");
        }
    }
}
