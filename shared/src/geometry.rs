//! M1 (inter-persona cosine compression) and M2 (rotation toward the EM axis) for one
//! (method, layer) and one pair of checkpoints (pre -> post), with the paired question-level
//! permutation test and the question bootstrap.
//!
//! Definitions (c_p = persona centroid, P personas, a = the axis persona, "assistant"):
//! - M1 raw      = mean over the P(P-1)/2 pairs p<p' of cos(c_p, c_p').
//! - M1 centred  = the same on c_p - m, m = mean of the *base* checkpoint's centroids; the same
//!   centre for every checkpoint (recomputed from the permuted/resampled base when base is `pre`).
//! - M2 EM axis  = mean over p != a of |cos(c_p, e)|, e = normalise(c_a^post - c_a^pre).
//! - M2 PC1 axis = the same with e = first principal direction (uncentred) of the P deltas
//!   c_p^post - c_p^pre, signed so that the deltas' sum projects positively (robustness check).
//! Each statistic's effect is Δ = value(post) - value(pre).
//!
//! Permutation: per question, with probability 1/2 the pre and post activations of that question
//! are swapped for all personas at once (only where both are valid); centroids are recomputed as
//! the means over each checkpoint's valid questions, and Δ recomputed, axes included.
//! p = (C + 1) / (N + 1), two-sided. CIs: basic bootstrap over questions (see `stats`).
//! Permutation i draws from its own seeded stream, so any split
//! of 0..N over threads or Web Workers gives identical results.

use crate::coords::MethodLayerCoords;
use crate::linalg::{axpy, cosine, dot, norm};
use crate::rng::Rng;
use crate::stats::{basic_bootstrap_interval, permutation_p_two_sided};
use serde::{Deserialize, Serialize};
use std::ops::Range;

pub const GEOMETRY_METRICS: [&str; 4] = ["M1_raw", "M1_centred", "M2_em_axis", "M2_pc1_axis"];

/// Where the centring vector of M1-centred comes from.
#[derive(Clone, Debug)]
pub enum Centre {
    /// `pre` is the base checkpoint: centre = mean of the (permuted) pre centroids.
    FromPre,
    /// Base is not part of the pair: its centroid mean, fixed.
    Fixed(Vec<f64>),
}

pub struct PairGeometry<'a> {
    pub coords: &'a MethodLayerCoords,
    pub pre: usize,
    pub post: usize,
    pub axis_persona: usize,
    pub centre: Centre,
    /// personas x questions x d: x_post - x_pre where both are valid, else 0. f32: the null only
    /// needs a permutation's statistic to ~1e-6, and half the bytes make the hot loop twice as fast.
    diffs: Vec<f32>,
    swappable: Vec<bool>,
    inv_n_pre: Vec<f64>,
    inv_n_post: Vec<f64>,
    label: String,
    seed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PairGeometryResult {
    pub pre_values: [f64; 4],
    pub post_values: [f64; 4],
    pub delta: [f64; 4],
    pub p_two_sided: [f64; 4],
    pub ci95_delta: [Option<[f64; 2]>; 4],
    pub n_permutations: usize,
    pub n_bootstrap: usize,
    /// Bootstrap resamples dropped because some persona had no valid question in them.
    pub n_bootstrap_skipped: usize,
    /// Per persona: |c_p| pre and post.
    pub norm_pre: Vec<f64>,
    pub norm_post: Vec<f64>,
    /// Per persona: cos(c_p, EM axis) and signed projection <c_p, EM axis>, pre and post.
    pub cos_axis_pre: Vec<f64>,
    pub cos_axis_post: Vec<f64>,
    pub proj_axis_pre: Vec<f64>,
    pub proj_axis_post: Vec<f64>,
    /// Questions swappable in the permutation (valid in both checkpoints for every persona
    /// counts per persona; this is the minimum over personas).
    pub n_questions_paired_min: usize,
}

/// The `p` rows of width `d`, minus `centre` when given.
fn centred_rows(c: &[f64], p: usize, d: usize, centre: Option<&[f64]>) -> Vec<Vec<f64>> {
    (0..p)
        .map(|i| {
            let mut v = c[i * d..(i + 1) * d].to_vec();
            if let Some(m) = centre {
                axpy(&mut v, -1.0, m);
            }
            v
        })
        .collect()
}

/// Mean off-diagonal cosine of `p` vectors of width `d`, optionally centred.
pub fn mean_offdiag_cosine(c: &[f64], p: usize, d: usize, centre: Option<&[f64]>) -> f64 {
    let rows = centred_rows(c, p, d, centre);
    let norms: Vec<f64> = rows.iter().map(|r| norm(r)).collect();
    let mut s = 0.0;
    let mut n = 0usize;
    for i in 0..p {
        for j in i + 1..p {
            let den = norms[i] * norms[j];
            s += if den > 0.0 {
                dot(&rows[i], &rows[j]) / den
            } else {
                0.0
            };
            n += 1;
        }
    }
    s / n.max(1) as f64
}

/// Full cosine matrix (p x p, row-major), optionally centred.
pub fn cosine_matrix(c: &[f64], p: usize, d: usize, centre: Option<&[f64]>) -> Vec<f64> {
    let rows = centred_rows(c, p, d, centre);
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            out[i * p + j] = cosine(&rows[i], &rows[j]);
        }
    }
    out
}

pub fn mean_rows(c: &[f64], p: usize, d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for i in 0..p {
        axpy(&mut m, 1.0 / p as f64, &c[i * d..(i + 1) * d]);
    }
    m
}

fn unit(v: Vec<f64>) -> Vec<f64> {
    let n = norm(&v);
    if n > 0.0 {
        v.into_iter().map(|x| x / n).collect()
    } else {
        v
    }
}

/// First principal direction (uncentred) of the rows of `deltas`, via the p x p Gram matrix.
pub fn pc1_direction(deltas: &[f64], p: usize, d: usize) -> Vec<f64> {
    let mut g = nalgebra::DMatrix::<f64>::zeros(p, p);
    for i in 0..p {
        for j in 0..=i {
            let v = dot(&deltas[i * d..(i + 1) * d], &deltas[j * d..(j + 1) * d]);
            g[(i, j)] = v;
            g[(j, i)] = v;
        }
    }
    let (_, vecs) = crate::linalg::sym_eigen_desc(g);
    let mut u = vec![0.0; d];
    for i in 0..p {
        axpy(&mut u, vecs[(i, 0)], &deltas[i * d..(i + 1) * d]);
    }
    let mut total = vec![0.0; d];
    for i in 0..p {
        axpy(&mut total, 1.0, &deltas[i * d..(i + 1) * d]);
    }
    if dot(&u, &total) < 0.0 {
        u.iter_mut().for_each(|x| *x = -*x);
    }
    unit(u)
}

fn mean_abs_cos_excluding(c: &[f64], p: usize, d: usize, axis: &[f64], skip: usize) -> f64 {
    let mut s = 0.0;
    for i in (0..p).filter(|&i| i != skip) {
        s += cosine(&c[i * d..(i + 1) * d], axis).abs();
    }
    s / (p - 1).max(1) as f64
}

/// The four statistics for pre and post centroids.
pub fn pair_levels(
    pre: &[f64],
    post: &[f64],
    p: usize,
    d: usize,
    a: usize,
    centre: &Centre,
) -> ([f64; 4], [f64; 4]) {
    let m = match centre {
        Centre::FromPre => mean_rows(pre, p, d),
        Centre::Fixed(m) => m.clone(),
    };
    let axis = unit(
        post[a * d..(a + 1) * d]
            .iter()
            .zip(&pre[a * d..(a + 1) * d])
            .map(|(x, y)| x - y)
            .collect(),
    );
    let deltas: Vec<f64> = post.iter().zip(pre).map(|(x, y)| x - y).collect();
    let pc1 = pc1_direction(&deltas, p, d);
    let lv = |c: &[f64]| {
        [
            mean_offdiag_cosine(c, p, d, None),
            mean_offdiag_cosine(c, p, d, Some(&m)),
            mean_abs_cos_excluding(c, p, d, &axis, a),
            mean_abs_cos_excluding(c, p, d, &pc1, a),
        ]
    };
    (lv(pre), lv(post))
}

fn deltas4(l: ([f64; 4], [f64; 4])) -> [f64; 4] {
    [
        l.1[0] - l.0[0],
        l.1[1] - l.0[1],
        l.1[2] - l.0[2],
        l.1[3] - l.0[3],
    ]
}

impl<'a> PairGeometry<'a> {
    pub fn new(
        coords: &'a MethodLayerCoords,
        pre: usize,
        post: usize,
        axis_persona: usize,
        centre: Centre,
        seed: u64,
    ) -> Self {
        let (p, q, d, k) = (coords.n_personas, coords.n_questions, coords.dim, coords.k);
        let mut diffs = vec![0.0f32; p * q * d];
        let mut swappable = vec![false; p * q];
        for pi in 0..p {
            let dc: Vec<f64> = coords
                .centroid(post, pi)
                .iter()
                .zip(coords.centroid(pre, pi))
                .map(|(x, y)| x - y)
                .collect();
            for qi in 0..q {
                if coords.is_valid(pre, pi, qi) && coords.is_valid(post, pi, qi) {
                    swappable[pi * q + qi] = true;
                    let o = (pi * q + qi) * d;
                    let (rpost, rpre) =
                        (coords.residual(post, pi, qi), coords.residual(pre, pi, qi));
                    for j in 0..d {
                        let r = if j < k {
                            rpost[j] as f64 - rpre[j] as f64
                        } else {
                            0.0
                        };
                        diffs[o + j] = (dc[j] + r) as f32;
                    }
                }
            }
        }
        let inv = |ck: usize| {
            (0..p)
                .map(|pi| 1.0 / coords.n_valid(ck, pi) as f64)
                .collect::<Vec<_>>()
        };
        PairGeometry {
            coords,
            pre,
            post,
            axis_persona,
            centre,
            diffs,
            swappable,
            inv_n_pre: inv(pre),
            inv_n_post: inv(post),
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

    fn observed_centroids(&self) -> (Vec<f64>, Vec<f64>) {
        (
            self.coords.centroids[self.pre].clone(),
            self.coords.centroids[self.post].clone(),
        )
    }

    /// Δ of the four statistics under permutations `range` (indices into 0..N).
    pub fn null_deltas(&self, range: Range<usize>) -> Vec<[f64; 4]> {
        let (p, q, d) = (
            self.coords.n_personas,
            self.coords.n_questions,
            self.coords.dim,
        );
        let (pre0, post0) = self.observed_centroids();
        let mut out = Vec::with_capacity(range.len());
        let mut shift = vec![0.0f32; p * d];
        let mut swapped = vec![false; q];
        for i in range {
            let mut rng = Rng::stream(self.seed, &self.label, i as u64);
            for s in swapped.iter_mut() {
                *s = rng.coin();
            }
            shift.iter_mut().for_each(|x| *x = 0.0);
            for pi in 0..p {
                let sh = &mut shift[pi * d..(pi + 1) * d];
                for qi in 0..q {
                    if swapped[qi] && self.swappable[pi * q + qi] {
                        let o = (pi * q + qi) * d;
                        for (a, b) in sh.iter_mut().zip(&self.diffs[o..o + d]) {
                            *a += *b;
                        }
                    }
                }
            }
            let mut pre = pre0.clone();
            let mut post = post0.clone();
            for pi in 0..p {
                for j in 0..d {
                    let s = shift[pi * d + j] as f64;
                    pre[pi * d + j] += s * self.inv_n_pre[pi];
                    post[pi * d + j] -= s * self.inv_n_post[pi];
                }
            }
            out.push(deltas4(pair_levels(
                &pre,
                &post,
                p,
                d,
                self.axis_persona,
                &self.centre,
            )));
        }
        out
    }

    /// Bootstrap over questions (the same resample for all personas and both checkpoints):
    /// Δ per resample; None where some persona has no valid question in the resample.
    pub fn bootstrap_deltas(&self, range: Range<usize>) -> Vec<Option<[f64; 4]>> {
        let c = self.coords;
        let (p, q, d, k) = (c.n_personas, c.n_questions, c.dim, c.k);
        let mut out = Vec::with_capacity(range.len());
        let mut w = vec![0u32; q];
        for i in range {
            let mut rng = Rng::stream(self.seed, &format!("bootstrap/{}", self.label), i as u64);
            w.iter_mut().for_each(|x| *x = 0);
            for _ in 0..q {
                w[rng.below(q)] += 1;
            }
            let mut ok = true;
            let mut resampled = |ck: usize| -> Vec<f64> {
                let mut cs = c.centroids[ck].clone();
                for pi in 0..p {
                    let mut acc = vec![0.0f64; k];
                    let mut tot = 0u32;
                    for qi in 0..q {
                        if w[qi] > 0 && c.is_valid(ck, pi, qi) {
                            tot += w[qi];
                            let r = c.residual(ck, pi, qi);
                            let wf = w[qi] as f64;
                            for j in 0..k {
                                acc[j] += wf * r[j] as f64;
                            }
                        }
                    }
                    if tot == 0 {
                        ok = false;
                        continue;
                    }
                    for j in 0..k {
                        cs[pi * d + j] += acc[j] / tot as f64;
                    }
                }
                cs
            };
            let pre = resampled(self.pre);
            let post = resampled(self.post);
            if !ok {
                out.push(None);
                continue;
            }
            out.push(Some(deltas4(pair_levels(
                &pre,
                &post,
                p,
                d,
                self.axis_persona,
                &self.centre,
            ))));
        }
        out
    }

    /// Observed values, permutation p-values and bootstrap CIs.
    pub fn run(&self, permutations: usize, bootstrap: usize) -> PairGeometryResult {
        let c = self.coords;
        let (p, d) = (c.n_personas, c.dim);
        let (pre, post) = self.observed_centroids();
        let (pre_values, post_values) =
            pair_levels(&pre, &post, p, d, self.axis_persona, &self.centre);
        let delta = deltas4((pre_values, post_values));
        let null = self.null_deltas(0..permutations);
        let boot = self.bootstrap_deltas(0..bootstrap);
        self.assemble(pre_values, post_values, delta, &null, &boot)
    }

    /// Combines observed values with a null and bootstrap computed elsewhere (e.g. in workers).
    pub fn assemble(
        &self,
        pre_values: [f64; 4],
        post_values: [f64; 4],
        delta: [f64; 4],
        null: &[[f64; 4]],
        boot: &[Option<[f64; 4]>],
    ) -> PairGeometryResult {
        let c = self.coords;
        let (p, q, d, a) = (c.n_personas, c.n_questions, c.dim, self.axis_persona);
        let (pre, post) = self.observed_centroids();
        let mut p_two_sided = [1.0; 4];
        let mut ci95_delta = [None; 4];
        let kept: Vec<[f64; 4]> = boot.iter().flatten().copied().collect();
        for s in 0..4 {
            let ns: Vec<f64> = null.iter().map(|x| x[s]).collect();
            p_two_sided[s] = permutation_p_two_sided(delta[s], &ns);
            let bs: Vec<f64> = kept.iter().map(|x| x[s]).collect();
            ci95_delta[s] = basic_bootstrap_interval(delta[s], &bs, 0.95);
        }
        let axis = unit(
            post[a * d..(a + 1) * d]
                .iter()
                .zip(&pre[a * d..(a + 1) * d])
                .map(|(x, y)| x - y)
                .collect(),
        );
        let row = |cs: &[f64], i: usize| cs[i * d..(i + 1) * d].to_vec();
        PairGeometryResult {
            pre_values,
            post_values,
            delta,
            p_two_sided,
            ci95_delta,
            n_permutations: null.len(),
            n_bootstrap: boot.len(),
            n_bootstrap_skipped: boot.len() - kept.len(),
            norm_pre: (0..p).map(|i| norm(&row(&pre, i))).collect(),
            norm_post: (0..p).map(|i| norm(&row(&post, i))).collect(),
            cos_axis_pre: (0..p).map(|i| cosine(&row(&pre, i), &axis)).collect(),
            cos_axis_post: (0..p).map(|i| cosine(&row(&post, i), &axis)).collect(),
            proj_axis_pre: (0..p).map(|i| dot(&row(&pre, i), &axis)).collect(),
            proj_axis_post: (0..p).map(|i| dot(&row(&post, i), &axis)).collect(),
            n_questions_paired_min: (0..p)
                .map(|pi| (0..q).filter(|&qi| self.swappable[pi * q + qi]).count())
                .min()
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_offdiag_cosine_hand_example() {
        // Three 2-d vectors: e1, e2, (1,1)/sqrt2 -> cosines 0, 1/sqrt2, 1/sqrt2.
        let c = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let want = (2.0 / 2f64.sqrt()) / 3.0;
        assert!((mean_offdiag_cosine(&c, 3, 2, None) - want).abs() < 1e-15);
        // Centring on their mean (2/3, 2/3): e1-m = (1/3,-2/3), e2-m = (-2/3,1/3), v-m = (1/3,1/3).
        let m = [2.0 / 3.0, 2.0 / 3.0];
        let a = [1.0 / 3.0, -2.0 / 3.0];
        let b = [-2.0 / 3.0, 1.0 / 3.0];
        let v = [1.0 / 3.0, 1.0 / 3.0];
        let want_c = (cosine(&a, &b) + cosine(&a, &v) + cosine(&b, &v)) / 3.0;
        assert!((mean_offdiag_cosine(&c, 3, 2, Some(&m)) - want_c).abs() < 1e-15);
    }

    #[test]
    fn pc1_of_parallel_deltas_is_their_direction() {
        let deltas = [2.0, 0.0, 0.0, 1.0, 0.0, 0.0, -0.5, 0.0, 0.0];
        let u = pc1_direction(&deltas, 3, 3);
        assert!((u[0] - 1.0).abs() < 1e-12 && u[1].abs() < 1e-12);
    }
}
