//! M3's estimator: scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`,
//! evaluated on held-out questions (GroupKFold by question, the folds of `question_fold`).
//!
//! What scikit-learn computes, per training fold: priors π_c = n_c/n; per class, the features
//! are standardised (`StandardScaler`: class mean, class std, scale 1 for constant features),
//! Ledoit-Wolf-shrunk (`ledoit_wolf`: shrinkage s_c towards μ_c·I, μ_c = mean standardised
//! variance) and scaled back; the covariance is Σ = Σ_c π_c Σ_c and the coefficients solve
//! Σ B = Mᵀ (M = class means); intercepts −½ m_c·B_c + ln π_c; log posteriors = log-softmax.
//!
//! Rescaled, each class term is (1 − s_c)·S_c + s_c·μ_c·diag(scale_c²) with S_c the class's
//! empirical covariance, so Σ = YᵀY + diag(v): Y stacks the class-centred training rows weighted
//! by √(π_c(1 − s_c)/n_c) and v = Σ_c π_c s_c μ_c scale_c². That is low rank plus diagonal:
//! with more features than training rows (full activations: 3,584 dims, 2,304 rows) the solve
//! goes through the n x n system I + ỸỸᵀ (Ỹ = Y diag(v)^-½, Woodbury); otherwise through the
//! d x d matrix. Both are exact (tested against each other and against scikit-learn).
//! The Ledoit-Wolf moments of a class (tr G, Σ‖z_i‖⁴, ‖G‖²_F) come from the smaller Gram of its
//! standardised rows (n_c x n_c or d x d), never a d x d matrix when d > n_c.
//!
//! Unlike the pooled estimator in `super`, a relabelling changes every class's standardisation
//! and shrinkage, so there is no cheap permutation path: M3's tests use the paired per-question
//! sign flip of these held-out scores, which needs only the observed fit.

use super::{heldout_by_folds, question_fold, Evaluation, FoldModel, Samples};
use crate::linalg::{cholesky_lower, gram_of_columns, gram_of_columns_f32};
use nalgebra::{DMatrix, DVector};

/// scikit-learn's `_is_constant_feature` (StandardScaler): variance within rounding of zero.
fn is_constant_feature(var: f64, mean: f64, n: usize) -> bool {
    let eps = f64::EPSILON;
    let nf = n as f64;
    var <= nf * eps * var + (nf * mean * eps).powi(2)
}

/// scikit-learn's `ledoit_wolf_shrinkage` of the n centred rows stored as the columns of `z`
/// (d x n): returns (shrinkage, μ = trace of the empirical covariance / d). Its moments —
/// tr(ZᵀZ), Σ‖z_i‖⁴ and ‖ZᵀZ‖²_F = ‖ZZᵀ‖²_F — come from the smaller of the two Gram matrices,
/// never a d x d matrix when d > n.
fn ledoit_wolf_of_columns(z: &DMatrix<f64>) -> (f64, f64) {
    let (d, n_rows) = z.shape();
    let norms2: Vec<f64> = z.column_iter().map(|c| c.norm_squared()).collect();
    let tr: f64 = norms2.iter().sum();
    let mu = tr / n_rows as f64 / d as f64;
    let beta_: f64 = norms2.iter().map(|v| v * v).sum();
    let frob2 = if d < n_rows {
        gram_of_columns(&z.transpose()).norm_squared()
    } else {
        gram_of_columns(z).norm_squared()
    };
    (ledoit_wolf_from_moments(tr, beta_, frob2, n_rows, d), mu)
}

/// scikit-learn's shrinkage formula from the moments of n centred standardised rows of d
/// features: tr = Σ‖z_i‖², beta_ = Σ‖z_i‖⁴, frob2 = ‖ZᵀZ‖²_F.
fn ledoit_wolf_from_moments(tr: f64, beta_: f64, frob2: f64, n_rows: usize, d: usize) -> f64 {
    let (n, df) = (n_rows as f64, d as f64);
    if d == 1 {
        return 0.0;
    }
    let mu = tr / n / df;
    let delta_ = frob2 / (n * n);
    let beta = (beta_ / n - delta_) / (df * n);
    let delta = (delta_ - 2.0 * mu * tr / n + df * mu * mu) / df;
    let beta = beta.min(delta);
    if beta == 0.0 {
        0.0
    } else {
        beta / delta
    }
}

/// One fitted fold. `x_cols` holds the training rows as columns (d x n).
fn fit_fold(x_cols: DMatrix<f64>, labels: &[usize], n_classes: usize) -> FoldModel {
    let (d, n) = x_cols.shape();
    let nf = n as f64;
    let mut counts = vec![0usize; n_classes];
    for &c in labels {
        counts[c] += 1;
    }
    let active: Vec<usize> = (0..n_classes).filter(|&c| counts[c] > 0).collect();
    let members: Vec<Vec<usize>> = (0..n_classes)
        .map(|c| (0..n).filter(|&i| labels[i] == c).collect())
        .collect();
    // Class means (d x active) and class-centred rows (d x n).
    let mut means = DMatrix::<f64>::zeros(d, active.len());
    let mut centred = x_cols;
    let mut v = vec![0.0; d];
    let mut row_weight = vec![0.0; n];
    let mut shrinkages = Vec::with_capacity(active.len());
    for (a, &c) in active.iter().enumerate() {
        let idx = &members[c];
        let nc = idx.len() as f64;
        let mut m = means.column_mut(a);
        for &i in idx {
            m += centred.column(i);
        }
        m /= nc;
        let m = m.into_owned();
        for &i in idx {
            let mut col = centred.column_mut(i);
            col -= &m;
        }
        // StandardScaler on the class: variance (ddof 0), scale 1 for constant features.
        // (Column-wise loops: a sample is a contiguous column.)
        let mut var = vec![0.0; d];
        for &i in idx {
            for (acc, x) in var.iter_mut().zip(centred.column(i).iter()) {
                *acc += x * x;
            }
        }
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = var[j] / nc;
                if is_constant_feature(var, m[j], idx.len()) {
                    1.0
                } else {
                    var.sqrt()
                }
            })
            .collect();
        let mut z = DMatrix::<f64>::zeros(d, idx.len());
        for (r, &i) in idx.iter().enumerate() {
            for ((out, x), sc) in z
                .column_mut(r)
                .iter_mut()
                .zip(centred.column(i).iter())
                .zip(&scale)
            {
                *out = x / sc;
            }
        }
        let (s, mu) = ledoit_wolf_of_columns(&z);
        shrinkages.push(s);
        let prior = nc / nf;
        for j in 0..d {
            v[j] += prior * s * mu * scale[j] * scale[j];
        }
        let w = (prior * (1.0 - s) / nc).sqrt();
        for &i in idx {
            row_weight[i] = w;
        }
    }
    for i in 0..n {
        let mut col = centred.column_mut(i);
        col *= row_weight[i];
    }
    let coef = solve_low_rank_plus_diagonal(centred, &v, &means);
    fold_model(&coef, &means, &counts, active, nf, &shrinkages)
}

/// The fitted fold from its coefficients B (d x active) and class means.
fn fold_model(
    coef: &DMatrix<f64>,
    means: &DMatrix<f64>,
    counts: &[usize],
    active: Vec<usize>,
    nf: f64,
    shrinkages: &[f64],
) -> FoldModel {
    let mut coef_t = Vec::with_capacity(coef.len());
    for a in 0..active.len() {
        coef_t.extend(coef.column(a).iter());
    }
    let intercept = active
        .iter()
        .enumerate()
        .map(|(a, &c)| -0.5 * means.column(a).dot(&coef.column(a)) + (counts[c] as f64 / nf).ln())
        .collect();
    FoldModel {
        active,
        coef_t,
        intercept,
        shrinkage: shrinkages.iter().sum::<f64>() / shrinkages.len().max(1) as f64,
    }
}

/// Solves (Y Yᵀ + diag(v)) B = M for Y = `y_cols` (d x n, rows as columns), M = `rhs` (d x C).
fn solve_low_rank_plus_diagonal(
    mut y_cols: DMatrix<f64>,
    v: &[f64],
    rhs: &DMatrix<f64>,
) -> DMatrix<f64> {
    let (d, n) = y_cols.shape();
    let v_positive = v.iter().all(|&x| x > 0.0);
    if d > n && v_positive {
        // Woodbury in the whitened space: Σ = V^½ (I + ỸỸᵀ) V^½ with Ỹ = V^-½ Y.
        let inv_sqrt: Vec<f64> = v.iter().map(|x| 1.0 / x.sqrt()).collect();
        for mut col in y_cols.column_iter_mut() {
            col.iter_mut().zip(&inv_sqrt).for_each(|(x, s)| *x *= s);
        }
        let yw = y_cols;
        let mw = DMatrix::<f64>::from_fn(d, rhs.ncols(), |j, c| rhs[(j, c)] * inv_sqrt[j]);
        let r = crate::linalg::transpose_times(&yw, &mw);
        let t = solve_identity_plus_gram(&yw, &r);
        let b = mw - &yw * t;
        DMatrix::<f64>::from_fn(d, rhs.ncols(), |j, c| b[(j, c)] * inv_sqrt[j])
    } else {
        // Σ = Y Yᵀ + diag(v), the symmetric product computed once per block pair.
        let mut sigma = gram_of_columns(&y_cols.transpose());
        for j in 0..d {
            sigma[(j, j)] += v[j];
        }
        solve_symmetric(sigma, rhs)
    }
}

/// (I + ỸᵀỸ) T = R for Ỹ = `yw` (d x n). The Gram ỸᵀỸ, M3's largest product, is formed in f32
/// (sgemm: twice dgemm's speed) and factorised in f64; mixed-precision iterative refinement
/// (the residual exactly in f64 from two thin products per step) then takes T down to the f64
/// rounding floor, where the residual stops shrinking: I + ỸᵀỸ has every eigenvalue ≥ 1, so the
/// f32 factor is a good preconditioner unless the Gram is extreme. When the refinement does not
/// contract (or is still contracting slowly after `REFINE_MAX_STEPS`), the f64 Gram is used.
fn solve_identity_plus_gram(yw: &DMatrix<f64>, r: &DMatrix<f64>) -> DMatrix<f64> {
    let n = yw.ncols();
    let chol_solve = |l: &DMatrix<f64>, b: &DMatrix<f64>| {
        crate::linalg::cholesky_solve(l, b).expect("a Cholesky factor has a non-zero diagonal")
    };
    // R − (I + ỸᵀỸ) T, exactly in f64.
    let residual = |t: &DMatrix<f64>| r - t - crate::linalg::transpose_times(yw, &(yw * t));
    let mut k32 = gram_of_columns_f32(&yw.map(|v| v as f32)).map(|v| v as f64);
    for i in 0..n {
        k32[(i, i)] += 1.0;
    }
    if let Some(l) = cholesky_lower(k32) {
        let mut t = chol_solve(&l, r);
        let mut res = residual(&t);
        let mut res_norm = res.norm();
        for step in 0..REFINE_MAX_STEPS {
            if res_norm <= 1e-15 * r.norm() {
                return t;
            }
            let next = &t + chol_solve(&l, &res);
            let next_res = residual(&next);
            let next_norm = next_res.norm();
            if next_norm > 0.5 * res_norm {
                // Stalled. After contracting at least once: at the rounding floor.
                if step > 0 {
                    return if next_norm < res_norm { next } else { t };
                }
                break; // never contracted: the f32 factor is too far off
            }
            (t, res, res_norm) = (next, next_res, next_norm);
        }
    }
    let mut k = gram_of_columns(yw);
    for i in 0..n {
        k[(i, i)] += 1.0;
    }
    let l = cholesky_lower(k).expect("I + ỸᵀỸ is positive definite");
    chol_solve(&l, r)
}

/// Refinement steps before falling back to the f64 Gram (each step contracts the residual by
/// ~1e-4 or better on M3's systems, so the floor is reached in 3 to 4).
const REFINE_MAX_STEPS: usize = 8;

/// Σ B = M for a symmetric positive semi-definite Σ: Cholesky, or scipy's `lstsq`
/// minimum-norm solution where Σ is singular (no shrinkage anywhere).
fn solve_symmetric(sigma: DMatrix<f64>, rhs: &DMatrix<f64>) -> DMatrix<f64> {
    match cholesky_lower(sigma.clone()) {
        Some(l) => crate::linalg::cholesky_solve(&l, rhs).expect("non-zero diagonal"),
        None => sigma
            .svd(true, true)
            .solve(rhs, 1e-12)
            .expect("SVD with both factors computed"),
    }
}

/// Held-out evaluation of scikit-learn's shrinkage-LDA with the samples' own labels, folds by
/// question. Sample order and fields as in `super::Lda::evaluate`.
pub fn evaluate_per_class_lda(s: &Samples, n_folds: usize) -> Evaluation {
    let k = s.k;
    if k <= SCATTER_MAX_DIM && k < s.len() / n_folds.max(1) {
        return evaluate_by_scatter(s, n_folds);
    }
    heldout_by_folds(s, n_folds, |train, test| {
        let mut cols = Vec::with_capacity(train.len() * k);
        for &i in train {
            cols.extend_from_slice(&s.x[i * k..(i + 1) * k]);
        }
        let x_cols = DMatrix::<f64>::from_vec(k, train.len(), cols);
        let labels: Vec<usize> = train.iter().map(|&i| s.persona[i]).collect();
        let model = fit_fold(x_cols, &labels, s.n_classes);
        let scored = test
            .iter()
            .map(|&i| model.score(&s.x[i * k..(i + 1) * k], s.persona[i], k))
            .collect();
        (scored, Some(model.shrinkage))
    })
}

/// Up to this many features (the page's and `--m3-features components`' case) the folds share
/// work: each (question fold, class) block's raw scatter XᵀX and sum are computed once, and a
/// training fold's class scatter is the sum over its blocks minus n·m mᵀ, instead of a product
/// over all its rows per fold (5x less multiply-adds; wasm has no SIMD gemm).
const SCATTER_MAX_DIM: usize = 1024;

fn evaluate_by_scatter(s: &Samples, n_folds: usize) -> Evaluation {
    let (k, nc) = (s.k, s.n_classes);
    // Per (question fold g, class c): raw scatter and sum.
    let mut raw = vec![DMatrix::<f64>::zeros(k, k); n_folds * nc];
    let mut sums = vec![DVector::<f64>::zeros(k); n_folds * nc];
    for g in 0..n_folds {
        for c in 0..nc {
            let idx: Vec<usize> = (0..s.len())
                .filter(|&i| s.persona[i] == c && question_fold(s.question[i], n_folds) == g)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let rows = DMatrix::<f64>::from_fn(idx.len(), k, |r, j| s.x[idx[r] * k + j]);
            raw[g * nc + c] = gram_of_columns(&rows);
            sums[g * nc + c] = rows.row_sum().transpose();
        }
    }
    heldout_by_folds(s, n_folds, |train, test| {
        let f = question_fold(s.question[test[0]], n_folds);
        let mut counts = vec![0usize; nc];
        for &i in train {
            counts[s.persona[i]] += 1;
        }
        let nf = train.len() as f64;
        let active: Vec<usize> = (0..nc).filter(|&c| counts[c] > 0).collect();
        let mut means = DMatrix::<f64>::zeros(k, active.len());
        let mut sigma = DMatrix::<f64>::zeros(k, k);
        let mut v = vec![0.0; k];
        let mut shrinkages = Vec::with_capacity(active.len());
        for (a, &c) in active.iter().enumerate() {
            let n_c = counts[c] as f64;
            let mut scatter = DMatrix::<f64>::zeros(k, k);
            let mut sum = DVector::<f64>::zeros(k);
            for g in (0..n_folds).filter(|&g| g != f) {
                scatter += &raw[g * nc + c];
                sum += &sums[g * nc + c];
            }
            let m = sum / n_c;
            // Centred scatter C = Σ x xᵀ − n m mᵀ.
            scatter -= &m * m.transpose() * n_c;
            // Variances from the samples themselves (two-pass, as StandardScaler): the
            // scatter's diagonal loses a constant feature's exact zero to rounding.
            let members: Vec<usize> = train
                .iter()
                .copied()
                .filter(|&i| s.persona[i] == c)
                .collect();
            let mut var = vec![0.0; k];
            for &i in &members {
                for (j, acc) in var.iter_mut().enumerate() {
                    *acc += (s.x[i * k + j] - m[j]).powi(2);
                }
            }
            let scale: Vec<f64> = (0..k)
                .map(|j| {
                    let var = var[j] / n_c;
                    if is_constant_feature(var, m[j], counts[c]) {
                        1.0
                    } else {
                        var.sqrt()
                    }
                })
                .collect();
            // Ledoit-Wolf moments of the standardised rows: Σ‖z_i‖² and Σ‖z_i‖⁴ per sample,
            // ‖ZᵀZ‖²_F from the scaled centred scatter.
            let (mut tr, mut beta_) = (0.0, 0.0);
            for &i in &members {
                let z2: f64 = (0..k)
                    .map(|j| ((s.x[i * k + j] - m[j]) / scale[j]).powi(2))
                    .sum();
                tr += z2;
                beta_ += z2 * z2;
            }
            let mut frob2 = 0.0;
            for j in 0..k {
                for l in 0..k {
                    frob2 += (scatter[(j, l)] / (scale[j] * scale[l])).powi(2);
                }
            }
            let sh = ledoit_wolf_from_moments(tr, beta_, frob2, counts[c], k);
            let mu = tr / n_c / k as f64;
            shrinkages.push(sh);
            let prior = n_c / nf;
            for j in 0..k {
                v[j] += prior * sh * mu * scale[j] * scale[j];
            }
            sigma += scatter * (prior * (1.0 - sh) / n_c);
            means.set_column(a, &m);
        }
        for j in 0..k {
            sigma[(j, j)] += v[j];
        }
        let coef = solve_symmetric(sigma, &means);
        let model = fold_model(&coef, &means, &counts, active, nf, &shrinkages);
        let scored = test
            .iter()
            .map(|&i| model.score(&s.x[i * k..(i + 1) * k], s.persona[i], k))
            .collect();
        (scored, Some(model.shrinkage))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The f32 Gram with refinement solves (I + ỸᵀỸ) T = R to f64 accuracy, on a moderate Gram
    /// (refinement) and on an extreme one (where the f32 factor fails and the f64 Gram is used).
    #[test]
    fn mixed_precision_solve_equals_f64_solve() {
        let mut rng = Rng::new(3);
        let (d, n, c) = (300usize, 120usize, 4usize);
        // Anisotropic columns: a few large directions, as real activations have.
        let base =
            DMatrix::<f64>::from_fn(d, n, |j, _| rng.normal() * 3.0 / (1.0 + j as f64).sqrt());
        let r = DMatrix::<f64>::from_fn(n, c, |_, _| rng.normal());
        for scale in [1.0, 30.0, 1e4] {
            let yw = &base * scale;
            let mut k = gram_of_columns(&yw);
            for i in 0..n {
                k[(i, i)] += 1.0;
            }
            let want = solve_symmetric(k.clone(), &r);
            let got = solve_identity_plus_gram(&yw, &r);
            // Backward error at the f64 floor (as the f64 Cholesky solve's own), and the same
            // solution where the system is well enough conditioned to say so.
            let backward = (&r - &k * &got).norm() / (k.norm() * got.norm());
            assert!(
                backward < 1e-14,
                "scale {scale}: backward error {backward:e}"
            );
            let err = (&got - &want).norm() / want.norm();
            if scale <= 30.0 {
                assert!(err < 1e-10, "scale {scale}: relative error {err:e}");
            }
        }
    }

    /// The shared-scatter path (few features) equals fitting every fold from its rows.
    #[test]
    fn scatter_path_equals_row_path() {
        let mut rng = Rng::new(8);
        let (p, q, k) = (5usize, 30usize, 12usize);
        let s = Samples::from_fn(p, q, k, |pi, _, j| {
            rng.normal() * (1.0 + j as f64) + (pi * (j % 3)) as f64 + 40.0
        });
        let fast = evaluate_by_scatter(&s, 5);
        let rows = heldout_by_folds(&s, 5, |train, test| {
            let x = DMatrix::<f64>::from_fn(k, train.len(), |j, r| s.x[train[r] * k + j]);
            let labels: Vec<usize> = train.iter().map(|&i| s.persona[i]).collect();
            let model = fit_fold(x, &labels, p);
            let scored = test
                .iter()
                .map(|&i| model.score(&s.x[i * k..(i + 1) * k], s.persona[i], k))
                .collect();
            (scored, Some(model.shrinkage))
        });
        assert_eq!(fast.correct, rows.correct);
        for (a, b) in fast.log_posterior.iter().zip(&rows.log_posterior) {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
        }
        for (a, b) in fast.shrinkage.iter().zip(&rows.shrinkage) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    /// The Woodbury (d > n) and direct (d <= n) solves give the same coefficients.
    #[test]
    fn woodbury_equals_direct_solve() {
        let mut rng = Rng::new(3);
        let (d, n, c) = (60, 40, 4);
        let y = DMatrix::<f64>::from_fn(d, n, |_, _| rng.normal());
        let v: Vec<f64> = (0..d).map(|j| 0.1 + j as f64 / d as f64).collect();
        let m = DMatrix::<f64>::from_fn(d, c, |_, _| rng.normal());
        let wood = solve_low_rank_plus_diagonal(y.clone(), &v, &m);
        let mut sigma = &y * y.transpose();
        for j in 0..d {
            sigma[(j, j)] += v[j];
        }
        let direct = sigma.lu().solve(&m).unwrap();
        let err = (&wood - &direct).abs().max() / direct.abs().max();
        assert!(err < 1e-10, "relative error {err}");
    }

    /// Ledoit-Wolf from the Gram moments equals the textbook formula on the d x d covariance,
    /// with fewer features than rows (the d x d Gram) and more (the n x n Gram).
    #[test]
    fn ledoit_wolf_matches_covariance_form() {
        let mut rng = Rng::new(4);
        for (d, n) in [(7usize, 11usize), (15, 6)] {
            let mut z = DMatrix::<f64>::from_fn(d, n, |j, _| rng.normal() * (1.0 + j as f64));
            for j in 0..d {
                let m = z.row(j).mean();
                z.row_mut(j).add_scalar_mut(-m);
            }
            let (s, mu) = ledoit_wolf_of_columns(&z);
            let emp = &z * z.transpose() / n as f64;
            let mu2 = emp.trace() / d as f64;
            let delta = (&emp - DMatrix::<f64>::identity(d, d) * mu2).norm_squared() / d as f64;
            let mut beta = 0.0;
            for i in 0..n {
                let zi = z.column(i);
                beta += (&zi * zi.transpose() - &emp).norm_squared();
            }
            let beta = (beta / (n * n) as f64 / d as f64).min(delta);
            assert!((mu - mu2).abs() < 1e-12);
            assert!(
                (s - beta / delta).abs() < 1e-10,
                "{d}x{n}: {s} vs {}",
                beta / delta
            );
        }
    }
}
