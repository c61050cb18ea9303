//! The Hugging Face oracle for the other families: ../shared/fixtures/hf-tiny-{qwen3,gemma2,gemma3}
//! (transformers 5.17 + PEFT 0.21, f32 on CPU). As for Qwen2 (hf_fixture.rs): prompt text and ids
//! exact, greedy generations exact, Method A and Method B (generated and templated spans) within
//! 1e-4 for the base model and a merged LoRA, all prompts in one left-padded batch; the
//! wrong-base adapter refused. Gemma 2's prompts are longer than its sliding window (8), so the
//! window, the soft-capping and the sandwich norms are all exercised; Gemma 3's local and global
//! layers use different RoPE bases. PG_TEST_DEVICE=cuda runs them on a GPU.

use candle_core::{DType, Device};
use extractor::fixture_check::{check_variant, fixture_id};
use extractor::lora::merge_adapter;
use extractor::model::Arch;
use extractor::weights::load_hf_dir;
use std::path::PathBuf;

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../shared/fixtures/hf-tiny-{family}"))
}

fn device() -> Device {
    match std::env::var("PG_TEST_DEVICE").as_deref() {
        Ok(d) if d.starts_with("cuda") => {
            extractor::study::device_from(Some(d)).expect("CUDA device")
        }
        _ => Device::Cpu,
    }
}

fn check(family: &str, arch: Arch) {
    let dir = fixture(family);
    assert_eq!(load_hf_dir(&dir.join("model")).unwrap().cfg.arch, arch);
    for (variant, adapter) in [("base", None), ("lora_r4", Some("lora_r4"))] {
        let r = check_variant(&dir, variant, adapter, &device(), DType::F32).unwrap();
        eprintln!("{family} {variant}: {r:?}");
        assert!(
            r.mismatches.is_empty(),
            "{family} {variant}: {:?}",
            r.mismatches
        );
        assert!(
            r.max_abs_method_a < 1e-4 && r.max_abs_method_b < 1e-4 && r.max_abs_templated < 1e-4,
            "{family} {variant}: {r:?}"
        );
    }
    // The adapter of another base is refused, naming the fix.
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut w = load_hf_dir(&dir.join("model")).unwrap().weights;
    let err = merge_adapter(
        &dir.join("adapters/lora_wrong_base"),
        &mut w,
        &fixture_id(&exp),
        false,
        &Device::Cpu,
    )
    .err()
    .expect("the wrong-base adapter must be refused")
    .to_string();
    assert!(err.contains("allow_base_mismatch"), "{err}");
}

#[test]
fn qwen3_matches_transformers_and_peft() {
    check("qwen3", Arch::Qwen3);
}

#[test]
fn gemma2_matches_transformers_and_peft() {
    check("gemma2", Arch::Gemma2);
}

#[test]
fn gemma3_matches_transformers_and_peft() {
    check("gemma3", Arch::Gemma3);
}

#[test]
fn unsupported_architecture_is_named_with_the_supported_ones() {
    let d = std::env::temp_dir().join(format!("pg-arch-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let src = fixture("qwen3").join("model");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"qwen3\"", "\"phi3\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let err = load_hf_dir(&d)
        .err()
        .expect("phi3 must be refused")
        .to_string();
    assert!(
        err.contains("phi3") && err.contains("qwen3") && err.contains("gemma2"),
        "{err}"
    );
}

#[test]
fn training_a_family_without_a_training_forward_is_refused_by_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_persona-geometry"))
        .args([
            "train",
            "--model-id",
            "persona-fixture/tiny-gemma2",
            "--model-path",
        ])
        .arg(fixture("gemma2").join("model"))
        .arg("--data")
        .arg(fixture("gemma2").join("../lora-train/train.jsonl"))
        .arg("--out")
        .arg(std::env::temp_dir().join(format!("pg-train-gemma2-{}", std::process::id())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Gemma2") && err.contains("Qwen2"),
        "{err}"
    );
}
