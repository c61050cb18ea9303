//! Small dense linear algebra on top of nalgebra (pure Rust: wasm32, no LAPACK).

use crate::rng::Rng;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Two 4-lane accumulators over exact chunks: LLVM emits 256-bit FMA-free vector code without
    // bounds checks (the hot loop of M3's permutations). The summation order is fixed, so results
    // do not depend on the target's vector width.
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut lo = [0.0f64; 4];
    let mut hi = [0.0f64; 4];
    for (x, y) in ca.zip(cb) {
        let (x0, x1) = x.split_at(4);
        let (y0, y1) = y.split_at(4);
        for i in 0..4 {
            lo[i] += x0[i] * y0[i];
            hi[i] += x1[i] * y1[i];
        }
    }
    let mut t = ((lo[0] + hi[0]) + (lo[1] + hi[1])) + ((lo[2] + hi[2]) + (lo[3] + hi[3]));
    for (x, y) in ra.iter().zip(rb) {
        t += x * y;
    }
    t
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// a += s * b
pub fn axpy(a: &mut [f64], s: f64, b: &[f64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += s * y;
    }
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d = norm(a) * norm(b);
    if d == 0.0 {
        0.0
    } else {
        dot(a, b) / d
    }
}

/// Eigen-decomposition of a symmetric matrix, eigenvalues in descending order.
pub fn sym_eigen_desc(m: DMatrix<f64>) -> (Vec<f64>, DMatrix<f64>) {
    let n = m.nrows();
    let eig = SymmetricEigen::new(m);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let vals = order.iter().map(|&i| eig.eigenvalues[i]).collect();
    let vecs = DMatrix::from_fn(n, n, |r, c| eig.eigenvectors[(r, order[c])]);
    (vals, vecs)
}

/// Appends to `basis` (columns, orthonormal) the directions of `candidates` (columns) not yet
/// spanned, by Gram-Schmidt with re-orthogonalisation. Directions whose remaining norm is below
/// `rel_tol` times their original norm are dropped.
pub fn extend_orthonormal(
    basis: &mut Vec<DVector<f64>>,
    candidates: &[DVector<f64>],
    rel_tol: f64,
) {
    for c in candidates {
        let n0 = c.norm();
        if n0 == 0.0 {
            continue;
        }
        let mut v = c.clone();
        for _ in 0..2 {
            for b in basis.iter() {
                let proj = b.dot(&v);
                v.axpy(-proj, b, 1.0);
            }
        }
        let n1 = v.norm();
        if n1 > rel_tol * n0 {
            basis.push(v / n1);
        }
    }
}

/// Top-`k` principal directions (uncentred) of the data rows, given as the columns of
/// `rows_t` (h x n, f32: the row-major data buffer as it is, no transposed copy), as h x k
/// columns, with the corresponding squared singular values. Exact when the smaller side is
/// small, randomized subspace iteration (3 power steps, 16 extra columns) otherwise.
pub fn top_principal_directions(
    rows_t: &DMatrix<f32>,
    k: usize,
    seed: u64,
) -> (DMatrix<f64>, Vec<f64>) {
    let (dirs, vals) = top_principal_directions_raw(rows_t, k, seed);
    // Drop directions of (numerically) zero variance: the data has lower rank than k.
    let top = vals.first().copied().unwrap_or(0.0);
    let keep = vals
        .iter()
        .take_while(|&&v| v > 1e-10 * top && v > 0.0)
        .count();
    (dirs.columns(0, keep).into_owned(), vals[..keep].to_vec())
}

fn top_principal_directions_raw(a: &DMatrix<f32>, k: usize, seed: u64) -> (DMatrix<f64>, Vec<f64>) {
    // a = Xᵀ (h x n) for the data X (n x h).
    let (h, n) = a.shape();
    let k = k.min(n).min(h);
    if k == 0 {
        return (DMatrix::zeros(h, 0), vec![]);
    }
    let small = n.min(h);
    if small <= 768 || k + 16 >= small {
        let ad = a.map(|v| v as f64);
        if h <= n {
            let g = &ad * ad.transpose(); // XᵀX
            let (vals, vecs) = sym_eigen_desc(g);
            return (vecs.columns(0, k).into_owned(), vals[..k].to_vec());
        }
        let g = gram_of_columns(&ad); // XXᵀ
        let (vals, vecs) = sym_eigen_desc(g);
        let mut out = DMatrix::zeros(h, k);
        let mut kept = Vec::with_capacity(k);
        for j in 0..k {
            let u = &ad * vecs.column(j); // Xᵀv
            let nrm = u.norm();
            if nrm > 0.0 {
                out.set_column(j, &(u / nrm));
            }
            kept.push(vals[j].max(0.0));
        }
        return (out, kept);
    }
    let l = (k + 16).min(small);
    let mut rng = Rng::stream(seed, "top_principal_directions", 0);
    let omega = DMatrix::<f32>::from_fn(h, l, |_, _| rng.normal() as f32);
    // XΩ = aᵀΩ (strided sgemm), XᵀY = a Y (plain sgemm).
    let mut q = orthonormal_columns(&(a * transpose_times_f32(a, &omega)));
    for _ in 0..2 {
        let y = a * transpose_times_f32(a, &q);
        q = orthonormal_columns(&y);
    }
    // Rayleigh-Ritz in the subspace.
    let xq = transpose_times_f32(a, &q).map(|v| v as f64);
    let small_g = gram_of_columns(&xq);
    let (vals, vecs) = sym_eigen_desc(small_g);
    let qd = q.map(|v| v as f64);
    let dirs = &qd * vecs.columns(0, k);
    // Re-orthonormalise in f64 (the f32 subspace is orthonormal only to ~1e-7).
    let mut basis = Vec::with_capacity(k);
    let cols: Vec<DVector<f64>> = (0..k).map(|j| dirs.column(j).into_owned()).collect();
    extend_orthonormal(&mut basis, &cols, 1e-6);
    let m = DMatrix::from_columns(&basis);
    (m, vals[..basis.len()].to_vec())
}

fn orthonormal_columns(y: &DMatrix<f32>) -> DMatrix<f32> {
    let yd = y.map(|v| v as f64);
    let qr = yd.qr();
    qr.q().map(|v| v as f32)
}

/// Solves a small dense system (LU with partial pivoting); None if singular.
pub fn solve(a: DMatrix<f64>, b: DMatrix<f64>) -> Option<DMatrix<f64>> {
    a.lu().solve(&b)
}

/// AᵀA for a tall matrix A (the Gram of its columns): only the blocks on and below the
/// diagonal are multiplied (8 x 8 column blocks: 36 of 64 block products, straight from A's
/// buffer with swapped strides), then mirrored.
macro_rules! gram_of_columns_impl {
    ($name:ident, $t:ty, $gemm:path) => {
        pub fn $name(a: &DMatrix<$t>) -> DMatrix<$t> {
            let (d, n) = a.shape();
            let nb = n.div_ceil(8).max(1);
            let mut g = DMatrix::<$t>::zeros(n, n);
            for i0 in (0..n).step_by(nb) {
                let bi = nb.min(n - i0);
                for j0 in (0..=i0).step_by(nb) {
                    let bj = nb.min(n - j0);
                    // SAFETY: columns i0..i0+bi and j0..j0+bj of `a` (d rows each) and the
                    // block (i0, j0) of `g` (n x n, column-major) lie inside their buffers.
                    unsafe {
                        $gemm(
                            bi,
                            d,
                            bj,
                            1.0,
                            a.as_ptr().add(i0 * d),
                            d as isize,
                            1,
                            a.as_ptr().add(j0 * d),
                            1,
                            d as isize,
                            0.0,
                            g.as_mut_ptr().add(i0 + j0 * n),
                            1,
                            n as isize,
                        );
                    }
                }
            }
            mirror_lower(&mut g);
            g
        }
    };
}
gram_of_columns_impl!(gram_of_columns, f64, matrixmultiply::dgemm);
gram_of_columns_impl!(gram_of_columns_f32, f32, matrixmultiply::sgemm);

/// Aᵀ B for column-major A (d x n) and B (d x m), without materialising Aᵀ (a strided
/// transposed copy costs more than the product's packing at these sizes).
macro_rules! transpose_times_impl {
    ($name:ident, $t:ty, $gemm:path) => {
        pub fn $name(a: &DMatrix<$t>, b: &DMatrix<$t>) -> DMatrix<$t> {
            let (d, n) = a.shape();
            assert_eq!(b.nrows(), d, "transpose_times: inner dimensions");
            let m = b.ncols();
            let mut c = DMatrix::<$t>::zeros(n, m);
            if d == 0 || n == 0 || m == 0 {
                return c;
            }
            // SAFETY: the strides describe Aᵀ (n x d), B (d x m) and C (n x m) inside their
            // column-major buffers.
            unsafe {
                $gemm(
                    n,
                    d,
                    m,
                    1.0,
                    a.as_ptr(),
                    d as isize,
                    1,
                    b.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                );
            }
            c
        }
    };
}
transpose_times_impl!(transpose_times, f64, matrixmultiply::dgemm);
transpose_times_impl!(transpose_times_f32, f32, matrixmultiply::sgemm);

/// Copies the strictly lower triangle onto the upper, in tiles (a plain transposed loop walks
/// memory with a stride of n and is cache-hostile at n in the thousands).
fn mirror_lower<T: nalgebra::Scalar + Copy>(g: &mut DMatrix<T>) {
    const T: usize = 64;
    let n = g.nrows();
    for j0 in (0..n).step_by(T) {
        for i0 in (j0..n).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                for i in i0.max(j + 1)..(i0 + T).min(n) {
                    g[(j, i)] = g[(i, j)];
                }
            }
        }
    }
}

/// Solves L Lᵀ X = B for a lower Cholesky factor L (n x n) and B (n x m): blocked forward and
/// backward substitution with the off-diagonal work as gemm (nalgebra's substitution streams
/// all of L once per right-hand side). None if L has a zero on its diagonal.
pub fn cholesky_solve(l: &DMatrix<f64>, b: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    const NB: usize = 128;
    let n = l.nrows();
    assert_eq!(b.nrows(), n, "cholesky_solve: dimensions");
    let mut x = b.clone();
    // Forward: L Y = B.
    for k0 in (0..n).step_by(NB) {
        let kb = NB.min(n - k0);
        if k0 > 0 {
            let (done, mut cur) = x.rows_range_pair_mut(0..k0, k0..k0 + kb);
            cur.gemm(-1.0, &l.view((k0, 0), (kb, k0)), &done, 1.0);
        }
        if !l
            .view((k0, k0), (kb, kb))
            .solve_lower_triangular_mut(&mut x.rows_mut(k0, kb))
        {
            return None;
        }
    }
    // Backward: Lᵀ X = Y.
    for k0 in (0..n).step_by(NB).rev() {
        let kb = NB.min(n - k0);
        let below = n - k0 - kb;
        if below > 0 {
            let panel_t = l.view((k0 + kb, k0), (below, kb)).transpose();
            let (mut cur, later) = x.rows_range_pair_mut(k0..k0 + kb, k0 + kb..n);
            cur.gemm(-1.0, &panel_t, &later, 1.0);
        }
        if !l
            .view((k0, k0), (kb, kb))
            .tr_solve_lower_triangular_mut(&mut x.rows_mut(k0, kb))
        {
            return None;
        }
    }
    Some(x)
}

/// Lower Cholesky factor of a symmetric positive-definite matrix, right-looking and blocked so
/// that most of the work is one gemm per block column (nalgebra's unblocked factorisation is
/// ~4x slower at n = 2,304). None if the matrix is not positive definite.
pub fn cholesky_lower(mut a: DMatrix<f64>) -> Option<DMatrix<f64>> {
    const NB: usize = 128;
    let n = a.nrows();
    for k0 in (0..n).step_by(NB) {
        let kb = NB.min(n - k0);
        let l11 = a.view((k0, k0), (kb, kb)).into_owned().cholesky()?.l();
        a.view_mut((k0, k0), (kb, kb)).copy_from(&l11);
        let m = n - k0 - kb;
        if m == 0 {
            continue;
        }
        // L21 = A21 L11⁻ᵀ as one gemm with the inverse of the small diagonal block (its
        // substitution, column by column over the m rows, was 10% of M3's time).
        let l11_inv = l11
            .solve_lower_triangular(&DMatrix::<f64>::identity(kb, kb))
            .expect("a Cholesky factor has a positive diagonal");
        let l21 = a.view((k0 + kb, k0), (m, kb)) * l11_inv.transpose();
        let l21t = l21.transpose();
        a.view_mut((k0 + kb, k0), (m, kb)).copy_from(&l21);
        // Trailing update A22 -= L21 L21ᵀ on the lower block triangle only (half the work of
        // the full square; the upper triangle is never read).
        for j0 in (0..m).step_by(NB) {
            let jb = NB.min(m - j0);
            let mut col = a.view_mut((k0 + kb + j0, k0 + kb + j0), (m - j0, jb));
            col.gemm(-1.0, &l21.rows(j0, m - j0), &l21t.columns(j0, jb), 1.0);
        }
    }
    a.fill_upper_triangle(0.0, 1);
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_cholesky_and_solve_match_nalgebra() {
        // n spans several 128-blocks and a ragged last one.
        let mut rng = Rng::new(11);
        let n = 300;
        let y = DMatrix::<f64>::from_fn(n + 20, n, |_, _| rng.normal());
        let mut a = y.transpose() * &y;
        for i in 0..n {
            a[(i, i)] += 1.0;
        }
        let b = DMatrix::<f64>::from_fn(n, 5, |_, _| rng.normal());
        let l = cholesky_lower(a.clone()).expect("positive definite");
        let l_ref = a.clone().cholesky().expect("positive definite").l();
        assert!((&l - &l_ref).norm() < 1e-12 * l_ref.norm());
        let x = cholesky_solve(&l, &b).expect("solvable");
        let x_ref = a.clone().cholesky().expect("positive definite").solve(&b);
        assert!(
            (&x - &x_ref).norm() < 1e-10 * x_ref.norm(),
            "{}",
            (&x - &x_ref).norm()
        );
        assert!((&a * &x - &b).norm() < 1e-12 * a.norm() * x.norm());
    }

    #[test]
    fn randomized_pcs_match_exact_on_low_rank_data() {
        // 1000 x 900 data of rank 40 plus small noise: the randomized route (small side > 768)
        // must find the same top-20 subspace as the exact eigen-decomposition.
        let mut rng = Rng::new(5);
        let (n, h, r) = (1000, 900, 40);
        let a = DMatrix::<f64>::from_fn(n, r, |_, j| rng.normal() * (1.0 + (r - j) as f64));
        let b = DMatrix::<f64>::from_fn(r, h, |_, _| rng.normal());
        let x = (a * b).map(|v| v as f32 + 0.01 * rng.normal() as f32);
        let (q, vals) = top_principal_directions(&x.transpose(), 20, 1);
        let xd = x.map(|v| v as f64);
        let (evals, evecs) = sym_eigen_desc(xd.tr_mul(&xd));
        for j in 0..20 {
            assert!(
                (vals[j] - evals[j]).abs() / evals[j] < 1e-4,
                "{j}: {} vs {}",
                vals[j],
                evals[j]
            );
            let c = q.column(j).dot(&evecs.column(j)).abs();
            assert!(c > 0.999, "direction {j} cos {c}");
        }
    }
    #[test]
    fn blocked_cholesky_and_gram_match_direct() {
        let mut rng = Rng::new(9);
        let a = DMatrix::<f64>::from_fn(300, 290, |_, _| rng.normal());
        let g = gram_of_columns(&a);
        let direct = a.tr_mul(&a);
        assert!((&g - &direct).abs().max() < 1e-9);
        let spd = direct + DMatrix::<f64>::identity(290, 290);
        let l = cholesky_lower(spd.clone()).expect("SPD");
        assert!((&l * l.transpose() - &spd).abs().max() < 1e-8);
        assert!((l - spd.clone().cholesky().unwrap().l()).abs().max() < 1e-9);
        let mut not_pd = spd;
        not_pd[(200, 200)] = -1.0;
        assert!(cholesky_lower(not_pd).is_none());
    }
}
