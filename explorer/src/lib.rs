//! The explorer page's non-UI parts: what the page and its Web Workers say to each other, how a
//! bundle is loaded and checked, and the worker pool. Every statistic comes from `shared`.

pub mod controls;
pub mod pool;
pub mod web;

use serde::{Deserialize, Serialize};
use shared::analysis::AnalysisConfig;
use shared::Bundle;

/// Sent once to every worker after it reports "ready", with the bundle's bytes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct InitMessage {
    /// The persona subset (None = every persona).
    pub personas: Option<Vec<String>>,
    pub config: AnalysisConfig,
}

/// Decodes and checks a bundle the page can analyse. `name` is the file or URL, for messages.
pub fn decode_for_page(name: &str, bytes: &[u8]) -> Result<Bundle, String> {
    let bundle = Bundle::decode(bytes).map_err(|e| format!("Could not read {name}: {e}"))?;
    if bundle.compact.is_none() {
        return Err(format!(
            "{name} is a full bundle ({:.1} MB: per-question activations in the model's hidden size); the page reads the compact form. Make it with:\n  persona-geometry compact {name} -o {}.compact.pgb\nand load that file.",
            bytes.len() as f64 / 1e6,
            name.trim_end_matches(".pgb")
        ));
    }
    Ok(bundle)
}

/// The bundle restricted to `personas` (None = all), with a readable error.
pub fn subset(bundle: &Bundle, personas: Option<&[String]>) -> Result<Bundle, String> {
    match personas {
        None => Ok(bundle.clone()),
        Some(p) if p.len() == bundle.n_personas() => Ok(bundle.clone()),
        Some(p) => bundle
            .select_personas(p)
            .map_err(|e| format!("persona subset: {e}")),
    }
}

/// The analysis configuration of the page: the CLI's defaults, with the page's controls.
pub fn page_config(permutations: usize, seed: u64) -> AnalysisConfig {
    AnalysisConfig {
        permutations,
        seed,
        ..AnalysisConfig::default()
    }
}
