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

//!
//! Layout: this module holds the definitions (statistics from Gram matrices); `displaced` the
//! Gram matrices of many displaced draws at once; `draws` the permutation and bootstrap draws of
//! a (method, layer) and their p-values and intervals.

use crate::linalg::{dot, sym_eigen_desc};
use nalgebra::DMatrix;

mod displaced;
mod draws;
pub use displaced::*;
pub use draws::*;

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
pub(crate) fn block(g: &[f64], p: usize, a: usize, b: usize) -> Vec<f64> {
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
pub(crate) fn delta_gram(g: &[f64], p: usize) -> Vec<f64> {
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

pub(crate) fn delta_of(l: (Stats, Stats)) -> Stats {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cosine;

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
}
