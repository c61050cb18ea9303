//! The paired question-level permutation draws and the question bootstrap of one
//! (method, layer), their p-values and intervals, and the per-persona views of a pair.

use super::*;
use crate::coords::MethodLayerCoords;
use crate::linalg::{cosine, norm};
use crate::rng::Rng;
use crate::stats::{
    basic_bootstrap_interval, permutation_p_greater, permutation_p_less, permutation_p_two_sided,
};
use serde::{Deserialize, Serialize};
use std::ops::Range;

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
        let dg = DisplacedGram::new(&rows, src, p, q, d, c.exact, range.len());
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
    let dg = DisplacedGram::new(&rows, src, m, q, k, c.exact, range.len());
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
