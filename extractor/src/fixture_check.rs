//! Comparison with the Hugging Face oracle fixtures (`hf-tiny-qwen2`, and `hf-tiny-qwen3`,
//! `hf-tiny-gemma2`, `hf-tiny-gemma3` for the other families): shared by the test suite and by
//! `persona-geometry verify-fixture` (which runs the same check on a GPU host, where there is no
//! cargo).

use crate::extract::Extractor;
use crate::lora::merge_adapter;
use crate::model::Model;
use crate::weights::load_hf_dir;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

pub const FIXTURE_ID: &str = "persona-fixture/tiny-qwen2";

/// The model id the fixture's adapters declare: `persona-fixture/tiny-<spec>` (`spec` in
/// expected.json; the Qwen2 fixture has none).
pub fn fixture_id(exp: &serde_json::Value) -> String {
    match exp["spec"].as_str() {
        Some(spec) if spec != "public" => format!("persona-fixture/tiny-{spec}"),
        _ => FIXTURE_ID.to_string(),
    }
}

fn read_expected(fixture: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &std::fs::read_to_string(fixture.join("expected.json"))
            .with_context(|| format!("reading {}/expected.json", fixture.display()))?,
    )?)
}

/// The fixture's variants with their adapters (`base` has none; every other variant is the
/// adapter directory of the same name).
pub fn variants(fixture: &Path) -> Result<Vec<(String, Option<String>)>> {
    let exp = read_expected(fixture)?;
    let v = exp["variants"]
        .as_object()
        .context("expected.json has no variants")?;
    Ok(v.keys()
        .map(|k| (k.clone(), (k != "base").then(|| k.clone())))
        .collect())
}

#[derive(Debug, Default)]
pub struct VariantReport {
    pub variant: String,
    pub max_abs_method_a: f64,
    /// (row, layer, prompt length) of the worst Method-A difference.
    pub worst_a_at: (usize, usize, usize),
    pub max_abs_method_b: f64,
    pub max_abs_templated: f64,
    /// Exact mismatches (prompt text, ids, generations), described.
    pub mismatches: Vec<String>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn max_abs_diff(a: &[f32], b: &serde_json::Value) -> f64 {
    let b: Vec<f64> = b
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(&b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Runs one variant (`base`, `lora_r4`, `lora_rslora`) with all 20 prompts in one padded batch.
pub fn check_variant(
    fixture: &Path,
    variant: &str,
    adapter: Option<&str>,
    device: &Device,
    dtype: DType,
) -> Result<VariantReport> {
    let exp = read_expected(fixture)?;
    let rows = exp["variants"][variant]
        .as_array()
        .with_context(|| format!("expected.json has no variant {variant}"))?;
    let max_new = exp["max_new_tokens"].as_u64().unwrap_or(20) as usize;
    let loaded = load_hf_dir(&fixture.join("model"))?;
    let mut weights = loaded.weights.clone();
    if let Some(a) = adapter {
        merge_adapter(
            &fixture.join("adapters").join(a),
            &mut weights,
            &fixture_id(&exp),
            false,
            device,
        )?;
    }
    let model = Model::new(loaded.cfg.clone(), weights, device, dtype)?;
    let template = loaded.chat_template()?;
    let layers: Vec<usize> = (0..loaded.cfg.num_layers).collect();
    let ex = Extractor::of(&model, &loaded, &template, &layers);
    let mut rep = VariantReport {
        variant: variant.to_string(),
        ..Default::default()
    };
    let mut prompts = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let sys = row["system"].as_str().unwrap_or_default();
        let q = row["question"].as_str().unwrap_or_default();
        if ex.prompt_text(sys, q)? != row["prompt_text"].as_str().unwrap_or_default() {
            rep.mismatches.push(format!("row {i}: prompt text"));
        }
        let p = ex.prompt_ids(sys, q)?;
        if p != ids(&row["prompt_ids"]) {
            rep.mismatches.push(format!("row {i}: prompt ids"));
        }
        prompts.push(p);
    }
    let results = ex.run_batch(&prompts, max_new, true)?;
    for (i, (row, r)) in rows.iter().zip(&results).enumerate() {
        for l in 0..layers.len() {
            let d = max_abs_diff(&r.method_a[l], &row["method_a"][l]);
            if d > rep.max_abs_method_a {
                rep.max_abs_method_a = d;
                rep.worst_a_at = (i, l, prompts[i].len());
            }
        }
        if r.generated != ids(&row["generated_ids"]) {
            rep.mismatches.push(format!(
                "row {i}: greedy generation {:?} vs {:?}",
                r.generated,
                ids(&row["generated_ids"])
            ));
        }
        if r.response != ids(&row["response_ids"]) {
            rep.mismatches.push(format!("row {i}: response ids"));
        }
        match (&r.method_b, row["method_b_generated"].is_null()) {
            (Some(b), false) => {
                for l in 0..layers.len() {
                    rep.max_abs_method_b = rep
                        .max_abs_method_b
                        .max(max_abs_diff(&b[l], &row["method_b_generated"][l]));
                }
            }
            (None, true) => {}
            (got, _) => rep.mismatches.push(format!(
                "row {i}: method B presence differs ({})",
                got.is_some()
            )),
        }
        let (tids, tb) = ex.method_b_templated(
            row["system"].as_str().unwrap_or_default(),
            row["question"].as_str().unwrap_or_default(),
            prompts[i].len(),
            &r.response,
        )?;
        if tids != ids(&row["templated_ids"]) {
            rep.mismatches.push(format!("row {i}: templated ids"));
        }
        match tb {
            Some(tb) => {
                for l in 0..layers.len() {
                    rep.max_abs_templated = rep
                        .max_abs_templated
                        .max(max_abs_diff(&tb[l], &row["method_b_templated"][l]));
                }
            }
            None => rep
                .mismatches
                .push(format!("row {i}: empty templated span")),
        }
    }
    Ok(rep)
}

/// Cosine of two f32 vectors, accumulated in f64.
pub fn cosine_f32(u: &[f32], v: &[f32]) -> f64 {
    let dot: f64 = u.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum();
    let nu: f64 = u.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nv: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    dot / (nu * nv)
}

/// Worst per-vector cosine between bf16 and f32 Method-A activations over the fixture prompts.
pub fn bf16_vs_f32_worst_cosine(fixture: &Path, device: &Device) -> Result<f64> {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json"))?)?;
    let rows = exp["variants"]["base"]
        .as_array()
        .context("no base variant")?;
    let loaded = load_hf_dir(&fixture.join("model"))?;
    let template = loaded.chat_template()?;
    let layers: Vec<usize> = (0..loaded.cfg.num_layers).collect();
    let run = |dtype: DType| -> Result<Vec<crate::extract::PromptResult>> {
        let model = loaded.model(device, dtype)?;
        let ex = Extractor::of(&model, &loaded, &template, &layers);
        let prompts: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                ex.prompt_ids(
                    r["system"].as_str().unwrap_or_default(),
                    r["question"].as_str().unwrap_or_default(),
                )
            })
            .collect::<Result<_>>()?;
        ex.run_batch(&prompts, 0, false)
    };
    let f = run(DType::F32)?;
    let b = run(DType::BF16)?;
    let mut worst: f64 = 1.0;
    for (x, y) in f.iter().zip(&b) {
        for (u, v) in x.method_a.iter().zip(&y.method_a) {
            worst = worst.min(cosine_f32(u, v));
        }
    }
    Ok(worst)
}

/// `persona-geometry verify-fixture`: every variant in f32 plus bf16 agreement; fails loudly.
pub fn verify(fixture: &Path, device: &Device) -> Result<()> {
    let mut failed = false;
    for (v, a) in variants(fixture)? {
        let r = check_variant(fixture, &v, a.as_deref(), device, DType::F32)?;
        let ok = r.mismatches.is_empty()
            && r.max_abs_method_a < 1e-4
            && r.max_abs_method_b < 1e-4
            && r.max_abs_templated < 1e-4;
        println!(
            "{v} on {device:?} (f32): max |Δ| method A {:.2e} at (row, layer, prompt length) {:?}, method B {:.2e}, templated {:.2e}; {} exact mismatches -> {}",
            r.max_abs_method_a,
            r.worst_a_at,
            r.max_abs_method_b,
            r.max_abs_templated,
            r.mismatches.len(),
            if ok { "ok" } else { "FAIL" }
        );
        for m in r.mismatches.iter().take(5) {
            println!("  {m}");
        }
        failed |= !ok;
    }
    let c = bf16_vs_f32_worst_cosine(fixture, device)?;
    println!("bf16 vs f32 on {device:?}: worst per-vector cosine {c:.6} (tiny random model; bound 0.997)");
    failed |= c <= 0.997;
    if failed {
        bail!("the fixture check failed");
    }
    Ok(())
}
