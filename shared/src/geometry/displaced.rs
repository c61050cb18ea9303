//! Gram matrices of vectors displaced by weighted sums of per-question vectors, for a batch of
//! weight vectors (draws) at once: what every M1/M2 permutation and bootstrap draw reduces to.

use super::gram_of_rows;
use nalgebra::DMatrix;
use std::ops::Range;

/// Draws processed per matrix product (memory: sources x dims x DRAW_BATCH f64).
pub const DRAW_BATCH: usize = 128;

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
///
/// `Kernel`: on full bundles with few sources and wide vectors (the permutation null: 12
/// personas x 3,584 dims against 240 questions) the sources are replaced by their Gram matrix
/// K, (n_src·q)², source-major (index s·q + question), computed once in f64 and kept in f32:
/// ⟨σ_s, σ_t⟩ = wᵀ K_st w needs n_src(n_src+1)/2 · q² multiply-adds per draw instead of
/// n_src · sd · q (+ n_src² · sd for the per-draw Gram), 2.4x fewer at the default size, and
/// the same numbers up to the f32 rounding of K (~1e-7 of |σ|², tested against the direct form).
enum Sources {
    F64(DMatrix<f64>),
    F32(DMatrix<f32>),
    Kernel(DMatrix<f32>),
}

/// One draw's linear and quadratic terms: lin[s·m + i] = ⟨C_i, σ_s⟩, quad[s·n_src + t] = ⟨σ_s, σ_t⟩.
pub struct DrawTerms {
    pub lin: Vec<f64>,
    pub quad: Vec<f64>,
}

impl DisplacedGram {
    /// `base`: m vectors (width ≥ sd); `src`: laid out [q][s][sd] (question-major);
    /// `single`: keep the sources in f32 (see [`Sources`]); `draws`: how many draws this
    /// instance will compute (chooses the kernel form where it is cheaper, `single` only).
    pub fn new(
        base: &[&[f64]],
        src: Vec<f64>,
        n_src: usize,
        q: usize,
        sd: usize,
        single: bool,
        draws: usize,
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
        let src = if single && kernel_is_cheaper(n_src, q, sd, draws) {
            Sources::Kernel(source_kernel(&src, n_src, q, sd))
        } else if single {
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
            let quads: Vec<Vec<f64>> = match &self.src {
                Sources::F64(src) => self.quads_direct(&(src * &w)),
                Sources::F32(src) => {
                    self.quads_direct(&(src * w.map(|v| v as f32)).map(|v| v as f64))
                }
                Sources::Kernel(k) => self.quads_kernel(k, &w),
            };
            for (j, ((&i, wi), quad)) in all.iter().zip(w_all).zip(quads).enumerate() {
                if !range.contains(&i) {
                    continue;
                }
                out.push((
                    wi,
                    DrawTerms {
                        lin: lin.column(j).iter().copied().collect(),
                        quad,
                    },
                ));
            }
        }
        out
    }

    /// ⟨σ_s, σ_t⟩ of every draw of a batch from σ itself, `sig` = (n_src·sd) x DRAW_BATCH.
    fn quads_direct(&self, sig: &DMatrix<f64>) -> Vec<Vec<f64>> {
        (0..sig.ncols())
            .map(|j| {
                let col = sig.column(j);
                let s = nalgebra::DMatrixView::<f64>::from_slice(
                    &col.as_slice()[..self.n_src * self.sd],
                    self.sd,
                    self.n_src,
                );
                (s.transpose() * s).iter().copied().collect() // n_src x n_src
            })
            .collect()
    }

    /// ⟨σ_s, σ_t⟩ = wᵀ K_st w of every draw of a batch from the source kernel: for each t one
    /// product of K's rows s ≤ t of column block t with the weights, then q-long dots.
    fn quads_kernel(&self, k: &DMatrix<f32>, w: &DMatrix<f64>) -> Vec<Vec<f64>> {
        let (ns, q, nb) = (self.n_src, self.q, w.ncols());
        let wf = w.map(|v| v as f32);
        let mut quads = vec![vec![0.0f64; ns * ns]; nb];
        for t in 0..ns {
            let y = k.view((0, t * q), ((t + 1) * q, q)) * &wf; // K_st w for all s ≤ t
            for (j, quad) in quads.iter_mut().enumerate() {
                let (wj, yj) = (w.column(j), y.column(j));
                for s in 0..=t {
                    let v: f64 = (0..q).map(|qi| wj[qi] * yj[s * q + qi] as f64).sum();
                    quad[s * ns + t] = v;
                    quad[t * ns + s] = v;
                }
            }
        }
        quads
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

/// Multiply-adds of the direct form (f32, counted as half an f64 one) against the kernel form
/// (its f64 Gram once, then f32 products) for `draws` draws.
fn kernel_is_cheaper(n_src: usize, q: usize, sd: usize, draws: usize) -> bool {
    let (ns, q, sd, draws) = (n_src as f64, q as f64, sd as f64, draws as f64);
    let direct = draws * (ns * sd * q + ns * ns * sd) / 2.0;
    let kernel = (ns * q).powi(2) * sd / 2.0 + draws * (ns * (ns + 1.0) / 2.0) * q * q / 2.0;
    kernel < 0.8 * direct
}

/// The Gram matrix of all source vectors, source-major (index s·q + question), in f64, kept
/// in f32. `src` is (n_src·sd) x q column-major: column q = the sources of question q.
fn source_kernel(src: &DMatrix<f64>, n_src: usize, q: usize, sd: usize) -> DMatrix<f32> {
    let v = DMatrix::<f64>::from_fn(sd, n_src * q, |j, c| {
        let (s, qi) = (c / q, c % q);
        src[(s * sd + j, qi)]
    });
    crate::linalg::gram_of_columns(&v).map(|x| x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::gram_of_rows;
    use crate::rng::Rng;

    fn gram(rows: &[Vec<f64>]) -> Vec<f64> {
        gram_of_rows(&rows.iter().map(|r| r.as_slice()).collect::<Vec<_>>())
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
        let dg = DisplacedGram::new(&refs, src.clone(), ns, q, sd, false, 1);
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

    #[test]
    fn kernel_form_equals_direct_form() {
        // Few sources, wide vectors, many draws: the kernel form is chosen; its displaced Gram
        // matrices equal the f64 direct form's up to the f32 rounding of the kernel.
        let (m, ns, q, sd, draws) = (4, 2, 6, 400, 1000);
        assert!(kernel_is_cheaper(ns, q, sd, draws));
        assert!(
            !kernel_is_cheaper(36, 240, 3584, 1000),
            "bootstrap shape stays direct"
        );
        assert!(
            kernel_is_cheaper(12, 240, 3584, 10_000),
            "the null at the default size"
        );
        let mut rng = Rng::new(9);
        let base: Vec<Vec<f64>> = (0..m)
            .map(|_| (0..sd).map(|_| 3.0 + rng.normal()).collect())
            .collect();
        let src: Vec<f64> = (0..q * ns * sd).map(|_| rng.normal()).collect();
        let refs: Vec<&[f64]> = base.iter().map(|r| r.as_slice()).collect();
        let direct = DisplacedGram::new(&refs, src.clone(), ns, q, sd, false, draws);
        let kernel = DisplacedGram::new(&refs, src, ns, q, sd, true, draws);
        assert!(matches!(kernel.src, Sources::Kernel(_)));
        let weights = |i: usize| -> Vec<f64> {
            let mut r = Rng::new(100 + i as u64);
            (0..q).map(|_| (r.below(3)) as f64).collect()
        };
        let (a, b) = (direct.terms(0..300, weights), kernel.terms(0..300, weights));
        let (src_of, coef) = ([0, 1, 0, 1], [0.5, -0.25, 1.0, 2.0]);
        for ((wa, ta), (wb, tb)) in a.iter().zip(&b) {
            assert_eq!(wa, wb);
            // The f32 rounding of K moves a quadratic term by ~1e-7 of its size.
            let scale = ta.quad.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (x, y) in ta.quad.iter().zip(&tb.quad) {
                assert!((x - y).abs() < 1e-6 * scale, "quad {x} vs {y}");
            }
            let (ga, gb) = (
                direct.gram(ta, &src_of, &coef),
                kernel.gram(tb, &src_of, &coef),
            );
            for (x, y) in ga.iter().zip(&gb) {
                assert!((x - y).abs() < 4.0 * 1e-6 * scale, "gram {x} vs {y}");
            }
        }
        // Not a vacuous comparison: the quadratic terms are far from zero.
        assert!(a[1].1.quad[0] > 1.0);
    }
}
