//! The exact values beside the approximate ones: `compact --reference report.json` embeds the
//! rows of `analyze` on the full bundle into the compact bundle (provenance key
//! `REFERENCE_KEY`, JSON), and every report of that compact bundle (the page's included) carries,
//! for each of its rows, the full bundle's Δ, CI and p-values of the same row.

use super::Report;
use crate::bundle::{Bundle, Method};
use serde::{Deserialize, Serialize};

pub const REFERENCE_KEY: &str = "reference.analyze_rows";
pub const REFERENCE_CONFIG_KEY: &str = "reference.analyze_config";

/// One row of `analyze` on the full bundle, as a compact bundle carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReferenceRow {
    pub pre: String,
    pub post: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    pub delta: f64,
    pub ci95: Option<[f64; 2]>,
    pub p: f64,
    pub p_two_sided: f64,
    pub p_bh: Option<f64>,
    pub n_permutations: usize,
    pub exact: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("the reference report does not belong to this bundle: {0} differs (run `analyze` on this very bundle and pass its report.json)")]
    Mismatch(&'static str),
    #[error("the reference report was made from a compact bundle; pass the report of `analyze` on the full bundle")]
    NotExact,
}

/// Embeds `report` (of `analyze` on `full`) into `compact` (made from `full`).
pub fn embed_reference(
    full: &Bundle,
    compact: &mut Bundle,
    report: &Report,
) -> Result<(), ReferenceError> {
    if report.bundle_provenance != full.provenance {
        return Err(ReferenceError::Mismatch(
            "bundle provenance (model, seed, creation time)",
        ));
    }
    let names: Vec<String> = full.personas.iter().map(|p| p.name.clone()).collect();
    if report.personas != names {
        return Err(ReferenceError::Mismatch("persona list"));
    }
    if report.n_questions != full.n_questions() {
        return Err(ReferenceError::Mismatch("number of questions"));
    }
    if report.methods != full.methods || report.layers != full.layers {
        return Err(ReferenceError::Mismatch("methods or layers"));
    }
    if report.bases.iter().any(|b| !b.exact) {
        return Err(ReferenceError::NotExact);
    }
    let rows: Vec<ReferenceRow> = report
        .rows
        .iter()
        .map(|r| ReferenceRow {
            pre: r.pre.clone(),
            post: r.post.clone(),
            method: r.method,
            layer: r.layer,
            metric: r.metric.clone(),
            delta: r.delta,
            ci95: r.ci95,
            p: r.p,
            p_two_sided: r.p_two_sided,
            p_bh: r.p_bh,
            n_permutations: r.n_permutations,
            exact: r.exact,
        })
        .collect();
    let extra = &mut compact.provenance.extra;
    extra.retain(|(k, _)| k != REFERENCE_KEY && k != REFERENCE_CONFIG_KEY);
    extra.push((
        REFERENCE_KEY.into(),
        serde_json::to_string(&rows).expect("rows serialise"),
    ));
    extra.push((
        REFERENCE_CONFIG_KEY.into(),
        serde_json::to_string(&report.config).expect("config serialises"),
    ));
    Ok(())
}

/// The reference rows a compact bundle carries (None when it carries none or they do not
/// parse: a report without them is still correct, only without the exact values beside).
pub fn bundle_reference(bundle: &Bundle) -> Option<Vec<ReferenceRow>> {
    serde_json::from_str(bundle.provenance.get(REFERENCE_KEY)?).ok()
}
