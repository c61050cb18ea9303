//! Analysis coordinates: every metric works in one orthonormal coordinate system per
//! (method, layer), shared by all checkpoints.
//!
//! - **Full bundles (`analyze`): exact.** The coordinates are the hidden dimensions themselves
//!   (d = k = hidden size): centroids and per-question residuals at full width, so every
//!   permutation and bootstrap draw of M1/M2 is the full-dimensional one. M3 (LDA) works on the
//!   top `components` principal directions of the within-persona residuals (all checkpoints
//!   pooled), stored separately as `lda_features`.
//! - **Compact bundles (the page): approximate.** Basis = [top-k principal directions of the
//!   within-persona residuals] followed by the directions completing the span of every centroid;
//!   centroids exact (f32), residuals on the k components (f16). Centroid cosines, norms and
//!   projections are exact; permutation/bootstrap draws miss the residual outside the k
//!   components, so their p-values and intervals are approximations (`exact = false`).
//!
//! Both apply the paired empty-response filter: a (persona, question) is used for every
//! checkpoint only where it is valid in every checkpoint (per method), centroids are the means
//! over that paired set, and the number dropped is reported.
//!
//! Why the exact coordinates give the exact null: every permuted or resampled centroid is a
//! linear combination of per-question activations, and every statistic is a function of inner
//! products of such combinations; the identity coordinates preserve all inner products.

use crate::bundle::{Blob, Bundle, CompactBasisInfo, CompactInfo, DType, Method, Responses};
use crate::linalg::{extend_orthonormal, top_principal_directions};
use nalgebra::{DMatrix, DVector};

/// Coordinates of one (method, layer) for every checkpoint.
#[derive(Clone, Debug)]
pub struct MethodLayerCoords {
    pub method: Method,
    pub layer: u32,
    pub n_personas: usize,
    pub n_questions: usize,
    /// Basis size d.
    pub dim: usize,
    /// Number of residual components k (the first k basis vectors).
    pub k: usize,
    /// Per checkpoint: personas x d centroid coordinates.
    pub centroids: Vec<Vec<f64>>,
    /// Per checkpoint: personas x questions x k residual coordinates (zero where invalid;
    /// zero mean over the valid questions of each persona).
    pub residuals: Vec<Vec<f32>>,
    /// Per checkpoint: personas x questions validity.
    pub valid: Vec<Vec<bool>>,
    /// Within-persona sum of squares in all dimensions, and the part the LDA components (compact:
    /// the stored components) retain.
    pub residual_ss_total: f64,
    pub residual_ss_retained: f64,
    /// Per checkpoint: personas x questions squared norms of the activations (compact bundles:
    /// plus the mean energy outside the stored coordinates), and per persona their mean over the
    /// valid questions (the within-persona spread of `M1_separation` uses it).
    pub sq_norms: Vec<Vec<f64>>,
    pub mean_sq_norm: Vec<Vec<f64>>,
    /// True when every draw is the full-dimensional one (full bundles).
    pub exact: bool,
    /// LDA features (M3): personas x questions x lda_k per checkpoint (zero where invalid).
    pub lda_k: usize,
    pub lda_features: Vec<Vec<f32>>,
    /// Per checkpoint: (persona, question) cells valid there but dropped by the paired filter.
    pub n_dropped_paired: Vec<usize>,
}

impl MethodLayerCoords {
    pub fn centroid(&self, ck: usize, p: usize) -> &[f64] {
        &self.centroids[ck][p * self.dim..(p + 1) * self.dim]
    }
    pub fn residual(&self, ck: usize, p: usize, q: usize) -> &[f32] {
        let o = (p * self.n_questions + q) * self.k;
        &self.residuals[ck][o..o + self.k]
    }
    pub fn is_valid(&self, ck: usize, p: usize, q: usize) -> bool {
        self.valid[ck][p * self.n_questions + q]
    }
    pub fn n_valid(&self, ck: usize, p: usize) -> usize {
        self.valid[ck][p * self.n_questions..(p + 1) * self.n_questions]
            .iter()
            .filter(|&&v| v)
            .count()
    }
    pub fn sq_norm(&self, ck: usize, p: usize, q: usize) -> f64 {
        self.sq_norms[ck][p * self.n_questions + q]
    }
    pub fn lda_row(&self, ck: usize, p: usize, q: usize) -> &[f32] {
        let o = (p * self.n_questions + q) * self.lda_k;
        &self.lda_features[ck][o..o + self.lda_k]
    }
    /// Valid (persona, question) cells of a checkpoint, and the fewest valid questions of a
    /// persona (N_effective).
    pub fn n_effective(&self, ck: usize) -> (usize, usize) {
        let total = self.valid[ck].iter().filter(|&&v| v).count();
        let min = (0..self.n_personas)
            .map(|p| self.n_valid(ck, p))
            .min()
            .unwrap_or(0);
        (total, min)
    }
    pub fn retained_fraction(&self) -> f64 {
        if self.residual_ss_total > 0.0 {
            self.residual_ss_retained / self.residual_ss_total
        } else {
            1.0
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordsError {
    #[error("cell (checkpoint `{checkpoint}`, method {method}, layer {layer}): the stored centroid of persona `{persona}` differs from the mean of its valid per-question activations by {diff:.3e} (relative); the bundle was edited or written by a faulty tool")]
    CentroidMismatch {
        checkpoint: String,
        method: &'static str,
        layer: u32,
        persona: String,
        diff: f64,
    },
    #[error("cell (checkpoint `{checkpoint}`, method {method}, layer {layer}): per-question activation of persona `{persona}`, question {question} is NaN or Inf")]
    NonFinite {
        checkpoint: String,
        method: &'static str,
        layer: u32,
        persona: String,
        question: u32,
    },
}

/// Per persona, the mean of the stored residuals over its valid questions (None: no valid one).
fn persona_residual_means(
    res: &[f32],
    valid: &[bool],
    p: usize,
    q: usize,
    k: usize,
) -> Vec<Option<Vec<f64>>> {
    (0..p)
        .map(|pi| {
            let mut mean = vec![0.0f64; k];
            let mut n = 0usize;
            for qi in 0..q {
                if valid[pi * q + qi] {
                    n += 1;
                    let o = (pi * q + qi) * k;
                    for j in 0..k {
                        mean[j] += res[o + j] as f64;
                    }
                }
            }
            (n > 0).then(|| mean.into_iter().map(|m| m / n as f64).collect())
        })
        .collect()
}

/// Removes, per persona, the mean of the stored residuals over valid questions, so that the
/// per-question data average exactly to the centroid even after f16 rounding.
fn recentre(res: &mut [f32], valid: &[bool], p: usize, q: usize, k: usize) {
    let means = persona_residual_means(res, valid, p, q, k);
    for (pi, mean) in means.iter().enumerate() {
        let Some(mean) = mean else { continue };
        for qi in 0..q {
            let o = (pi * q + qi) * k;
            if valid[pi * q + qi] {
                for j in 0..k {
                    res[o + j] = (res[o + j] as f64 - mean[j]) as f32;
                }
            } else {
                res[o..o + k].iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
}

/// How the coordinates of a full bundle are built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CoordsMode {
    /// `analyze`: identity coordinates (exact draws); LDA on `lda_components` residual PCs.
    Exact { lda_components: usize },
    /// `compact`: a basis of `components` residual PCs plus the centroid span.
    Basis { components: usize },
}

/// The paired validity of a method: valid in every checkpoint.
pub fn paired_valid(bundle: &Bundle, m: Method, l: u32) -> Vec<bool> {
    let (p, q) = (bundle.n_personas(), bundle.n_questions());
    let mut v = vec![true; p * q];
    for ck in 0..bundle.checkpoints.len() {
        let cell = bundle.cell(ck, m, l).expect("validated");
        for (a, &b) in v.iter_mut().zip(&cell.valid) {
            *a &= b;
        }
    }
    v
}

/// Coordinates of every (method, layer) of a bundle. Full bundles are built as `mode` says;
/// compact bundles already hold coordinates.
pub fn bundle_coords(
    bundle: &Bundle,
    mode: CoordsMode,
    seed: u64,
) -> Result<Vec<MethodLayerCoords>, CoordsError> {
    let mut jobs = Vec::new();
    for &m in &bundle.methods {
        for &l in &bundle.layers {
            jobs.push((m, l));
        }
    }
    let results = crate::parallel::par_map(jobs.len(), |i| {
        let (m, l) = jobs[i];
        if bundle.compact.is_some() {
            Ok(compact_cell_coords(bundle, m, l))
        } else {
            full_cell_coords(bundle, m, l, mode, seed)
        }
    });
    results.into_iter().collect()
}

/// Squared norms ‖c_p + r_pq‖² (+ `extra`) and their per-persona means over valid questions.
fn norms_from_coords(
    cents: &[f64],
    res: &[f32],
    valid: &[bool],
    (p, q, d, k): (usize, usize, usize, usize),
    extra: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut sq = vec![0.0; p * q];
    let mut mean = vec![0.0; p];
    for pi in 0..p {
        let c = &cents[pi * d..(pi + 1) * d];
        let c2: f64 = c.iter().map(|x| x * x).sum();
        let mut n = 0usize;
        for qi in 0..q {
            if !valid[pi * q + qi] {
                continue;
            }
            let r = &res[(pi * q + qi) * k..(pi * q + qi + 1) * k];
            let cr: f64 = c[..k].iter().zip(r).map(|(a, &b)| a * b as f64).sum();
            let r2: f64 = r.iter().map(|&b| (b as f64) * (b as f64)).sum();
            sq[pi * q + qi] = c2 + 2.0 * cr + r2 + extra;
            mean[pi] += sq[pi * q + qi];
            n += 1;
        }
        mean[pi] /= n.max(1) as f64;
    }
    (sq, mean)
}

/// Mean over personas of a checkpoint's centroids (p rows of width d). LDA features are stored
/// relative to it: LDA is shift-invariant, and a pure shift between checkpoints then leaves the
/// f32 features bit-identical instead of rounding them differently.
fn centroid_mean(cents: &[f64], p: usize, d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for pi in 0..p {
        for j in 0..d {
            m[j] += cents[pi * d + j] / p as f64;
        }
    }
    m
}

/// LDA features from stored coordinates: (c_p − centroid mean + r_pq) on the first k basis
/// vectors (the residual principal directions), zero where invalid.
fn stored_lda_features(
    cents: &[f64],
    res: &[f32],
    valid: &[bool],
    (p, q, d, k): (usize, usize, usize, usize),
) -> Vec<f32> {
    let cm = centroid_mean(cents, p, d);
    let mut lda = vec![0.0f32; p * q * k];
    for i in (0..p * q).filter(|&i| valid[i]) {
        let pi = i / q;
        for j in 0..k {
            lda[i * k + j] = (cents[pi * d + j] - cm[j] + res[i * k + j] as f64) as f32;
        }
    }
    lda
}

/// Applies the paired filter to stored coordinates: the centroid moves to the mean over the
/// paired set (within the stored residual components) and the residuals are re-centred.
fn restrict_to_paired(
    cents: &mut [f64],
    res: &mut [f32],
    valid: &[bool],
    (p, q, d, k): (usize, usize, usize, usize),
) {
    let means = persona_residual_means(res, valid, p, q, k);
    for (pi, mean) in means.iter().enumerate() {
        if let Some(mean) = mean {
            for j in 0..k {
                cents[pi * d + j] += mean[j];
            }
        }
    }
    recentre(res, valid, p, q, k);
}

/// Provenance key of a compact bundle's per-(method/layer, checkpoint, persona) mean energy
/// outside the stored coordinates: JSON `{"A/15": [[persona means] per checkpoint], ...}`.
/// With it, each persona's mean squared norm (the within-persona spread of `M1_separation`) is
/// the full bundle's; without it (bundles made before), the total outside energy is spread
/// evenly over every row of every checkpoint.
pub const OUTSIDE_ENERGY_KEY: &str = "compact.outside_energy";

fn outside_energy_key(m: Method, l: u32) -> String {
    format!("{}/{l}", m.name())
}

/// The stored per-(checkpoint, persona) outside energy of one (method, layer), if the bundle
/// carries it with the right shape and finite, non-negative values.
fn stored_outside_energy(bundle: &Bundle, m: Method, l: u32) -> Option<Vec<Vec<f64>>> {
    let all: serde_json::Value =
        serde_json::from_str(bundle.provenance.get(OUTSIDE_ENERGY_KEY)?).ok()?;
    let v: Vec<Vec<f64>> =
        serde_json::from_value(all.get(outside_energy_key(m, l))?.clone()).ok()?;
    // A hostile or damaged entry (wrong shape, negative energy) is ignored: the even spread.
    (v.len() == bundle.checkpoints.len()
        && v.iter().all(|r| {
            r.len() == bundle.n_personas() && r.iter().all(|e| e.is_finite() && *e >= 0.0)
        }))
    .then_some(v)
}

fn compact_cell_coords(bundle: &Bundle, m: Method, l: u32) -> MethodLayerCoords {
    let outside = stored_outside_energy(bundle, m, l);
    compact_cell_coords_with(bundle, m, l, outside.as_deref())
}

/// `outside[ck][p]`: energy outside the stored coordinates added to every row of persona p of
/// checkpoint ck; None: the total spread evenly.
fn compact_cell_coords_with(
    bundle: &Bundle,
    m: Method,
    l: u32,
    outside: Option<&[Vec<f64>]>,
) -> MethodLayerCoords {
    let info = bundle
        .basis_info(m, l)
        .expect("validated compact bundle has a basis for every method and layer");
    let (p, q) = (bundle.n_personas(), bundle.n_questions());
    let (d, k) = (info.dim as usize, info.k as usize);
    let paired = paired_valid(bundle, m, l);
    let nck = bundle.checkpoints.len();
    // Energy outside the stored components, spread evenly over the rows that made the basis.
    let rows_total: usize = (0..nck)
        .map(|ck| {
            bundle
                .cell(ck, m, l)
                .expect("validated")
                .valid
                .iter()
                .filter(|&&v| v)
                .count()
        })
        .sum();
    let extra =
        (info.residual_ss_total - info.residual_ss_retained).max(0.0) / rows_total.max(1) as f64;
    let mut out = MethodLayerCoords {
        method: m,
        layer: l,
        n_personas: p,
        n_questions: q,
        dim: d,
        k,
        centroids: vec![],
        residuals: vec![],
        valid: vec![],
        residual_ss_total: info.residual_ss_total,
        residual_ss_retained: info.residual_ss_retained,
        sq_norms: vec![],
        mean_sq_norm: vec![],
        exact: false,
        lda_k: k,
        lda_features: vec![],
        n_dropped_paired: vec![],
    };
    for ck in 0..nck {
        let cell = bundle.cell(ck, m, l).expect("validated");
        let mut cents: Vec<f64> = cell.centroids.to_f32().iter().map(|&x| x as f64).collect();
        let mut r = cell.per_question.to_f32();
        recentre(&mut r, &cell.valid, p, q, k);
        let dropped = cell
            .valid
            .iter()
            .zip(&paired)
            .filter(|(a, b)| **a && !**b)
            .count();
        if dropped > 0 {
            restrict_to_paired(&mut cents, &mut r, &paired, (p, q, d, k));
        }
        let (mut sq, mut mean) = norms_from_coords(&cents, &r, &paired, (p, q, d, k), 0.0);
        for pi in 0..p {
            let e = outside.map_or(extra, |o| o[ck][pi]);
            mean[pi] += e;
            for qi in 0..q {
                if paired[pi * q + qi] {
                    sq[pi * q + qi] += e;
                }
            }
        }
        let lda = stored_lda_features(&cents, &r, &paired, (p, q, d, k));
        out.centroids.push(cents);
        out.residuals.push(r);
        out.valid.push(paired.clone());
        out.sq_norms.push(sq);
        out.mean_sq_norm.push(mean);
        out.lda_features.push(lda);
        out.n_dropped_paired.push(dropped);
    }
    out
}

fn full_cell_coords(
    bundle: &Bundle,
    m: Method,
    l: u32,
    mode: CoordsMode,
    seed: u64,
) -> Result<MethodLayerCoords, CoordsError> {
    let (p, q, h) = (
        bundle.n_personas(),
        bundle.n_questions(),
        bundle.hidden_size as usize,
    );
    let nck = bundle.checkpoints.len();
    let cells: Vec<_> = (0..nck)
        .map(|ck| bundle.cell(ck, m, l).expect("validated"))
        .collect();
    let paired = paired_valid(bundle, m, l);
    let stored: Vec<Vec<f32>> = cells.iter().map(|c| c.centroids.to_f32()).collect();
    let xs: Vec<Vec<f32>> = cells.iter().map(|c| c.per_question.to_f32()).collect();
    // Check the stored centroids against the per-question means (own validity), then use the
    // means over the paired set.
    let mut cents: Vec<Vec<f64>> = Vec::with_capacity(nck);
    let mut dropped = Vec::with_capacity(nck);
    for (ck, cell) in cells.iter().enumerate() {
        let x = &xs[ck];
        let mut own = vec![0.0f64; p * h];
        let mut pair = vec![0.0f64; p * h];
        for pi in 0..p {
            let (mut n_own, mut n_pair) = (0usize, 0usize);
            for qi in 0..q {
                let i = pi * q + qi;
                if !cell.valid[i] {
                    continue;
                }
                let row = &x[i * h..(i + 1) * h];
                if row.iter().any(|v| !v.is_finite()) {
                    return Err(CoordsError::NonFinite {
                        checkpoint: bundle.checkpoints[ck].name.clone(),
                        method: m.name(),
                        layer: l,
                        persona: bundle.personas[pi].name.clone(),
                        question: bundle.questions[qi].id,
                    });
                }
                n_own += 1;
                for j in 0..h {
                    own[pi * h + j] += row[j] as f64;
                }
                if paired[i] {
                    n_pair += 1;
                    for j in 0..h {
                        pair[pi * h + j] += row[j] as f64;
                    }
                }
            }
            let c = &stored[ck][pi * h..(pi + 1) * h];
            let cn = c
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-30);
            let diff = (0..h)
                .map(|j| (own[pi * h + j] / n_own.max(1) as f64 - c[j] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                / cn;
            if diff > 1e-4 {
                return Err(CoordsError::CentroidMismatch {
                    checkpoint: bundle.checkpoints[ck].name.clone(),
                    method: m.name(),
                    layer: l,
                    persona: bundle.personas[pi].name.clone(),
                    diff,
                });
            }
            for j in 0..h {
                pair[pi * h + j] /= n_pair.max(1) as f64;
            }
        }
        dropped.push(
            cell.valid
                .iter()
                .zip(&paired)
                .filter(|(a, b)| **a && !**b)
                .count(),
        );
        cents.push(pair);
    }
    // Residual rows (paired-valid), all checkpoints pooled, for the principal directions; at
    // full width per checkpoint too when the coordinates are exact (the compact basis needs
    // only their projections).
    let exact = matches!(mode, CoordsMode::Exact { .. });
    let mut rows: Vec<f32> = Vec::new();
    let mut row_of: Vec<Vec<Option<usize>>> = vec![vec![None; p * q]; nck];
    let mut total_ss = 0.0f64;
    let mut residuals = Vec::with_capacity(nck);
    for ck in 0..nck {
        let mut r = vec![0.0f32; if exact { p * q * h } else { 0 }];
        for pi in 0..p {
            for qi in 0..q {
                let i = pi * q + qi;
                if !paired[i] {
                    continue;
                }
                row_of[ck][i] = Some(rows.len() / h);
                for j in 0..h {
                    let v = (xs[ck][i * h + j] as f64 - cents[ck][pi * h + j]) as f32;
                    if exact {
                        r[i * h + j] = v;
                    }
                    rows.push(v);
                    total_ss += (v as f64) * (v as f64);
                }
            }
        }
        residuals.push(r);
    }
    let n_rows = rows.len() / h;
    // The row-major rows are the columns of xt = Xᵀ (h x n_rows): no transposed copy.
    let xt = DMatrix::<f32>::from_vec(h, n_rows, rows);
    let components = match mode {
        CoordsMode::Exact { lda_components } => lda_components,
        CoordsMode::Basis { components } => components,
    };
    let label = format!("{seed}/{}/{l}", m.name());
    let (u_r, _) = top_principal_directions(&xt, components, crate::rng::fnv1a(label.as_bytes()));
    let k = u_r.ncols();
    let ur32 = u_r.map(|v| v as f32);
    let proj = crate::linalg::transpose_times_f32(&xt, &ur32); // n_rows x k
    let retained: f64 = proj.iter().map(|&v| (v as f64).powi(2)).sum();
    drop(xt);
    if exact {
        // Identity coordinates at full width; LDA features = (c_p + r_pq) on the k directions.
        let mut lda_features = Vec::with_capacity(nck);
        let mut sq_norms = Vec::with_capacity(nck);
        let mut mean_sq = Vec::with_capacity(nck);
        for ck in 0..nck {
            let cm = centroid_mean(&cents[ck], p, h);
            let c32 = DMatrix::<f64>::from_fn(p, h, |i, j| cents[ck][i * h + j] - cm[j]) * &u_r; // p x k
            let mut f = vec![0.0f32; p * q * k];
            for i in 0..p * q {
                if let Some(row) = row_of[ck][i] {
                    let pi = i / q;
                    for j in 0..k {
                        f[i * k + j] = (c32[(pi, j)] + proj[(row, j)] as f64) as f32;
                    }
                }
            }
            lda_features.push(f);
            let (sq, mean) =
                norms_from_coords(&cents[ck], &residuals[ck], &paired, (p, q, h, h), 0.0);
            sq_norms.push(sq);
            mean_sq.push(mean);
        }
        return Ok(MethodLayerCoords {
            method: m,
            layer: l,
            n_personas: p,
            n_questions: q,
            dim: h,
            k: h,
            centroids: cents,
            residuals,
            valid: vec![paired; nck],
            residual_ss_total: total_ss,
            residual_ss_retained: retained,
            sq_norms,
            mean_sq_norm: mean_sq,
            exact: true,
            lda_k: k,
            lda_features,
            n_dropped_paired: dropped,
        });
    }
    let mut basis: Vec<DVector<f64>> = (0..k).map(|j| u_r.column(j).into_owned()).collect();
    let cand: Vec<DVector<f64>> = (0..nck)
        .flat_map(|ck| (0..p).map(move |pi| (ck, pi)))
        .map(|(ck, pi)| DVector::from_column_slice(&cents[ck][pi * h..(pi + 1) * h]))
        .collect();
    extend_orthonormal(&mut basis, &cand, 1e-7);
    let d = basis.len();
    let b = DMatrix::from_columns(&basis); // h x d
    let mut centroids = Vec::with_capacity(nck);
    for cent in cents.iter() {
        let coords = DMatrix::<f64>::from_row_slice(p, h, cent) * &b; // p x d
        let mut flat = Vec::with_capacity(p * d);
        for pi in 0..p {
            for j in 0..d {
                flat.push(coords[(pi, j)]);
            }
        }
        centroids.push(flat);
    }
    let mut residuals = Vec::with_capacity(nck);
    for ck in 0..nck {
        let mut r = vec![0.0f32; p * q * k];
        for i in 0..p * q {
            if let Some(row) = row_of[ck][i] {
                for j in 0..k {
                    r[i * k + j] = proj[(row, j)];
                }
            }
        }
        recentre(&mut r, &paired, p, q, k);
        residuals.push(r);
    }
    let extra = (total_ss - retained).max(0.0) / n_rows.max(1) as f64;
    let mut out = MethodLayerCoords {
        method: m,
        layer: l,
        n_personas: p,
        n_questions: q,
        dim: d,
        k,
        centroids,
        residuals,
        valid: vec![paired.clone(); nck],
        residual_ss_total: total_ss,
        residual_ss_retained: retained,
        sq_norms: vec![],
        mean_sq_norm: vec![],
        exact: false,
        lda_k: k,
        lda_features: vec![],
        n_dropped_paired: dropped,
    };
    for ck in 0..nck {
        let (sq, mean) = norms_from_coords(
            &out.centroids[ck],
            &out.residuals[ck],
            &paired,
            (p, q, d, k),
            extra,
        );
        let lda = stored_lda_features(
            &out.centroids[ck],
            &out.residuals[ck],
            &paired,
            (p, q, d, k),
        );
        out.sq_norms.push(sq);
        out.mean_sq_norm.push(mean);
        out.lda_features.push(lda);
    }
    Ok(out)
}

/// The compact bundle: coordinates instead of hidden states (centroids f32, residuals f16).
/// Method-B response texts are dropped unless `keep_texts` (token counts are always kept).
pub fn compact_bundle(
    bundle: &Bundle,
    components: usize,
    keep_texts: bool,
    seed: u64,
) -> Result<Bundle, CoordsError> {
    if bundle.compact.is_some() {
        return Ok(bundle.clone());
    }
    let coords = bundle_coords(bundle, CoordsMode::Basis { components }, seed)?;
    let mut out = bundle.clone();
    let mut infos = Vec::new();
    for c in &coords {
        infos.push(CompactBasisInfo {
            method: c.method,
            layer: c.layer,
            dim: c.dim as u32,
            k: c.k as u32,
            residual_ss_total: c.residual_ss_total,
            residual_ss_retained: c.residual_ss_retained,
        });
        for ck in 0..bundle.checkpoints.len() {
            let idx = bundle.cell_index(ck, c.method, c.layer).expect("validated");
            let cell = &mut out.cells[idx];
            let cf: Vec<f32> = c.centroids[ck].iter().map(|&v| v as f32).collect();
            cell.centroids = Blob::from_f32(&cf);
            cell.per_question = Blob::from_f32_as_f16(&c.residuals[ck]);
            // The compact form holds the paired set (its centroids are the paired means).
            cell.valid = c.valid[ck].clone();
        }
    }
    out.compact = Some(CompactInfo {
        components: components as u32,
        per_method_layer: infos,
        texts_kept: keep_texts,
    });
    // Each persona's energy outside the stored coordinates: the full bundle's mean squared norm
    // over the paired questions minus what the stored (f16) coordinates give.
    let mut outside = serde_json::Map::new();
    for c in &coords {
        let (m, l) = (c.method, c.layer);
        let stored = compact_cell_coords_with(
            &out,
            m,
            l,
            Some(&vec![vec![0.0; c.n_personas]; bundle.checkpoints.len()]),
        );
        let paired = paired_valid(bundle, m, l);
        let (p, q, h) = (c.n_personas, c.n_questions, bundle.hidden_size as usize);
        let per_ck: Vec<Vec<f64>> = (0..bundle.checkpoints.len())
            .map(|ck| {
                let x = bundle
                    .cell(ck, m, l)
                    .expect("validated")
                    .per_question
                    .to_f32();
                (0..p)
                    .map(|pi| {
                        let (mut sum, mut n) = (0.0f64, 0usize);
                        for qi in (0..q).filter(|&qi| paired[pi * q + qi]) {
                            let row = &x[(pi * q + qi) * h..(pi * q + qi + 1) * h];
                            sum += row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
                            n += 1;
                        }
                        let full = sum / n.max(1) as f64;
                        (full - stored.mean_sq_norm[ck][pi]).max(0.0)
                    })
                    .collect()
            })
            .collect();
        outside.insert(outside_energy_key(m, l), serde_json::json!(per_ck));
    }
    out.provenance
        .extra
        .retain(|(k, _)| k != OUTSIDE_ENERGY_KEY);
    out.provenance.extra.push((
        OUTSIDE_ENERGY_KEY.to_string(),
        serde_json::Value::Object(outside).to_string(),
    ));
    if !keep_texts {
        out.responses = out
            .responses
            .iter()
            .map(|r| Responses {
                checkpoint: r.checkpoint,
                texts: vec![String::new(); r.texts.len()],
                token_counts: r.token_counts.clone(),
            })
            .collect();
    }
    debug_assert!(out.cells.iter().all(|c| c.centroids.dtype == DType::F32));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cosine;
    use crate::synth::{synth_bundle, SynthSpec};

    #[test]
    fn coordinates_preserve_centroid_geometry_exactly() {
        let spec = SynthSpec {
            personas: 5,
            questions: 30,
            hidden: 64,
            layers: vec![3],
            ..SynthSpec::default()
        };
        let b = synth_bundle(&spec);
        let coords = bundle_coords(&b, CoordsMode::Basis { components: 8 }, 1).unwrap();
        let c = &coords[0];
        assert_eq!(c.k, 8);
        let h = b.hidden_size as usize;
        for ck in 0..b.checkpoints.len() {
            let full = b.cell(ck, c.method, c.layer).unwrap().centroids.to_f32();
            for p1 in 0..5 {
                for p2 in 0..5 {
                    let a: Vec<f64> = full[p1 * h..(p1 + 1) * h]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let bb: Vec<f64> = full[p2 * h..(p2 + 1) * h]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let exact = cosine(&a, &bb);
                    let got = cosine(c.centroid(ck, p1), c.centroid(ck, p2));
                    assert!((exact - got).abs() < 1e-6, "{exact} {got}");
                }
            }
        }
        assert!(c.retained_fraction() > 0.0 && c.retained_fraction() < 1.0);
    }

    #[test]
    fn compact_round_trip_keeps_centroids_and_is_smaller() {
        let spec = SynthSpec {
            personas: 4,
            questions: 40,
            hidden: 128,
            layers: vec![1, 2],
            ..SynthSpec::default()
        };
        let b = synth_bundle(&spec);
        let c = compact_bundle(&b, 16, false, 3).unwrap();
        let bytes = c.encode().unwrap();
        assert!(bytes.len() * 4 < b.encode().unwrap().len());
        let back = Bundle::decode(&bytes).unwrap();
        let full = bundle_coords(&b, CoordsMode::Basis { components: 16 }, 3).unwrap();
        let comp = bundle_coords(&back, CoordsMode::Basis { components: 16 }, 3).unwrap();
        for (f, g) in full.iter().zip(&comp) {
            for ck in 0..b.checkpoints.len() {
                for (x, y) in f.centroids[ck].iter().zip(&g.centroids[ck]) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()));
                }
                for (x, y) in f.residuals[ck].iter().zip(&g.residuals[ck]) {
                    assert!((x - y).abs() <= 2e-3 * (1.0 + x.abs()), "{x} {y}");
                }
            }
        }
    }
}
