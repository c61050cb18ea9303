//! How long merging a LoRA adapter into Qwen2.5-7B-shaped weights takes on this CPU (a figure
//! for the whole-study time budget, not a test): one decoder block's seven projections in bf16,
//! an r = 32 adapter on all of them (PEFT file layout), `lora::merge_adapter` timed and scaled
//! to 28 blocks. Run: cargo run --release -p extractor --example merge_speed [rank] [device]
//! (device cpu, the default, or cuda with a `--features cuda` build).
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let r: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(32);
    let cfg = extractor::workload::qwen25_7b();
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let modules = [
        ("self_attn.q_proj", q, h),
        ("self_attn.k_proj", kv, h),
        ("self_attn.v_proj", kv, h),
        ("self_attn.o_proj", h, q),
        ("mlp.gate_proj", i, h),
        ("mlp.up_proj", i, h),
        ("mlp.down_proj", h, i),
    ];
    let target = extractor::study::device_from(std::env::args().nth(2).as_deref())?;
    let dev = Device::Cpu;
    let mut weights = HashMap::new();
    let mut adapter = HashMap::new();
    for (m, out, inp) in modules {
        let name = format!("model.layers.0.{m}");
        weights.insert(
            format!("{name}.weight"),
            Tensor::randn(0f32, 0.02, (out, inp), &dev)?.to_dtype(DType::BF16)?,
        );
        let peft = format!("base_model.model.{name}");
        adapter.insert(
            format!("{peft}.lora_A.weight"),
            Tensor::randn(0f32, 0.02, (r, inp), &dev)?,
        );
        adapter.insert(
            format!("{peft}.lora_B.weight"),
            Tensor::randn(0f32, 0.02, (out, r), &dev)?,
        );
    }
    let dir = std::env::temp_dir().join(format!("pg-merge-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    candle_core::safetensors::save(&adapter, dir.join("adapter_model.safetensors"))?;
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 64, "use_rslora": false,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "bias": "none"
        })
        .to_string(),
    )?;
    // Once untimed on a GPU (kernel loading, cuBLAS handles), then timed.
    if !target.is_cpu() {
        let mut warm = weights.clone();
        extractor::lora::merge_adapter(
            &dir,
            &mut warm,
            "Qwen/Qwen2.5-7B-Instruct",
            false,
            &target,
        )?;
        target.synchronize()?;
    }
    let t = Instant::now();
    let report = extractor::lora::merge_adapter(
        &dir,
        &mut weights,
        "Qwen/Qwen2.5-7B-Instruct",
        false,
        &target,
    )?;
    target.synchronize()?;
    let one = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "LoRA r = {r} merge on {target:?}, one Qwen2.5-7B block ({} modules): {one:.2} s ({threads} CPU threads); x {} blocks = {:.1} s per adapter",
        report.merged_modules,
        cfg.num_layers,
        one * cfg.num_layers as f64
    );
    Ok(())
}
