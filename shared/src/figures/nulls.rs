//! The permutation-null histograms of one view (method, layer) for one treated checkpoint
//! against base: M1 (raw and/or mean-centred), M2 (EM axis), M3 (accuracy, log posterior) and the
//! LDA label null (M3 above chance). One builder for the page and `analyze --figures`.

use super::*;
use crate::analysis::{CellResult, Plan};
use crate::bundle::Bundle;

/// Null figures of checkpoint `treated` vs base at (method `m`, layer `l`) from that view's
/// `cell`; `m1_centred` lists which M1 variants to draw (the page: the one on screen; the CLI:
/// both). Empty when the checkpoint has no comparison with base.
pub fn null_figures(
    plan: &Plan,
    bundle: &Bundle,
    cell: &CellResult,
    m: Method,
    l: u32,
    treated: usize,
    m1_centred: &[bool],
) -> Vec<Figure> {
    let Some(ci) = plan
        .comparisons
        .iter()
        .position(|c| c.pre == plan.base && c.post == treated)
    else {
        return vec![];
    };
    let cfg = &plan.cfg;
    let base = &bundle.checkpoints[plan.base].name;
    let treated_name = &bundle.checkpoints[treated].name;
    let floor = crate::stats::p_floor(cfg.permutations);
    let g = &cell.geometry[ci];
    let caption = |what: &str, n: usize, nq: usize| {
        format!(
            "{what}. Method {}, layer {l} (output of block {l}, 0-based; last block before the final norm). n = {nq} paired questions, N = {n} permutations, seed {}, p floor {floor:.2e}.",
            m.name(),
            cfg.seed
        )
    };
    let mut out = Vec::new();
    // M1 (raw or centred) and M2 (EM axis): indices into GEOMETRY_METRICS.
    let geometry: Vec<usize> = m1_centred
        .iter()
        .map(|&c| if c { 1 } else { 0 })
        .chain([3])
        .collect();
    for s in geometry {
        let name = crate::geometry::GEOMETRY_METRICS[s];
        out.push(Figure {
            title: format!(
                "null of Δ {name}, {treated_name} − {base}, {}/L{l}: p = {:.4}",
                m.name(),
                g.p[s]
            ),
            caption: caption(
                "Paired question-level swap permutations",
                g.n_permutations,
                g.n_questions_paired_min,
            ),
            kind: FigureKind::NullHistogram {
                null: cell.geometry_null[ci].iter().map(|x| x[s]).collect(),
                observed: g.delta[s],
                x_label: format!("Δ {name}"),
            },
        });
    }
    let m3 = &cell.m3[ci];
    for (s, name) in crate::analysis::M3_METRICS.iter().enumerate() {
        out.push(Figure {
            title: format!(
                "null of Δ {name}, {treated_name} − {base}, {}/L{l}: p = {:.4}",
                m.name(),
                m3.p[s]
            ),
            caption: caption(
                "Paired sign-flip permutations of per-question held-out scores",
                m3.n_permutations,
                m3.n_questions,
            ),
            kind: FigureKind::NullHistogram {
                null: m3.null.iter().map(|x| x[s]).collect(),
                observed: m3.delta[s],
                x_label: format!("Δ {name}"),
            },
        });
    }
    let ln = &cell.lda_null[treated];
    let acc = cell.lda[treated].accuracy;
    let p = crate::stats::permutation_p_greater(
        acc,
        &ln.iter().map(|x| x[0]).collect::<Vec<_>>(),
        crate::geometry::tie_tolerance(false, acc),
    );
    out.push(Figure {
        title: format!(
            "LDA accuracy of {treated_name} vs label null, {}/L{l}: p = {p:.4}",
            m.name()
        ),
        caption: format!(
            "Within-question persona-label permutations (M3 above chance), one-sided. Method {}, layer {l}. N = {} permutations, seed {}, p floor {:.2e}; chance = 1/{} personas.",
            m.name(),
            ln.len(),
            cfg.seed,
            crate::stats::p_floor(ln.len()),
            bundle.n_personas()
        ),
        kind: FigureKind::NullHistogram {
            null: ln.iter().map(|x| x[0]).collect(),
            observed: acc,
            x_label: "held-out accuracy".into(),
        },
    });
    out
}
