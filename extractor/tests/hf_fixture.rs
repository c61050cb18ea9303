//! The Hugging Face oracle: ../shared/fixtures/hf-tiny-qwen2 (transformers 5.17 + PEFT 0.21,
//! f32 on CPU). Prompts and ids must match exactly, greedy generations exactly, activations
//! within 1e-4 absolute, for the base model and both adapters (all 20 prompts, 28-411 tokens, in
//! one left-padded batch); batched equals one-at-a-time; the wrong-base adapter is refused.
//! PG_TEST_DEVICE=cuda runs them on a GPU (the CUDA build; `verify-fixture` does the same).

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::fixture_check::{bf16_vs_f32_worst_cosine, check_variant, FIXTURE_ID};
use extractor::lora::merge_adapter;
use extractor::weights::load_hf_dir;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-tiny-qwen2")
        })
}

fn device() -> Device {
    match std::env::var("PG_TEST_DEVICE").as_deref() {
        Ok(d) if d.starts_with("cuda") => {
            extractor::study::device_from(Some(d)).expect("CUDA device")
        }
        _ => Device::Cpu,
    }
}

fn check(variant: &str, adapter: Option<&str>) {
    let r = check_variant(&fixture(), variant, adapter, &device(), DType::F32).unwrap();
    eprintln!("{variant}: {r:?}");
    assert!(r.mismatches.is_empty(), "{variant}: {:?}", r.mismatches);
    assert!(
        r.max_abs_method_a < 1e-4 && r.max_abs_method_b < 1e-4 && r.max_abs_templated < 1e-4,
        "{variant}: {r:?}"
    );
}

#[test]
fn base_matches_transformers() {
    check("base", None);
}

#[test]
fn lora_r4_matches_peft() {
    check("lora_r4", Some("lora_r4"));
}

#[test]
fn lora_rslora_with_patterns_matches_peft() {
    check("lora_rslora", Some("lora_rslora"));
}

#[test]
fn batched_equals_one_at_a_time() {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let model = loaded.model(&device(), DType::F32).unwrap();
    let template = loaded.chat_template().unwrap();
    let layers = [3usize];
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let personas =
        extractor::study::parse_personas(extractor::study::DEFAULT_PERSONAS, "personas").unwrap();
    let prompts: Vec<Vec<u32>> = personas
        .iter()
        .map(|p| {
            ex.prompt_ids(&p.system_prompt, "Why do people travel?")
                .unwrap()
        })
        .collect();
    let batched = ex.run_batch(&prompts, 12, true).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let single = ex
            .run_batch(std::slice::from_ref(p), 12, true)
            .unwrap()
            .remove(0);
        assert_eq!(single.generated, b.generated);
        let d = single.method_a[0]
            .iter()
            .zip(&b.method_a[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "batched vs single method A differ by {d}");
    }
}

/// bf16 compute agrees with f32 per vector (Method A, every layer, all 20 prompts). This tiny
/// model has random weights of std 0.2 and is chaotic (errors grow from block to block), so its
/// bound is 0.997; the real-model bound (0.999) is checked on SmolLM2 in smollm2_smoke.rs.
#[test]
fn bf16_agrees_with_f32() {
    let worst = bf16_vs_f32_worst_cosine(&fixture(), &device()).unwrap();
    eprintln!(
        "bf16 vs f32 on {:?}: worst per-vector cosine {worst:.6}",
        device()
    );
    assert!(worst > 0.997, "bf16 vs f32 cosine {worst}");
}

#[test]
fn adapter_for_another_base_is_refused_unless_overridden() {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let mut w = loaded.weights.clone();
    let err = merge_adapter(
        &fixture().join("adapters/lora_wrong_base"),
        &mut w,
        FIXTURE_ID,
        false,
        &Device::Cpu,
    )
    .err()
    .expect("must be refused")
    .to_string();
    assert!(
        err.contains("base_model_name_or_path") && err.contains("allow_base_mismatch"),
        "{err}"
    );
    let rep = merge_adapter(
        &fixture().join("adapters/lora_wrong_base"),
        &mut w,
        FIXTURE_ID,
        true,
        &Device::Cpu,
    )
    .unwrap();
    assert!(rep
        .provenance
        .iter()
        .any(|(k, v)| k == "adapter.base_check" && v.starts_with("OVERRIDDEN")));
}
