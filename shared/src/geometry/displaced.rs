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
