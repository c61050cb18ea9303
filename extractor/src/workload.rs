//! `persona-geometry bench-workload`: the study's workload shape on random weights, for
//! throughput measurements (GPU or CPU). Pairs with `bench/hf_reference_workload.py`, which runs
//! Hugging Face transformers on the same shape on the same machine.

use crate::extract::run_batch_with;
use crate::model::{Arch, Config, Model};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use runtime::random::random_weights;
use std::time::Instant;

/// Qwen2.5-7B-Instruct's exact shape.
pub fn qwen25_7b() -> Config {
    Config {
        arch: Arch::Qwen2,
        hidden_size: 3584,
        intermediate_size: 18944,
        num_layers: 28,
        num_heads: 28,
        num_kv_heads: 4,
        head_dim: 128,
        vocab_size: 152064,
        rms_eps: 1e-6,
        rope_theta: 1e6,
        rope_llama3: None,
        tie_embeddings: false,
        attention_bias: true,
        family: crate::model::Family::plain(28, 1e6, 128),
    }
}

pub struct WorkloadArgs {
    pub config: Option<std::path::PathBuf>,
    /// A built-in shape (bench/configs/*.json): qwen3-8b, gemma2-9b; default Qwen2.5-7B.
    pub arch: Option<String>,
    pub prompts: usize,
    pub min_len: usize,
    pub max_len: usize,
    pub new_tokens: usize,
    pub batch_a: usize,
    pub batch_b: usize,
    pub layers: Vec<usize>,
    pub device: Device,
    pub dtype: DType,
    pub seed: u64,
    /// Run Method A (batched prefill) / Method B (decoding).
    pub method_a: bool,
    pub method_b: bool,
    /// Also time Method B with the fused CUDA kernels off (candle ops), in the same process.
    pub compare_unfused: bool,
    /// Instead of random prompts: the default study's 12 personas x 240 questions rendered with
    /// the chat template and tokenizer of this directory (tokenizer.json,
    /// tokenizer_config.json), sorted by persona, then length.
    pub study_prompts: Option<std::path::PathBuf>,
    /// Write the prompts' token ids (JSON, a list of lists, in the order run) for the HF
    /// reference (`bench/hf_reference_workload.py --prompts-file`).
    pub dump_prompts: Option<std::path::PathBuf>,
}

/// The default study's prompts (12 personas x 240 questions, the embedded data) rendered with
/// the chat template of the tokenizer directory `dir`, with the generation prompt: what a study
/// prefills. Sorted by persona, then by length (as the study batches them: a persona's rows
/// share its system prompt, computed once per prefill chunk).
pub fn default_study_prompts(dir: &std::path::Path) -> Result<Vec<Vec<u32>>> {
    let files = runtime::weights::tokenizer_files(dir)?;
    let template = files.chat_template(dir)?;
    let personas = crate::study::default_personas()?;
    let questions = crate::study::default_questions()?;
    let mut prompts = Vec::with_capacity(personas.len() * questions.len());
    for p in &personas {
        let mut rows = questions
            .iter()
            .map(|q| {
                crate::extract::prompt_ids(&files.tokenizer, &template, &p.system_prompt, &q.text)
            })
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(|r| r.len());
        prompts.extend(rows);
    }
    Ok(prompts)
}

/// Relative error ‖x − reference‖ / ‖reference‖ in f32.
fn relative_error(x: &Tensor, reference: &Tensor) -> Result<f32> {
    let x = x.to_dtype(DType::F32)?;
    let r = reference.to_dtype(DType::F32)?;
    let diff = (x - &r)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    let norm = r.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(diff / norm.max(f32::MIN_POSITIVE))
}

/// Checks the fused CUDA kernels against f32 references built from candle ops, on random data
/// of the model's shape (fresh inputs, uneven left padding). Fails beyond the rounding of the
/// compute dtype, so that no timing is printed for a wrong kernel. Prints the unfused candle
/// path's error too.
pub fn check_fused_kernels(model: &Model) -> Result<()> {
    let cfg = &model.cfg;
    let (device, dtype) = (&model.device, model.dtype);
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let rounded = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?) };
    let tolerance = if dtype == DType::F32 { 1e-5 } else { 4e-3 };
    // Each against an f32 reference on the same rounded inputs: a decoding step (one query at
    // position 290), a short prefill-like chunk (6 queries from position 61) and a whole
    // prompt's prefill (100 queries from 0: several M blocks and key tiles of the tensor-core
    // kernel), 48 rows with uneven left padding; and a decoding step of 2 rows over a cache of
    // 2,000 keys (the tensor-core kernel's flash-decoding splits and their merge).
    for (b, cap, t, offset) in [
        (48usize, 320usize, 1usize, 290usize),
        (48, 320, 6, 61),
        (48, 320, 100, 0),
        (2, 2048, 1, 1999),
    ] {
        let k = rounded(Tensor::randn(0f32, 1.0, (b, nkv, cap, hd), device)?)?;
        let v = rounded(Tensor::randn(0f32, 1.0, (b, nkv, cap, hd), device)?)?;
        let first: Vec<u32> = (0..b).map(|i| ((i * 37) % 61) as u32).collect();
        let first_key = Tensor::from_vec(first.clone(), (b,), device)?;
        let q = rounded(Tensor::randn(0f32, 1.0, (b, nh, t, hd), device)?)?;
        let mut mask = vec![0f32; b * t * cap];
        for (i, &f) in first.iter().enumerate() {
            for qi in 0..t {
                for j in 0..cap {
                    if j < f as usize || j > offset + qi {
                        mask[(i * t + qi) * cap + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, cap), device)?;
        let fused =
            crate::cuda_ops::cached_attention(&q, &k, &v, &first_key, offset, scale as f32)?;
        let Some(fused) = fused else {
            println!("fused attention: not used on this device/shape");
            break;
        };
        let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
        let rep = nh / nkv;
        let scores = (f(&q)?
            .reshape((b, nkv, rep * t, hd))?
            .matmul(&f(&k)?.t()?)?
            * scale)?
            .reshape((b, nkv, rep, t, cap))?
            .broadcast_add(&mask.unsqueeze(1)?)?;
        let reference = candle_nn::ops::softmax_last_dim(&scores)?
            .reshape((b, nkv, rep * t, cap))?
            .matmul(&f(&v)?)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        // A query inside its row's left padding has no key: the kernels give zeros, a softmax
        // over nothing NaNs.
        let has_key: Vec<u8> = first
            .iter()
            .flat_map(|&f| (0..t).map(move |qi| u8::from(offset + qi >= f as usize)))
            .collect();
        let has_key =
            Tensor::from_vec(has_key, (b, t, 1), device)?.broadcast_as((b, t, nh * hd))?;
        let keyless_zero = |x: &Tensor| -> Result<Tensor> {
            Ok(has_key.where_cond(&f(x)?, &Tensor::zeros((b, t, nh * hd), DType::F32, device)?)?)
        };
        let reference = keyless_zero(&reference)?;
        let err = relative_error(&fused, &reference)?;
        let candle = keyless_zero(&model.masked_attention(&q, &k, &v, &mask)?)?;
        let candle_err = relative_error(&candle, &reference)?;
        let kernel = if runtime::tc_attention::serves(dtype, hd) {
            "tensor cores"
        } else {
            "CUDA cores"
        };
        println!("fused attention, {kernel} ({b} rows, {t} quer{} per row from position {offset}, cache {cap}) vs f32 reference: relative error {err:.2e} (candle ops: {candle_err:.2e}; bound {tolerance:.0e})", if t == 1 { "y" } else { "ies" });
        anyhow::ensure!(
            err.is_finite() && err <= tolerance,
            "fused attention disagrees with the reference: {err:.3e} > {tolerance:.0e}"
        );
    }
    // Bias + RoPE + scatter into the cache, at an offset, for a short prefill-like chunk.
    let (b, cap, t, offset) = (48usize, 320usize, 5usize, 7usize);
    let w = (nh + 2 * nkv) * hd;
    let qkv = rounded(Tensor::randn(0f32, 1.0, (b, t, w), device)?)?;
    let bias = rounded(Tensor::randn(0f32, 0.5, (w,), device)?)?;
    let angles = Tensor::randn(0f32, 3.0, (b, t, hd / 2), device)?;
    let (cos, sin) = (rounded(angles.cos()?)?, rounded(angles.sin()?)?);
    let zeros = || Tensor::zeros((b, nkv, cap, hd), dtype, device);
    let (kc, vc) = (zeros()?, zeros()?);
    match crate::cuda_ops::qkv_rope_append(
        &qkv,
        Some(&bias),
        &cos,
        &sin,
        &kc,
        &vc,
        offset,
        (nh, nkv, hd),
    )? {
        None => println!("fused q/k/v + RoPE + cache append: not used on this device"),
        Some(q) => {
            let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
            // The biased projection rounded to the compute dtype, then RoPE in f32.
            let x = f(&rounded(
                qkv.to_dtype(DType::F32)?.broadcast_add(&f(&bias)?)?,
            )?)?;
            let split = |o: usize, heads: usize| -> Result<Tensor> {
                Ok(x.narrow(2, o * hd, heads * hd)?
                    .reshape((b, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (cf, sf) = (f(&cos)?, f(&sin)?);
            let q_ref = candle_nn::rotary_emb::rope(&split(0, nh)?, &cf, &sf)?;
            let k_ref = candle_nn::rotary_emb::rope(&split(nh, nkv)?, &cf, &sf)?;
            let v_ref = split(nh + nkv, nkv)?;
            let errs = [
                relative_error(&q, &q_ref)?,
                relative_error(&kc.narrow(2, offset, t)?, &k_ref)?,
                relative_error(&vc.narrow(2, offset, t)?, &v_ref)?,
            ];
            // Slots outside offset..offset+t stay untouched: with the written ones zeroed again,
            // both buffers are all zeros.
            let hole = Tensor::zeros((b, nkv, t, hd), dtype, device)?;
            kc.slice_set(&hole, 2, offset)?;
            vc.slice_set(&hole, 2, offset)?;
            let outside = (kc
                .to_dtype(DType::F32)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?
                + vc.to_dtype(DType::F32)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f32>()?)
            .abs();
            println!("fused q/k/v + RoPE + cache append vs f32 reference: relative error q {:.2e}, k {:.2e}, v {:.2e}; |cache outside the written slots| {outside:.1e} (bound {tolerance:.0e})", errs[0], errs[1], errs[2]);
            anyhow::ensure!(errs.iter().all(|e| e.is_finite() && *e <= tolerance) && outside == 0.0, "fused q/k/v + RoPE + cache append disagrees with the reference: {errs:?}, outside {outside}");
        }
    }
    // RMSNorm into the compute dtype, the residual update, greedy argmax.
    let x = Tensor::randn(0f32, 3.0, (b, cfg.hidden_size), device)?;
    let w = (Tensor::randn(0f32, 0.2, (cfg.hidden_size,), device)? + 1.0)?;
    let eps = cfg.rms_eps as f32;
    if let Some(y) = crate::cuda_ops::rms_norm_to(&x, &w, eps, dtype)? {
        let reference = candle_nn::ops::rms_norm(&x, &w, eps)?.to_dtype(dtype)?;
        let err = relative_error(&y, &reference)?;
        println!("fused RMSNorm → {dtype:?} vs candle ops: relative error {err:.2e} (bound {tolerance:.0e})");
        anyhow::ensure!(
            err.is_finite() && err <= tolerance,
            "fused RMSNorm disagrees with candle: {err:.3e}"
        );
    }
    let delta = rounded(Tensor::randn(0f32, 1.0, (b, cfg.hidden_size), device)?)?;
    if let Some(y) = crate::cuda_ops::add_residual(&x, &delta)? {
        let err = relative_error(&y, &(&x + delta.to_dtype(DType::F32)?)?)?;
        println!("fused residual update vs candle ops: relative error {err:.2e} (bound 1e-6)");
        anyhow::ensure!(
            err.is_finite() && err <= 1e-6,
            "fused residual update disagrees with candle: {err:.3e}"
        );
    }
    // The residual update fused with the next norm: the same values as the two kernels above,
    // bit for bit (same sums in the same order), and close to candle's ops.
    if let Some((h, y)) = runtime::residual_norm::add_residual_rms_norm(&x, &delta, &w, eps, dtype)?
    {
        let h_pair = crate::cuda_ops::add_residual(&x, &delta)?
            .context("the fused residual update ran above, so it runs here")?;
        let y_pair = crate::cuda_ops::rms_norm_to(&h_pair, &w, eps, dtype)?
            .context("the fused RMSNorm ran above, so it runs here")?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?)
        };
        let (dh, dy) = (max_diff(&h, &h_pair)?, max_diff(&y, &y_pair)?);
        let h_ref = (&x + delta.to_dtype(DType::F32)?)?;
        let y_ref = candle_nn::ops::rms_norm(&h_ref, &w, eps)?.to_dtype(dtype)?;
        let err = relative_error(&y, &y_ref)?;
        println!("fused residual update + RMSNorm → {dtype:?}: max |Δ| to the two kernels it replaces {dh:.1e} (h), {dy:.1e} (normed), bound 0; vs candle ops: relative error {err:.2e} (bound {tolerance:.0e})");
        anyhow::ensure!(
            dh == 0.0 && dy == 0.0 && err.is_finite() && err <= tolerance,
            "fused residual update + RMSNorm disagrees: {dh:.3e} / {dy:.3e} from the pair, {err:.3e} from candle"
        );
    }
    let logits = rounded(Tensor::randn(0f32, 1.0, (b, cfg.vocab_size), device)?)?;
    if let Some(next) = crate::cuda_ops::argmax_rows(&logits)? {
        let next = next.to_vec1::<u32>()?;
        let reference = logits
            .to_dtype(DType::F32)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1::<u32>()?;
        let values = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // Equal maxima (likely in bf16) may be resolved differently: the chosen logit must be
        // the row's maximum and the first index holding it.
        let mut same = 0;
        for ((row, &i), &r) in values.iter().zip(&next).zip(&reference) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let first = row.iter().position(|&v| v == max).unwrap_or(0);
            anyhow::ensure!(
                i as usize == first,
                "fused argmax picked {i}, the first maximum is at {first}"
            );
            same += usize::from(i == r);
        }
        println!(
            "fused argmax: the first maximum in all {b} rows ({same} equal to candle's index)"
        );
    }
    let g = rounded(Tensor::randn(
        0f32,
        2.0,
        (b, cfg.intermediate_size),
        device,
    )?)?;
    let u = rounded(Tensor::randn(
        0f32,
        1.0,
        (b, cfg.intermediate_size),
        device,
    )?)?;
    match crate::cuda_ops::silu_mul(&g, &u)? {
        None => println!("fused silu·mul: not used on this device"),
        Some(fused) => {
            let gf = g.to_dtype(DType::F32)?;
            let silu = candle_nn::ops::silu(&gf)?
                .to_dtype(dtype)?
                .to_dtype(DType::F32)?;
            let reference = (silu * u.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
            let err = relative_error(&fused, &reference)?;
            println!("fused silu·mul vs candle ops (same roundings): relative error {err:.2e} (bound {tolerance:.0e})");
            anyhow::ensure!(
                err.is_finite() && err <= tolerance,
                "fused silu·mul disagrees with the reference: {err:.3e}"
            );
        }
    }
    Ok(())
}

pub fn run(a: &WorkloadArgs) -> Result<()> {
    let builtin = match a.arch.as_deref() {
        Some("qwen3-8b") => Some(include_str!("../../bench/configs/qwen3-8b.json")),
        Some("gemma2-9b") => Some(include_str!("../../bench/configs/gemma2-9b.json")),
        Some("qwen2.5-7b") | None => None,
        Some(other) => anyhow::bail!(
            "bench-workload --arch {other}: not one of qwen2.5-7b, qwen3-8b, gemma2-9b"
        ),
    };
    let cfg = match (&a.config, builtin) {
        (Some(p), _) => {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )?;
            Config::from_hf_json(&v, &p.display().to_string())?
        }
        (None, Some(json)) => Config::from_hf_json(&serde_json::from_str(json)?, "bench/configs")?,
        (None, None) => qwen25_7b(),
    };
    for &l in &a.layers {
        anyhow::ensure!(
            l < cfg.num_layers,
            "bench-workload --layers: layer {l} does not exist ({} blocks)",
            cfg.num_layers
        );
    }
    let n_params: usize = {
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let per_layer = h * cfg.num_heads * hd * 2 + h * cfg.num_kv_heads * hd * 2 + 3 * h * i;
        per_layer * cfg.num_layers
    };
    let t = Instant::now();
    let model = Model::new(
        cfg.clone(),
        random_weights(&cfg, &a.device, a.dtype)?,
        &a.device,
        a.dtype,
    )?;
    println!("random weights ({} blocks, hidden {}, {:.2} B matmul params excl. embeddings) on {:?} {:?} in {:.1} s", cfg.num_layers, cfg.hidden_size, n_params as f64 / 1e9, a.device, a.dtype, t.elapsed().as_secs_f64());
    let prompts: Vec<Vec<u32>> = match &a.study_prompts {
        Some(dir) => default_study_prompts(dir)?,
        None => {
            let mut rng = shared::rng::Rng::new(a.seed);
            let mut prompts: Vec<Vec<u32>> = (0..a.prompts)
                .map(|_| {
                    let len = a.min_len + rng.below(a.max_len - a.min_len + 1);
                    (0..len)
                        .map(|_| rng.below(cfg.vocab_size.min(150_000)) as u32)
                        .collect()
                })
                .collect();
            prompts.sort_by_key(|p| p.len());
            prompts
        }
    };
    let max_len = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
    if let Some(out) = &a.dump_prompts {
        crate::io_util::write_atomic(out, serde_json::to_string(&prompts)?.as_bytes())?;
    }
    if a.study_prompts.is_some() {
        let tokens: usize = prompts.iter().map(|p| p.len()).sum();
        println!(
            "prompts: the default study's {} (12 personas x 240 questions, chat template), {tokens} tokens, {}..{max_len} each",
            prompts.len(),
            prompts.iter().map(|p| p.len()).min().unwrap_or(0)
        );
    }
    let layers = a.layers.clone();
    let flop_per_token = 2.0 * n_params as f64;
    check_fused_kernels(&model)?;
    // Warm-up outside the timings: the first use of each kernel JIT-compiles its PTX.
    let t = Instant::now();
    run_batch_with(
        &model,
        &[],
        &layers,
        &prompts[..prompts.len().min(8)],
        2,
        true,
    )?;
    println!("warm-up (kernel JIT) {:.1} s", t.elapsed().as_secs_f64());
    // Batch 0 = chosen from the device's free memory (what `batch_size = "auto"` does).
    let batch_a = match a.batch_a {
        0 => crate::extract::auto_batch_size(&model, max_len, 0)?,
        n => n,
    };
    let batch_b = match a.batch_b {
        0 => crate::extract::auto_batch_size(&model, max_len, a.new_tokens)?,
        n => n,
    };
    let mut checksum = 0f64;
    if a.method_a {
        method_a(
            &model,
            &prompts,
            batch_a,
            &layers,
            flop_per_token,
            &mut checksum,
        )?;
    }
    if a.method_b {
        // With --compare-unfused, the same batches again through candle's ops alone.
        let configured = crate::cuda_ops::fused_enabled();
        let passes: &[bool] = if a.compare_unfused {
            &[configured, false]
        } else {
            &[configured]
        };
        for &fused in passes {
            crate::cuda_ops::set_fused(fused);
            if !fused {
                print!("(fused kernels off) ");
            }
            method_b(
                &model,
                &prompts,
                batch_b,
                a.new_tokens,
                &layers,
                flop_per_token,
                &mut checksum,
            )?;
        }
        crate::cuda_ops::set_fused(configured);
    }
    println!("checksum {checksum:.4e} (keeps the work observable)");
    if crate::model::profile::enabled() {
        println!(
            "profile (device synchronised per section): {}",
            crate::model::profile::report()
        );
    }
    Ok(())
}

/// Method A: batched prefill, capture the last token at the study layers.
fn method_a(
    model: &Model,
    prompts: &[Vec<u32>],
    batch_a: usize,
    layers: &[usize],
    flop_per_token: f64,
    checksum: &mut f64,
) -> Result<()> {
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    crate::model::profile::take_totals(); // not the warm-up's
    let t = Instant::now();
    for chunk in prompts.chunks(batch_a) {
        let r = run_batch_with(model, &[], layers, chunk, 0, false)?;
        *checksum += r[0].method_a[0][0] as f64;
    }
    let ta = t.elapsed().as_secs_f64();
    println!(
        "method A: {} prompts ({prompt_tokens} tokens, batch {}) in {ta:.2} s = {:.0} tok/s, {:.0} TFLOP/s effective",
        prompts.len(),
        batch_a,
        prompt_tokens as f64 / ta,
        flop_per_token * prompt_tokens as f64 / ta / 1e12
    );
    if crate::model::profile::host_timing() {
        println!(
            "  host timing (s): {}",
            crate::model::profile::take_totals()
        );
    }
    Ok(())
}

/// Method B: the production decoding path (greedy, pooled on the device), with no stop ids so
/// that every prompt decodes exactly `new_tokens` tokens on random weights.
fn method_b(
    model: &Model,
    prompts: &[Vec<u32>],
    batch_b: usize,
    new_tokens: usize,
    layers: &[usize],
    flop_per_token: f64,
    checksum: &mut f64,
) -> Result<()> {
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    runtime::phases::reset();
    crate::model::profile::take_totals();
    let t = Instant::now();
    let mut generated = 0usize;
    for chunk in prompts.chunks(batch_b) {
        let r = run_batch_with(model, &[], layers, chunk, new_tokens, true)?;
        generated += r.iter().map(|x| x.response.len()).sum::<usize>();
        *checksum += r[0]
            .method_b
            .as_ref()
            .map(|b| b[0][0] as f64)
            .unwrap_or(0.0);
    }
    let tb = t.elapsed().as_secs_f64();
    println!(
        "method B: {} prompts x {} new tokens (batch {}) in {tb:.2} s = {:.0} generated tok/s, {:.0} TFLOP/s effective (prefill included)",
        prompts.len(),
        new_tokens,
        batch_b,
        generated as f64 / tb,
        flop_per_token * (generated + prompt_tokens) as f64 / tb / 1e12
    );
    // Where it went: the prefill (Method A's pass, shared in a study) and the decoding steps.
    let phase = |name: &str| {
        runtime::phases::snapshot()
            .iter()
            .find(|p| p.0 == name)
            .map(|p| p.1)
            .unwrap_or(0.0)
    };
    let (prefill, decode) = (
        phase("Method A: prefill"),
        phase("Method B: decoding + pooling"),
    );
    let steps = prompts.len().div_ceil(batch_b.max(1)) * new_tokens;
    println!(
        "  of which prefill {prefill:.2} s, decoding {decode:.2} s ({:.2} ms per step of {} rows)",
        1e3 * decode / steps.max(1) as f64,
        batch_b.min(prompts.len())
    );
    if crate::model::profile::host_timing() {
        println!(
            "  host timing (s): {}",
            crate::model::profile::take_totals()
        );
    }
    Ok(())
}
