//! A model's configuration as read from a Hugging Face `config.json` (transformers 4.x and 5.x
//! layouts): architecture, shapes, norm epsilon, RoPE base and scaling.

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    Qwen2,
    Llama,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// Llama 3 style frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_position).
    pub rope_llama3: Option<(f64, f64, f64, f64)>,
    pub tie_embeddings: bool,
    pub attention_bias: bool,
}

impl Config {
    /// From a Hugging Face `config.json` (transformers 4.x `rope_theta` or 5.x `rope_parameters`).
    pub fn from_hf_json(v: &serde_json::Value, path: &str) -> Result<Config> {
        let get_u = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .with_context(|| format!("{path}: field `{k}` missing or not an integer"))
        };
        let model_type = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("");
        let arch = match model_type {
            "qwen2" => Arch::Qwen2,
            "llama" | "mistral" => Arch::Llama,
            other => {
                bail!("{path}: model_type `{other}` is not supported (supported: qwen2, llama)")
            }
        };
        let hidden_size = get_u("hidden_size")?;
        let num_heads = get_u("num_attention_heads")?;
        let rope = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|x| !x.is_null());
        let rope_theta = v
            .get("rope_theta")
            .and_then(|x| x.as_f64())
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(|x| x.as_f64())
            })
            .unwrap_or(10000.0);
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(|x| x.as_str())
            .unwrap_or("default");
        let rope_llama3 = match rope_type {
            "default" => None,
            "llama3" => {
                let r = rope.expect("rope_type came from it");
                let f = |k: &str| {
                    r.get(k)
                        .and_then(|x| x.as_f64())
                        .with_context(|| format!("{path}: llama3 rope scaling lacks `{k}`"))
                };
                Some((
                    f("factor")?,
                    f("low_freq_factor")?,
                    f("high_freq_factor")?,
                    f("original_max_position_embeddings")?,
                ))
            }
            other => bail!("{path}: rope type `{other}` is not supported (default, llama3)"),
        };
        Ok(Config {
            arch: arch.clone(),
            hidden_size,
            intermediate_size: get_u("intermediate_size")?,
            num_layers: get_u("num_hidden_layers")?,
            num_heads,
            num_kv_heads: v
                .get("num_key_value_heads")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(num_heads),
            head_dim: v
                .get("head_dim")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(hidden_size / num_heads),
            vocab_size: get_u("vocab_size")?,
            rms_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6),
            rope_theta,
            rope_llama3,
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(arch == Arch::Qwen2),
        })
    }
}
