//! Analysis coordinates: every metric works in one orthonormal basis per (method, layer),
//! shared by all checkpoints.
//!
//! Basis = [top-k principal directions of the within-persona residuals (x_pq - c_p, valid
//! questions, all checkpoints pooled)] followed by the directions that complete the span of
//! every centroid of every checkpoint. Consequences:
//! - centroids are represented exactly (cosines, norms, projections equal the full-dimension
//!   values up to floating-point rounding);
//! - per-question activations are c_p + (residual projected on the k components); the dropped
//!   part is reported as the within-persona variance not retained;
//! - M3 (LDA) uses the first k coordinates only, so that it never sees directions in which the
//!   stored data has no within-persona variance by construction.
//! A compact bundle stores exactly these coordinates (residuals in f16), so the CLI on a full
//! bundle and the browser on its compact form run the same code on the same representation.

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
    pub residual_ss_total: f64,
    pub residual_ss_retained: f64,
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

/// Removes, per persona, the mean of the stored residuals over valid questions, so that the
/// per-question data average exactly to the centroid even after f16 rounding.
fn recentre(res: &mut [f32], valid: &[bool], p: usize, q: usize, k: usize) {
    for pi in 0..p {
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
        if n == 0 {
            continue;
        }
        for m in mean.iter_mut() {
            *m /= n as f64;
        }
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

/// Coordinates of every (method, layer) of a bundle. Full bundles are projected on a basis
/// computed here (k residual components); compact bundles already hold coordinates.
pub fn bundle_coords(
    bundle: &Bundle,
    components: usize,
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
            full_cell_coords(bundle, m, l, components, seed)
        }
    });
    results.into_iter().collect()
}

fn compact_cell_coords(bundle: &Bundle, m: Method, l: u32) -> MethodLayerCoords {
    let info = bundle
        .basis_info(m, l)
        .expect("validated compact bundle has a basis for every method and layer");
    let (p, q) = (bundle.n_personas(), bundle.n_questions());
    let (d, k) = (info.dim as usize, info.k as usize);
    let mut centroids = Vec::new();
    let mut residuals = Vec::new();
    let mut valid = Vec::new();
    for ck in 0..bundle.checkpoints.len() {
        let cell = bundle.cell(ck, m, l).expect("validated");
        centroids.push(cell.centroids.to_f32().iter().map(|&x| x as f64).collect());
        let mut r = cell.per_question.to_f32();
        recentre(&mut r, &cell.valid, p, q, k);
        residuals.push(r);
        valid.push(cell.valid.clone());
    }
    MethodLayerCoords {
        method: m,
        layer: l,
        n_personas: p,
        n_questions: q,
        dim: d,
        k,
        centroids,
        residuals,
        valid,
        residual_ss_total: info.residual_ss_total,
        residual_ss_retained: info.residual_ss_retained,
    }
}

fn full_cell_coords(
    bundle: &Bundle,
    m: Method,
    l: u32,
    components: usize,
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
    let cents: Vec<Vec<f32>> = cells.iter().map(|c| c.centroids.to_f32()).collect();
    // Residual rows (valid questions only), checking the centroid against the per-question mean.
    let mut rows: Vec<f32> = Vec::new();
    let mut row_of: Vec<Vec<Option<usize>>> = vec![vec![None; p * q]; nck];
    let mut total_ss = 0.0f64;
    for (ck, cell) in cells.iter().enumerate() {
        let pq = cell.per_question.to_f32();
        for pi in 0..p {
            let c = &cents[ck][pi * h..(pi + 1) * h];
            let mut mean = vec![0.0f64; h];
            let mut n = 0;
            for qi in 0..q {
                if !cell.valid[pi * q + qi] {
                    continue;
                }
                let x = &pq[(pi * q + qi) * h..(pi * q + qi + 1) * h];
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(CoordsError::NonFinite {
                        checkpoint: bundle.checkpoints[ck].name.clone(),
                        method: m.name(),
                        layer: l,
                        persona: bundle.personas[pi].name.clone(),
                        question: bundle.questions[qi].id,
                    });
                }
                n += 1;
                row_of[ck][pi * q + qi] = Some(rows.len() / h);
                for j in 0..h {
                    mean[j] += x[j] as f64;
                    let r = x[j] - c[j];
                    rows.push(r);
                    total_ss += (r as f64) * (r as f64);
                }
            }
            let cn: f64 = c
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-30);
            let diff: f64 = mean
                .iter()
                .zip(c)
                .map(|(a, &b)| (a / n as f64 - b as f64).powi(2))
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
        }
    }
    let n_rows = rows.len() / h;
    let x = DMatrix::<f32>::from_row_slice(n_rows, h, &rows);
    let label = format!("{seed}/{}/{l}", m.name());
    let (u_r, _) = top_principal_directions(&x, components, crate::rng::fnv1a(label.as_bytes()));
    let k = u_r.ncols();
    let mut basis: Vec<DVector<f64>> = (0..k).map(|j| u_r.column(j).into_owned()).collect();
    let cand: Vec<DVector<f64>> = (0..nck)
        .flat_map(|ck| (0..p).map(move |pi| (ck, pi)))
        .map(|(ck, pi)| {
            DVector::from_iterator(h, cents[ck][pi * h..(pi + 1) * h].iter().map(|&v| v as f64))
        })
        .collect();
    extend_orthonormal(&mut basis, &cand, 1e-7);
    let d = basis.len();
    let b = DMatrix::from_columns(&basis); // h x d
    let mut centroids = Vec::with_capacity(nck);
    for ck in 0..nck {
        let c = DMatrix::<f64>::from_row_slice(
            p,
            h,
            &cents[ck].iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        let coords = c * &b; // p x d
        let mut flat = Vec::with_capacity(p * d);
        for pi in 0..p {
            for j in 0..d {
                flat.push(coords[(pi, j)]);
            }
        }
        centroids.push(flat);
    }
    // Residual coordinates on the k components (f32 gemm).
    let ur32 = u_r.map(|v| v as f32);
    let proj = &x * &ur32; // n_rows x k
    let retained: f64 = proj.iter().map(|&v| (v as f64).powi(2)).sum();
    let mut residuals = Vec::with_capacity(nck);
    let mut valid = Vec::with_capacity(nck);
    for ck in 0..nck {
        let mut r = vec![0.0f32; p * q * k];
        for i in 0..p * q {
            if let Some(row) = row_of[ck][i] {
                for j in 0..k {
                    r[i * k + j] = proj[(row, j)];
                }
            }
        }
        recentre(&mut r, &cells[ck].valid, p, q, k);
        residuals.push(r);
        valid.push(cells[ck].valid.clone());
    }
    Ok(MethodLayerCoords {
        method: m,
        layer: l,
        n_personas: p,
        n_questions: q,
        dim: d,
        k,
        centroids,
        residuals,
        valid,
        residual_ss_total: total_ss,
        residual_ss_retained: retained,
    })
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
    let coords = bundle_coords(bundle, components, seed)?;
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
        }
    }
    out.compact = Some(CompactInfo {
        components: components as u32,
        per_method_layer: infos,
        texts_kept: keep_texts,
    });
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
        let coords = bundle_coords(&b, 8, 1).unwrap();
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
        let full = bundle_coords(&b, 16, 3).unwrap();
        let comp = bundle_coords(&back, 16, 3).unwrap();
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
