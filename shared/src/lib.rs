//! `shared`: the bundle format and every statistic of persona-geometry.
//!
//! One implementation serves the native CLI (`persona-geometry analyze`) and the browser
//! explorer (wasm32). Nothing here touches the file system or threads unless compiled natively.
//!
//! Layer convention (fixed everywhere): layer `l` is the output of decoder block `l`, 0-based,
//! i.e. a forward hook on `model.layers[l]`; the last block is taken before the final norm.

pub mod analysis;
pub mod behaviour;
pub mod bundle;
pub mod coords;
pub mod figures;
pub mod geometry;
pub mod head;
pub mod lda;
pub mod linalg;
pub mod parallel;
pub mod report_md;
pub mod rng;
pub mod stats;
pub mod synth;

pub use bundle::{Bundle, BundleError};

/// The layer convention, written into every bundle and report.
pub const LAYER_CONVENTION: &str = "layer l = output of decoder block l (0-based), i.e. a forward \
hook on model.layers[l]; the last block is taken before the final norm";

/// Version of this tool, recorded in provenance.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
