//! The exact values beside the approximate ones: `compact --reference report.json` embeds the
//! rows of `analyze` on the full bundle into the compact bundle (provenance key
//! `REFERENCE_KEY`, JSON), and every report of that compact bundle (the page's included) carries,
//! for each of its rows, the full bundle's Δ, CI and p-values of the same row.

use super::{Report, Row, Verdict};
use crate::bundle::{Bundle, Method, Provenance};
use serde::{Deserialize, Deserializer, Serialize};

pub const REFERENCE_KEY: &str = "reference.analyze_rows";
pub const REFERENCE_CONFIG_KEY: &str = "reference.analyze_config";
/// The verdicts of that report and the tool version that made it (the published claim).
pub const REFERENCE_VERDICTS_KEY: &str = "reference.analyze_verdicts";
pub const REFERENCE_TOOL_KEY: &str = "reference.analyze_tool_version";

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

impl ReferenceRow {
    /// Whether `row` is this row recomputed: the same comparison, method, layer and metric.
    pub fn is_row(&self, row: &Row) -> bool {
        self.pre == row.pre
            && self.post == row.post
            && self.method == row.method
            && self.layer == row.layer
            && self.metric == row.metric
    }
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
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
    #[serde(default)]
    pub tool_version: String,
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
    extra.retain(|(k, _)| {
        ![
            REFERENCE_KEY,
            REFERENCE_CONFIG_KEY,
            REFERENCE_VERDICTS_KEY,
            REFERENCE_TOOL_KEY,
        ]
        .contains(&k.as_str())
    });
    extra.push((
        REFERENCE_KEY.into(),
        serde_json::to_string(rows).expect("rows serialise"),
    ));
    extra.push((
        REFERENCE_CONFIG_KEY.into(),
        serde_json::to_string(&report.config).expect("config serialises"),
    ));
    extra.push((
        REFERENCE_VERDICTS_KEY.into(),
        serde_json::to_string(&report.verdicts).expect("verdicts serialise"),
    ));
    extra.push((REFERENCE_TOOL_KEY.into(), report.tool_version.clone()));
    Ok(())
}

/// The reference rows a compact bundle carries (None when it carries none or they do not
/// parse: a report without them is still correct, only without the exact values beside).
pub fn bundle_reference(bundle: &Bundle) -> Option<Vec<ReferenceRow>> {
    provenance_reference(&bundle.provenance)
}

/// The reference rows in a bundle's (or a study head's) provenance.
pub fn provenance_reference(provenance: &Provenance) -> Option<Vec<ReferenceRow>> {
    serde_json::from_str(provenance.get(REFERENCE_KEY)?).ok()
}

/// What a compact bundle says it was published with: the verdicts and rows of `analyze` on its
/// full bundle, with that run's tool version and settings. The page shows it at once and then
/// re-verifies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub tool_version: String,
    pub permutations: Option<usize>,
    pub seed: Option<u64>,
    pub alpha: Option<f64>,
    pub verdicts: Vec<Verdict>,
    pub rows: Vec<ReferenceRow>,
}

/// The published claim a compact bundle carries (None without `compact --reference`, or
/// when it was made before verdicts travelled with the rows).
pub fn bundle_published(bundle: &Bundle) -> Option<Published> {
    provenance_published(&bundle.provenance)
}

/// The published claim in a bundle's (or a study head's) provenance.
pub fn provenance_published(provenance: &Provenance) -> Option<Published> {
    let rows = provenance_reference(provenance)?;
    let verdicts: Vec<Verdict> =
        serde_json::from_str(provenance.get(REFERENCE_VERDICTS_KEY)?).ok()?;
    let config: serde_json::Value = provenance
        .get(REFERENCE_CONFIG_KEY)
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    Some(Published {
        tool_version: provenance
            .get(REFERENCE_TOOL_KEY)
            .unwrap_or("unknown")
            .to_string(),
        permutations: config["permutations"].as_u64().map(|n| n as usize),
        seed: config["seed"].as_u64(),
        alpha: config["alpha"].as_f64(),
        verdicts,
        rows,
    })
}

impl Published {
    /// Whether `r` is one of the rows the published verdict rests on: an EM checkpoint (one
    /// with a verdict) against `base`, one of the family metrics. The page's published table
    /// shows these.
    pub fn is_family_row(&self, r: &ReferenceRow, base: &str) -> bool {
        r.pre == base
            && self.verdicts.iter().any(|v| v.em == r.post)
            && super::FAMILY_METRICS.contains(&r.metric.as_str())
    }
}

/// `provenance` as a study head carries it: the published rows reduced to those the verdict
/// rests on (`Published::is_family_row`; the bundle keeps every row for its reports), and
/// without the per-persona outside energy (read by the analysis from the bundle).
pub fn head_provenance(provenance: &Provenance, base: Option<&str>) -> Provenance {
    let mut p = provenance.clone();
    p.extra
        .retain(|(k, _)| k != crate::coords::OUTSIDE_ENERGY_KEY);
    if let (Some(published), Some(base)) = (provenance_published(provenance), base) {
        let rows: Vec<&ReferenceRow> = published
            .rows
            .iter()
            .filter(|r| published.is_family_row(r, base))
            .collect();
        if let Some(entry) = p.extra.iter_mut().find(|(k, _)| k == REFERENCE_KEY) {
            entry.1 = serde_json::to_string(&rows).expect("rows serialise");
        }
    }
    p
}

/// Published value and this run's value agree within this fraction of the statistic's scale
/// (the larger |level|): the compact form's f16 residuals move exact statistics by ~1e-6 of it.
pub const REPRODUCED_REL_TOL: f64 = 1e-5;

/// How one published row compares with the same row recomputed (the page on the compact
/// bundle): the decision is BH p < α within the row's family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowReproduction {
    /// Δ within `REPRODUCED_REL_TOL` of its scale and the same decision.
    Reproduced,
    /// Δ differs beyond the tolerance (an approximate metric: M3 on the stored components, or
    /// draws truncated to them), with the same sign and the same decision.
    SameDecision,
    /// A different decision or sign.
    Differs,
    /// Not computed yet.
    Pending,
}

pub fn row_reproduction(
    published: &ReferenceRow,
    recomputed: Option<&Row>,
    alpha: f64,
) -> RowReproduction {
    let Some(r) = recomputed else {
        return RowReproduction::Pending;
    };
    let decision = |p: Option<f64>| p.is_some_and(|p| p < alpha);
    let same_decision = decision(published.p_bh) == decision(r.p_bh);
    let scale = published
        .pre_value
        .abs()
        .max(published.post_value.abs())
        .max(published.delta.abs())
        .max(1e-300);
    let equal = (published.delta - r.delta).abs() <= REPRODUCED_REL_TOL * scale
        || (published.delta.is_nan() && r.delta.is_nan());
    if equal && same_decision {
        RowReproduction::Reproduced
    } else if same_decision && published.delta.signum() == r.delta.signum() {
        RowReproduction::SameDecision
    } else {
        RowReproduction::Differs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Family;

    /// The published side: a report's row, read back as `compact --reference` reads it.
    fn published(delta: f64, p_bh: Option<f64>) -> ReferenceRow {
        serde_json::from_value(serde_json::to_value(row(delta, p_bh)).unwrap()).unwrap()
    }

    fn row(delta: f64, p_bh: Option<f64>) -> Row {
        Row {
            family: Family::EmVsBase,
            pre: "base".into(),
            post: "em".into(),
            method: Method::A,
            layer: 3,
            metric: "M1_raw".into(),
            pre_value: 0.5,
            post_value: 0.5 + delta,
            delta,
            ci95: None,
            p: 0.01,
            p_two_sided: 0.01,
            p_bh,
            p_holm: p_bh,
            n_permutations: 1000,
            p_floor: 1.0 / 1001.0,
            n_questions: 40,
            n_bootstrap: 100,
            seed: 0,
            test: String::new(),
            exact: false,
            reference: None,
        }
    }

    #[test]
    fn rows_are_marked_by_value_and_decision() {
        let p = published(0.02, Some(0.01));
        let a = 0.05;
        assert_eq!(row_reproduction(&p, None, a), RowReproduction::Pending);
        // Within 1e-5 of the scale (0.52): reproduced; the same decision is needed too.
        assert_eq!(
            row_reproduction(&p, Some(&row(0.020004, Some(0.02))), a),
            RowReproduction::Reproduced
        );
        assert_eq!(
            row_reproduction(&p, Some(&row(0.020004, Some(0.2))), a),
            RowReproduction::Differs
        );
        // Beyond the tolerance, same sign and decision: the same decision only.
        assert_eq!(
            row_reproduction(&p, Some(&row(0.03, Some(0.001))), a),
            RowReproduction::SameDecision
        );
        // Opposite sign: differs even with the same (non-significant) decision.
        let ns = published(0.02, Some(0.5));
        assert_eq!(
            row_reproduction(&ns, Some(&row(-0.01, Some(0.6))), a),
            RowReproduction::Differs
        );
    }
}
