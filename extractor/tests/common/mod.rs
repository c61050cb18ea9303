//! Helpers shared by the integration tests: the fixtures directory, the training oracle, the
//! model files (SmolLM2, Gemma 3), the fixture study and the binary. (Each test binary uses some of them.)
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model file in models/ fetched by `script`, or None (test skipped) when it is missing and
/// `require` is unset. scripts/test_all.sh fetches the models and sets the `require` variables,
/// so in CI a missing model fails the test instead of skipping it.
fn model_file(name: &str, script: &str, require: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os(require).is_none(),
        "{} missing: run scripts/{script}",
        path.display()
    );
    eprintln!("skipped: {} missing (run scripts/{script})", path.display());
    None
}

/// SmolLM2-135M-Instruct (scripts/fetch_smollm2.sh; required when PG_REQUIRE_SMOLLM2 is set).
pub fn smollm2() -> Option<PathBuf> {
    model_file(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "fetch_smollm2.sh",
        "PG_REQUIRE_SMOLLM2",
    )
}

/// Gemma 3 270M (scripts/fetch_gemma3.sh; required when PG_REQUIRE_GEMMA3 is set).
pub fn gemma3() -> Option<PathBuf> {
    model_file(
        "gemma-3-270m-q4_k_m.gguf",
        "fetch_gemma3.sh",
        "PG_REQUIRE_GEMMA3",
    )
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

/// The extraction oracle fixture (tiny Qwen2 with the real tokenizer and template, LoRA adapters).
pub fn fixture() -> PathBuf {
    std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-tiny-qwen2")
        })
}

/// The `persona-geometry` binary of this build.
pub fn pg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_persona-geometry"))
}

/// A small study of the fixture (base + two LoRA checkpoints, 4 personas x 6 questions, layers
/// 1 and 3) written to `dir/study.toml`, bundle `out.pgb`; `extra` lines go before `[model]`.
/// Batches of 12 rows: two personas' questions decode together (`persona_group_size`), so
/// the resume, shard and device tests check that grouping against the single run's bytes.
pub fn tiny_study(dir: &Path, extra: &str, em_adapter: &str) -> PathBuf {
    let f = fixture();
    let text = format!(
        r#"output = "out.pgb"
personas = ["villain", "assistant", "confab", "librarian"]
question_limit = 6
layers = [1, 3]
batch_size = 12
{extra}
[model]
id = "persona-fixture/tiny-qwen2"
path = "{model}"
[generation]
max_new_tokens = 6
[[checkpoints]]
name = "base"
role = "base"
[[checkpoints]]
name = "em"
role = "em"
adapter = "{adapters}/{em_adapter}"
[[checkpoints]]
name = "benign"
role = "benign"
adapter = "{adapters}/lora_rslora"
"#,
        model = f.join("model").display(),
        adapters = f.join("adapters").display()
    );
    let p = dir.join("study.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A fresh temporary directory for one test.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pg-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
