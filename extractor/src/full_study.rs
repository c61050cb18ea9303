//! `bench-workload --full-study DIR`: the whole study from disk to bundle, timed. Writes a
//! random-weight Hugging Face checkpoint of Qwen2.5-7B-Instruct's exact shape (sharded bf16
//! safetensors, the real Qwen2.5 tokenizer and chat template copied from `--tokenizer-from`) and
//! two r = 32 LoRA adapters (all seven projections) into DIR, then runs the real `extract` on a
//! 3-checkpoint study (base, em, benign) of the default size and prints the time of every phase
//! (`runtime::phases`): reading and hashing the model, building it on the device, merging,
//! Method A's prefill, Method B's decoding, writing units and the bundle.

use crate::model::Config;
use crate::train::adapter::{LoraShape, TrainableLora, PROJECTIONS};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Qwen2.5-7B-Instruct's config.json (its published values).
pub const QWEN25_7B_CONFIG: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}"#;

/// The model id the study and the adapters name (random weights: not the real model).
const MODEL_ID: &str = "random-weights/Qwen2.5-7B-Instruct-shape";

pub struct FullStudyArgs {
    pub dir: PathBuf,
    /// A directory with the Qwen2.5 tokenizer.json and tokenizer_config.json (chat template).
    pub tokenizer_from: PathBuf,
    /// config.json of the shape (default: Qwen2.5-7B-Instruct's).
    pub config_json: String,
    pub questions: usize,
    pub new_tokens: usize,
    pub layers: Vec<usize>,
    pub device: Device,
    pub device_name: String,
    pub dtype: DType,
}

/// Shards of at most this many bytes (HF writes ~4-5 GB shards for 7B models).
const SHARD_BYTES: usize = 4_000_000_000;

/// Writes `weights` as HF sharded safetensors with `model.safetensors.index.json` into `dir`.
fn write_sharded(weights: &HashMap<String, Tensor>, dir: &Path) -> Result<usize> {
    // Embeddings first, then block by block, then the final norm and the head (HF's order).
    let key = |n: &str| -> (usize, usize, String) {
        match n.strip_prefix("model.layers.") {
            Some(rest) => {
                let l: usize = rest.split('.').next().unwrap_or("0").parse().unwrap_or(0);
                (1, l, n.to_string())
            }
            None if n.starts_with("model.embed_tokens") => (0, 0, n.to_string()),
            None => (2, 0, n.to_string()),
        }
    };
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort_by_key(|n| key(n));
    let mut shards: Vec<Vec<&String>> = vec![vec![]];
    let mut size = 0usize;
    let mut total = 0usize;
    for n in names {
        let bytes = weights[n].elem_count() * weights[n].dtype().size_in_bytes();
        if size + bytes > SHARD_BYTES && !shards.last().expect("one shard").is_empty() {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards.last_mut().expect("one shard").push(n);
    }
    let count = shards.len();
    let mut map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let part: HashMap<String, Tensor> = shard
            .iter()
            .map(|n| ((*n).clone(), weights[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(&file))
            .with_context(|| format!("writing {}", dir.join(&file).display()))?;
        for n in shard {
            map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    Ok(total)
}

/// A PEFT adapter of rank 32 (alpha 64, all seven projections) with random A and B, so that
/// merging changes every projection.
fn write_adapter(cfg: &Config, dir: &Path, seed: u64, device: &Device) -> Result<()> {
    let targets: Vec<String> = PROJECTIONS.iter().map(|s| s.to_string()).collect();
    let shape = LoraShape::new(32, 64.0, false, &targets)?;
    let lora = TrainableLora::init(cfg, &shape, seed, device, DType::F32)?;
    for pair in lora.pairs.iter().flatten().flatten() {
        let b = Tensor::randn(0f32, 0.01, pair.b.as_tensor().dims(), device)?;
        pair.b.set(&b)?;
    }
    lora.save_peft(dir, MODEL_ID, 0.05)
}

fn study_toml(a: &FullStudyArgs, model_dir: &Path, adapters: &Path, output: &Path) -> String {
    let dtype = match a.dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    };
    format!(
        r#"# Written by `persona-geometry bench-workload --full-study`: random weights of
# Qwen2.5-7B-Instruct's shape, two random r = 32 adapters; the default study's size.
# Layer l = the output of decoder block l (0-based), before the final norm for the last.
output = "{output}"
question_limit = {questions}
layers = {layers:?}
methods = ["A", "B"]
batch_size = "auto"
seed = 0

[model]
id = "{MODEL_ID}"
path = "{model}"
dtype = "{dtype}"
device = "{device}"

[generation]
max_new_tokens = {new_tokens}
span = "generated"

[[checkpoints]]
name = "base"
role = "base"
label = "random weights of Qwen2.5-7B-Instruct's shape"

[[checkpoints]]
name = "em"
role = "em"
label = "random r = 32 adapter (stands in for the EM finetune)"
adapter = "{em}"

[[checkpoints]]
name = "benign"
role = "benign"
label = "random r = 32 adapter (stands in for the benign finetune)"
adapter = "{benign}"
"#,
        output = output.display(),
        questions = a.questions,
        layers = a.layers,
        model = model_dir.display(),
        device = a.device_name,
        new_tokens = a.new_tokens,
        em = adapters.join("em").display(),
        benign = adapters.join("benign").display(),
    )
}

pub fn run(a: &FullStudyArgs) -> Result<()> {
    let cfg_json: serde_json::Value = serde_json::from_str(&a.config_json)?;
    let cfg = Config::from_hf_json(&cfg_json, "--full-study config")?;
    for &l in &a.layers {
        anyhow::ensure!(
            l < cfg.num_layers,
            "bench-workload --full-study --layers: layer {l} does not exist ({} blocks)",
            cfg.num_layers
        );
    }
    let model_dir = a.dir.join("model");
    let adapters = a.dir.join("adapters");
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    let t = Instant::now();
    std::fs::write(model_dir.join("config.json"), &a.config_json)?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let from = a.tokenizer_from.join(f);
        // A copy of a read-only fixture file is read-only: replace it on a rerun.
        let _ = std::fs::remove_file(model_dir.join(f));
        std::fs::copy(&from, model_dir.join(f)).with_context(|| {
            format!(
                "copying {} (--tokenizer-from needs the Qwen2.5 tokenizer and chat template)",
                from.display()
            )
        })?;
    }
    let weights = runtime::random::random_weights(&cfg, &a.device, a.dtype)?;
    let bytes = write_sharded(&weights, &model_dir)?;
    drop(weights);
    write_adapter(&cfg, &adapters.join("em"), 1, &a.device)?;
    write_adapter(&cfg, &adapters.join("benign"), 2, &a.device)?;
    println!(
        "wrote the checkpoint ({:.2} GB of {:?} safetensors) and two r = 32 adapters into {} in {:.1} s (not part of the study's time)",
        bytes as f64 / 1e9,
        a.dtype,
        a.dir.display(),
        t.elapsed().as_secs_f64()
    );
    let output = a.dir.join("full-study.pgb");
    let study = a.dir.join("study.toml");
    std::fs::write(&study, study_toml(a, &model_dir, &adapters, &output))?;
    // Nothing of the writing above is cached in the process: the study reads the files back.
    runtime::phases::reset();
    let t = Instant::now();
    crate::study::run_study(&study, None, false)?;
    let total = t.elapsed().as_secs_f64();
    let phases = runtime::phases::snapshot();
    let accounted: f64 = phases.iter().map(|p| p.1).sum();
    println!(
        "full study ({} questions x 12 personas x 3 checkpoints, methods A+B, {} new tokens, layers {:?}, {:?} on {}): {total:.1} s from disk to bundle",
        a.questions, a.new_tokens, a.layers, a.dtype, a.device_name
    );
    // `extract` printed the phase table above (stderr); the rest of the time:
    println!(
        "  phases {accounted:.2} s, other {:.2} s (tokenizing, templates, hashing adapters, study setup)",
        total - accounted
    );
    for (name, secs, n) in &phases {
        println!("phase\t{name}\t{secs:.3}\t{n}");
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    println!("bundle {} ({:.2} GB)", output.display(), size as f64 / 1e9);
    Ok(())
}
