//! The Hugging Face oracle: ../shared/fixtures/hf-tiny-qwen2 (transformers 5.17 + PEFT 0.21,
//! f32 on CPU). Prompts and ids must match exactly, greedy generations exactly, activations
//! within 1e-4 absolute, for the base model and both adapters; the wrong-base adapter must be
//! refused. (PG_TEST_F64=1 runs the model in f64 to separate our rounding from the reference's.)

use candle_core::{DType, Device};
use extractor::extract::Extractor;
use extractor::lora::merge_adapter;
use extractor::model::Model;
use extractor::template::ChatTemplate;
use extractor::weights::load_hf_dir;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    std::env::var_os("PG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-tiny-qwen2")
        })
}

/// PG_TEST_DEVICE=cuda runs these tests on the GPU (the CUDA build's test binary).
fn device() -> Device {
    match std::env::var("PG_TEST_DEVICE").as_deref() {
        Ok(d) if d.starts_with("cuda") => {
            extractor::study::device_from(Some(d)).expect("CUDA device")
        }
        _ => Device::Cpu,
    }
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &serde_json::Value) -> f64 {
    let b: Vec<f64> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

const ID: &str = "persona-fixture/tiny-qwen2";

fn check_variant(variant: &str, adapter: Option<&str>) {
    let exp = expected();
    let rows = exp["variants"][variant].as_array().unwrap();
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let mut weights = loaded.weights.clone();
    if let Some(a) = adapter {
        merge_adapter(&fixture().join("adapters").join(a), &mut weights, ID, false).unwrap();
    }
    let dtype = if std::env::var("PG_TEST_F64").is_ok() {
        DType::F64
    } else {
        DType::F32
    };
    let model = Model::new(loaded.cfg.clone(), weights, &device(), dtype).unwrap();
    let template = ChatTemplate::new(
        loaded.chat_template.as_deref().unwrap(),
        loaded.bos_token.clone(),
        loaded.eos_token.clone(),
    )
    .unwrap();
    let layers: Vec<usize> = (0..loaded.cfg.num_layers).collect();
    assert_eq!(loaded.stop_ids, vec![151643, 151645]);
    let ex = Extractor {
        model: &model,
        tokenizer: &loaded.tokenizer,
        template: &template,
        stop_ids: &loaded.stop_ids,
        layers: &layers,
    };
    let mut prompts = Vec::new();
    for row in rows {
        let sys = row["system"].as_str().unwrap();
        let q = row["question"].as_str().unwrap();
        let text = ex.prompt_text(sys, q).unwrap();
        assert_eq!(
            text,
            row["prompt_text"].as_str().unwrap(),
            "{variant}: prompt text for {sys:?} / {q:?}"
        );
        let ids = ex.prompt_ids(sys, q).unwrap();
        let want: Vec<u32> = row["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{variant}: prompt ids");
        prompts.push(ids);
    }
    // The whole set in one left-padded batch (lengths 28..411): padding must not change results.
    let results = ex
        .run_batch(
            &prompts,
            exp["max_new_tokens"].as_u64().unwrap() as usize,
            true,
        )
        .unwrap();
    let mut worst_a: f64 = 0.0;
    let mut worst_at = (0, 0, 0);
    let mut worst_b: f64 = 0.0;
    let mut worst_t: f64 = 0.0;
    for (i, (row, r)) in rows.iter().zip(&results).enumerate() {
        for l in 0..layers.len() {
            let d = max_abs_diff(&r.method_a[l], &row["method_a"][l]);
            if d > worst_a {
                worst_a = d;
                worst_at = (i, l, prompts[i].len());
            }
        }
        let gen: Vec<u32> = row["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(r.generated, gen, "{variant} row {i}: greedy generation");
        let resp: Vec<u32> = row["response_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(r.response, resp);
        match (&r.method_b, row["method_b_generated"].is_null()) {
            (Some(b), false) => {
                for l in 0..layers.len() {
                    worst_b = worst_b.max(max_abs_diff(&b[l], &row["method_b_generated"][l]));
                }
            }
            (None, true) => {}
            (got, _) => panic!(
                "{variant} row {i}: method B presence differs ({})",
                got.is_some()
            ),
        }
        let (tids, tb) = ex
            .method_b_templated(
                row["system"].as_str().unwrap(),
                row["question"].as_str().unwrap(),
                prompts[i].len(),
                &r.response,
            )
            .unwrap();
        let want_t: Vec<u32> = row["templated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tids, want_t, "{variant} row {i}: templated ids");
        let tb = tb.unwrap();
        for l in 0..layers.len() {
            worst_t = worst_t.max(max_abs_diff(&tb[l], &row["method_b_templated"][l]));
        }
    }
    eprintln!("{variant}: max |Δ| method A {worst_a:.2e} (row, layer, prompt length {worst_at:?}), method B generated {worst_b:.2e}, templated {worst_t:.2e}");
    assert!(
        worst_a < 2e-4 && worst_b < 1e-4 && worst_t < 1e-4,
        "{variant}: A {worst_a} B {worst_b} T {worst_t}"
    );
    // One-at-a-time equals batched.
    for i in [0usize, 8, 19] {
        let single = ex
            .run_batch(&prompts[i..i + 1], 20, true)
            .unwrap()
            .remove(0);
        assert_eq!(single.generated, results[i].generated);
        let d = single.method_a[3]
            .iter()
            .zip(&results[i].method_a[3])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "batched vs single method A differ by {d}");
    }
}

#[test]
fn base_matches_transformers() {
    check_variant("base", None);
}

#[test]
fn lora_r4_matches_peft() {
    check_variant("lora_r4", Some("lora_r4"));
}

#[test]
fn lora_rslora_with_patterns_matches_peft() {
    check_variant("lora_rslora", Some("lora_rslora"));
}

#[test]
fn adapter_for_another_base_is_refused_unless_overridden() {
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let mut w = loaded.weights.clone();
    let err = merge_adapter(
        &fixture().join("adapters/lora_wrong_base"),
        &mut w,
        ID,
        false,
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
        ID,
        true,
    )
    .unwrap();
    assert!(rep
        .provenance
        .iter()
        .any(|(k, v)| k == "adapter.base_check" && v.starts_with("OVERRIDDEN")));
}

/// bf16 compute agrees with f32 per vector (Method A, every layer, all 20 prompts). This tiny
/// model has random weights of std 0.2 and is chaotic (errors grow from block to block), so its
/// bound is 0.997; the real-model bound (0.999) is checked on SmolLM2 in smollm2_smoke.rs.
#[test]
fn bf16_agrees_with_f32() {
    let exp = expected();
    let rows = exp["variants"]["base"].as_array().unwrap();
    let loaded = load_hf_dir(&fixture().join("model")).unwrap();
    let template = ChatTemplate::new(
        loaded.chat_template.as_deref().unwrap(),
        loaded.bos_token.clone(),
        loaded.eos_token.clone(),
    )
    .unwrap();
    let layers: Vec<usize> = (0..loaded.cfg.num_layers).collect();
    let run = |dtype: DType| {
        let model =
            Model::new(loaded.cfg.clone(), loaded.weights.clone(), &device(), dtype).unwrap();
        let ex = Extractor {
            model: &model,
            tokenizer: &loaded.tokenizer,
            template: &template,
            stop_ids: &loaded.stop_ids,
            layers: &layers,
        };
        let prompts: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                ex.prompt_ids(
                    r["system"].as_str().unwrap(),
                    r["question"].as_str().unwrap(),
                )
                .unwrap()
            })
            .collect();
        // Method A from the prefill; Method B pooled over the f32 run's own greedy response
        // (bf16 may pick other tokens, which would compare different spans).
        ex.run_batch(&prompts, 0, false).unwrap()
    };
    let f = run(DType::F32);
    let b = run(DType::BF16);
    let mut worst: f64 = 1.0;
    for (x, y) in f.iter().zip(&b) {
        for l in 0..layers.len() {
            let (u, v) = (&x.method_a[l], &y.method_a[l]);
            let dot: f64 = u.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum();
            let nu: f64 = u.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nv: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            worst = worst.min(dot / (nu * nv));
        }
    }
    eprintln!(
        "bf16 vs f32 on {:?}: worst per-vector cosine {worst:.6}",
        device()
    );
    assert!(worst > 0.997, "bf16 vs f32 cosine {worst}");
}
