//! The exact values beside the approximate ones: `compact --reference report.json` embeds the
//! rows of `analyze` on the full bundle into the compact bundle (provenance key
//! `REFERENCE_KEY`, JSON), and every report of that compact bundle (the page's included) carries,
//! for each of its rows, the full bundle's Δ, CI and p-values of the same row.

use super::Report;
use crate::bundle::{Bundle, Method, Provenance};
use serde::{Deserialize, Deserializer, Serialize};

pub const REFERENCE_KEY: &str = "reference.analyze_rows";
pub const REFERENCE_CONFIG_KEY: &str = "reference.analyze_config";

/// JSON writes a NaN as null; read it back as NaN (an undefined statistic of a degenerate cell).
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn interval_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    Ok(Option::<[Option<f64>; 2]>::deserialize(d)?
        .map(|[a, b]| [a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)]))
}

/// One row of `analyze` on the full bundle, as a compact bundle carries it (the field names of
/// `Row`, so a report.json's rows parse as these).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReferenceRow {
    pub pre: String,
    pub post: String,
    pub method: Method,
    pub layer: u32,
    pub metric: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub pre_value: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub post_value: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub delta: f64,
    #[serde(deserialize_with = "interval_or_nan")]
    pub ci95: Option<[f64; 2]>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub p_two_sided: f64,
    pub p_bh: Option<f64>,
    pub n_permutations: usize,
    pub exact: bool,
}

/// What `embed_reference` reads from a report.json: only these fields, so that the rest of the
/// report (NaN ratios written as null, later additions) never stops it.
#[derive(Deserialize, Clone, Debug)]
pub struct ReferenceSource {
    pub bundle_provenance: Provenance,
    pub personas: Vec<String>,
    pub n_questions: usize,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    pub bases: Vec<BasisExactness>,
    pub rows: Vec<ReferenceRow>,
    pub config: serde_json::Value,
}

#[derive(Deserialize, Clone, Debug)]
pub struct BasisExactness {
    pub exact: bool,
}

impl ReferenceSource {
    pub fn from_json(text: &str) -> Result<ReferenceSource, serde_json::Error> {
        serde_json::from_str(text)
    }
    pub fn from_report(report: &Report) -> ReferenceSource {
        let v = serde_json::to_value(report).expect("a report serialises");
        serde_json::from_value(v).expect("a report's JSON has every reference field")
    }
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
    report: &ReferenceSource,
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
    let rows = &report.rows;
    let extra = &mut compact.provenance.extra;
    extra.retain(|(k, _)| k != REFERENCE_KEY && k != REFERENCE_CONFIG_KEY);
    extra.push((
        REFERENCE_KEY.into(),
        serde_json::to_string(rows).expect("rows serialise"),
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
