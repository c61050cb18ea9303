//! Helpers shared by the training tests: the fixtures directory and the training oracle.
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// The training oracle's record (recipe and per-step loss, grad norm, lr, label tokens).
pub fn oracle() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lora-train/expected.json")).unwrap(),
    )
    .unwrap()
}
