//! PEFT LoRA adapters merged into the base weights at load: W' = W + s·B·A with
//! s = alpha/r (or alpha/√r with rsLoRA), per-module r and alpha from rank_pattern/alpha_pattern.
//! Anything this merge would get wrong is refused with the reason.

use crate::hash::sha256_file;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub struct AdapterReport {
    /// Provenance entries for the bundle.
    pub provenance: Vec<(String, String)>,
    pub merged_modules: usize,
}

/// PEFT matches pattern keys against the end of the module name.
fn pattern_value<'a>(
    patterns: Option<&'a serde_json::Map<String, serde_json::Value>>,
    module: &str,
) -> Option<&'a serde_json::Value> {
    patterns?
        .iter()
        .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .map(|(_, v)| v)
}

/// Merges the adapter in `dir` into `weights` (HF names). `model_id` is the loaded model's
/// identity; an adapter trained on another base is refused unless `allow_base_mismatch`.
/// W + scale·B·A in f32, each element the f32 rounding of its f64 sum (products of f32 values
/// are exact in f64, so this is W + s·B·A to within f64 rounding), computed where the model
/// will run. On a GPU: candle's f64 ops there (a 7B adapter in about a second). On the CPU:
/// rows split across threads, each row computed alone, so the result does not depend on the
/// thread count (candle's single-threaded f64 elementwise ops took 156 s per r = 32 adapter of a
/// 7B model on 2 cores, this loop 96 s: `cargo run --release -p extractor --example
/// merge_speed`).
fn merged_weight(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    device: &Device,
) -> Result<Tensor> {
    if !device.is_cpu() {
        let f64_on =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(DType::F64)?) };
        let delta = (f64_on(b)?.matmul(&f64_on(a)?)? * scale)?;
        return Ok((f64_on(w)? + delta)?.to_dtype(DType::F32)?);
    }
    let (out, inp) = w.dims2()?;
    let r = a.dim(0)?;
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (wv, av, bv) = (flat(w)?, flat(a)?, flat(b)?);
    const ROWS: usize = 64;
    let chunks = shared::parallel::par_map(out.div_ceil(ROWS), |chunk| {
        let rows = chunk * ROWS..((chunk + 1) * ROWS).min(out);
        let mut merged = Vec::with_capacity(rows.len() * inp);
        let mut delta = vec![0f64; inp];
        for o in rows {
            delta.fill(0.0);
            for k in 0..r {
                let bk = bv[o * r + k] as f64;
                for (d, &x) in delta.iter_mut().zip(&av[k * inp..(k + 1) * inp]) {
                    *d += bk * x as f64;
                }
            }
            merged.extend(
                wv[o * inp..(o + 1) * inp]
                    .iter()
                    .zip(&delta)
                    .map(|(&x, &d)| (x as f64 + scale * d) as f32),
            );
        }
        merged
    });
    Ok(Tensor::from_vec(chunks.concat(), (out, inp), &Device::Cpu)?)
}

/// Merges the PEFT LoRA adapter in `dir` into `weights`, computing on `device` (the device the
/// model will run on; merged weights stay there, in f32).
pub fn merge_adapter(
    dir: &Path,
    weights: &mut HashMap<String, Tensor>,
    model_id: &str,
    allow_base_mismatch: bool,
    device: &Device,
) -> Result<AdapterReport> {
    let cfg_path = dir.join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let what = cfg_path.display().to_string();
    let peft_type = cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
    if peft_type != "LORA" {
        bail!("{what}: peft_type `{peft_type}` is not supported (LORA only)");
    }
    let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    if flag("use_dora") {
        bail!("{what}: use_dora = true: DoRA adapters cannot be merged as W + s·B·A; merge it with PEFT (`merge_and_unload`) and give the merged model instead");
    }
    if flag("fan_in_fan_out") {
        bail!("{what}: fan_in_fan_out = true (Conv1D-style weights) is not supported for Qwen2/Llama adapters");
    }
    if flag("lora_bias")
        || cfg
            .get("bias")
            .and_then(|v| v.as_str())
            .map(|b| b != "none")
            .unwrap_or(false)
    {
        bail!(
            "{what}: adapters that train biases (bias != \"none\" or lora_bias) are not supported"
        );
    }
    if cfg
        .get("modules_to_save")
        .map(|v| !v.is_null() && v.as_array().map(|a| !a.is_empty()).unwrap_or(true))
        .unwrap_or(false)
    {
        bail!("{what}: modules_to_save is set: the adapter replaces whole modules, which this merge would silently drop");
    }
    if cfg
        .get("layers_to_transform")
        .map(|v| !v.is_null())
        .unwrap_or(false)
    {
        bail!("{what}: layers_to_transform is not supported");
    }
    let declared = cfg
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let base_check = if declared == model_id {
        format!("ok: adapter base `{declared}` = model `{model_id}`")
    } else if allow_base_mismatch {
        format!("OVERRIDDEN: adapter base `{declared}` != model `{model_id}` (allow_base_mismatch = true)")
    } else {
        bail!(
            "{what}: base_model_name_or_path is `{declared}` but the study's model is `{model_id}`: this adapter was trained on another model. Merging it would silently invalidate the study. If you are sure (e.g. a local copy of the same model under another name), set `allow_base_mismatch = true` for this checkpoint"
        );
    };
    let r0 = cfg
        .get("r")
        .and_then(|v| v.as_u64())
        .context("adapter_config.json lacks `r`")? as f64;
    let alpha0 = cfg
        .get("lora_alpha")
        .and_then(|v| v.as_f64())
        .context("adapter_config.json lacks `lora_alpha`")?;
    let rslora = flag("use_rslora");
    let rank_pattern = cfg.get("rank_pattern").and_then(|v| v.as_object());
    let alpha_pattern = cfg.get("alpha_pattern").and_then(|v| v.as_object());
    let wpath = dir.join("adapter_model.safetensors");
    if !wpath.exists() {
        if dir.join("adapter_model.bin").exists() {
            bail!("{}: only adapter_model.bin (pickle) is present; convert it to safetensors (PEFT `save_pretrained(safe_serialization=True)`)", dir.display());
        }
        bail!("{}: adapter_model.safetensors not found", dir.display());
    }
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .with_context(|| format!("reading {}", wpath.display()))?;
    let mut modules: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight").map(|s| s.to_string()))
        .collect();
    modules.sort();
    for k in tensors.keys() {
        if k.contains("embed_tokens") || k.contains("lm_head") {
            bail!(
                "{}: tensor `{k}`: LoRA on embeddings or the LM head is not supported",
                wpath.display()
            );
        }
        if !(k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")) {
            bail!(
                "{}: unexpected tensor `{k}` (only lora_A/lora_B weights can be merged)",
                wpath.display()
            );
        }
    }
    let mut merged = 0;
    for m in &modules {
        let a = tensors
            .get(&format!("{m}.lora_A.weight"))
            .expect("listed")
            .to_dtype(DType::F32)?;
        let b = tensors
            .get(&format!("{m}.lora_B.weight"))
            .with_context(|| format!("{}: `{m}` has lora_A but no lora_B", wpath.display()))?
            .to_dtype(DType::F32)?;
        let module = m.strip_prefix("base_model.model.").unwrap_or(m);
        let target = format!("{module}.weight");
        let w = weights.get(&target).with_context(|| format!("{}: adapter module `{module}` has no weight `{target}` in the model: wrong architecture", wpath.display()))?;
        let (out, inp) = w.dims2()?;
        let r = pattern_value(rank_pattern, module)
            .and_then(|v| v.as_f64())
            .unwrap_or(r0);
        let alpha = pattern_value(alpha_pattern, module)
            .and_then(|v| v.as_f64())
            .unwrap_or(alpha0);
        if a.dims() != [r as usize, inp] || b.dims() != [out, r as usize] {
            bail!(
                "{}: `{module}`: lora_A {:?} / lora_B {:?} do not fit weight [{out}, {inp}] with r = {r}: the adapter belongs to a model of another shape",
                wpath.display(),
                a.dims(),
                b.dims()
            );
        }
        let scale = if rslora { alpha / r.sqrt() } else { alpha / r };
        // Kept in f32: rounding the merged weight back to a bf16 checkpoint's dtype would lose
        // most of a small adapter's delta (the model is cast to the compute dtype later).
        weights.insert(target, merged_weight(w, &a, &b, scale, device)?);
        merged += 1;
    }
    if merged == 0 {
        bail!("{}: no LoRA modules found", wpath.display());
    }
    Ok(AdapterReport {
        provenance: vec![
            ("adapter.path".into(), dir.display().to_string()),
            ("adapter.config_sha256".into(), sha256_file(&cfg_path)?),
            ("adapter.weights_sha256".into(), sha256_file(&wpath)?),
            (
                "adapter.base_model_name_or_path".into(),
                declared.to_string(),
            ),
            ("adapter.base_check".into(), base_check),
            ("adapter.r".into(), r0.to_string()),
            ("adapter.lora_alpha".into(), alpha0.to_string()),
            ("adapter.use_rslora".into(), rslora.to_string()),
            (
                "adapter.rank_pattern".into(),
                rank_pattern
                    .map(|p| serde_json::to_string(p).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            (
                "adapter.alpha_pattern".into(),
                alpha_pattern
                    .map(|p| serde_json::to_string(p).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            (
                "adapter.target_modules".into(),
                cfg.get("target_modules")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            ("adapter.merged_modules".into(), merged.to_string()),
        ],
        merged_modules: merged,
    })
}
