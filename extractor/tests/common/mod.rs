//! Helpers shared by the integration tests: the fixtures directory, the training oracle, the
//! SmolLM2 model file. (Each test binary uses some of them.)
#![allow(dead_code)]
use std::path::PathBuf;

/// SmolLM2-135M-Instruct (scripts/fetch_smollm2.sh), or None (test skipped) when it is missing
/// and not required. scripts/test_all.sh fetches it and sets PG_REQUIRE_SMOLLM2=1, so in CI a
/// missing model fails the test instead of skipping it.
pub fn smollm2() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("PG_REQUIRE_SMOLLM2").is_none(),
        "{} missing: run scripts/fetch_smollm2.sh",
        path.display()
    );
    eprintln!(
        "skipped: {} missing (run scripts/fetch_smollm2.sh)",
        path.display()
    );
    None
}

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
