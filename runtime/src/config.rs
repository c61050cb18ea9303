//! A model's configuration as read from a Hugging Face `config.json` (transformers 4.x and 5.x
//! layouts): architecture, shapes, norm epsilon, RoPE base and scaling, and what each family
//! adds to the Qwen2/Llama block (`Family`).

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    Qwen2,
    Llama,
    /// Qwen2's block without q/k/v bias, with an explicit head_dim and per-head RMSNorm on q
    /// and k before RoPE.
    Qwen3,
    /// (1 + w) RMSNorms before and after attention and MLP, embeddings x sqrt(hidden), GeGLU
    /// (tanh GELU), scores x query_pre_attn_scalar^-1/2, attention and final logit soft-capping,
    /// sliding-window layers.
    Gemma2,
    /// Gemma 2's norms and embedding scale, per-head (1 + w) q/k RMSNorm, sliding-window and
    /// global layers with their own RoPE bases, no soft-capping.
    Gemma3,
}

/// The families this runtime reads (model_type values of config.json).
pub const SUPPORTED_MODEL_TYPES: &str = "qwen2, qwen3, llama (and mistral), gemma2, gemma3_text";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// What a family changes in the Qwen2/Llama decoder block. `Family::default()` is that block.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// Per-head RMSNorm of q and k (over head_dim) before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms scale by (1 + w) (Gemma): the loader adds 1 to their weights once.
    pub norm_plus_one: bool,
    /// Norms after attention and after the MLP too, before each residual add (Gemma 2 and 3:
    /// post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by sqrt(hidden), rounded to the compute dtype as HF does.
    pub embed_scale: bool,
    pub activation: Activation,
    /// Attention scores are multiplied by this (default 1/sqrt(head_dim); Gemma:
    /// query_pre_attn_scalar^-1/2).
    pub attn_scale: f64,
    /// Attention logit soft-capping: scores = cap · tanh(scores / cap) before the mask.
    pub attn_softcap: Option<f64>,
    /// Final logit soft-capping (monotonic: greedy tokens are unchanged; losses are not).
    pub final_softcap: Option<f64>,
    /// Per layer: the sliding window (a query sees keys less than this many positions back),
    /// or None for global attention.
    pub window: Vec<Option<usize>>,
    /// Per layer: the RoPE base (Gemma 3: local and global layers differ).
    pub rope_theta: Vec<f64>,
}

impl Family {
    /// The Qwen2/Llama block for `layers` layers with RoPE base `theta` and `head_dim`.
    pub fn plain(layers: usize, theta: f64, head_dim: usize) -> Family {
        Family {
            qk_norm: false,
            norm_plus_one: false,
            sandwich_norms: false,
            embed_scale: false,
            activation: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            window: vec![None; layers],
            rope_theta: vec![theta; layers],
        }
    }

    /// Whether the fused CUDA kernels' plain block applies to layer `l` (q/k/v + RoPE + cache
    /// append without q/k norms; attention without soft-capping or a window).
    pub fn fused_qkv(&self) -> bool {
        !self.qk_norm
    }
    pub fn fused_attention(&self, l: usize) -> bool {
        self.attn_softcap.is_none() && self.window.get(l).copied().flatten().is_none()
    }
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
    pub family: Family,
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
            "qwen3" => Arch::Qwen3,
            "gemma2" => Arch::Gemma2,
            "gemma3_text" => Arch::Gemma3,
            "gemma3" => bail!("{path}: model_type `gemma3` is the multimodal Gemma 3 (vision tower + text); give the text model's config (model_type `gemma3_text`, e.g. google/gemma-3-1b-it) (supported: {SUPPORTED_MODEL_TYPES})"),
            other => {
                bail!("{path}: model_type `{other}` is not supported (supported: {SUPPORTED_MODEL_TYPES})")
            }
        };
        let hidden_size = get_u("hidden_size")?;
        let num_heads = get_u("num_attention_heads")?;
        let rope = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|x| !x.is_null());
        // transformers 5.x Gemma 3: rope_parameters per layer type.
        let rope_global = rope.and_then(|r| r.get("full_attention"));
        let rope_local = rope.and_then(|r| r.get("sliding_attention"));
        let rope = rope_global.or(rope);
        let theta_of = |r: Option<&serde_json::Value>| {
            r.and_then(|r| r.get("rope_theta")).and_then(|x| x.as_f64())
        };
        let rope_theta = v
            .get("rope_theta")
            .and_then(|x| x.as_f64())
            .or_else(|| theta_of(rope))
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
        let num_layers = get_u("num_hidden_layers")?;
        let head_dim = v
            .get("head_dim")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads);
        let f64_of = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let mut family = Family::plain(num_layers, rope_theta, head_dim);
        if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
            // Which layers slide: transformers 5.x `layer_types`, else Gemma 2's alternation
            // (even layers local) or Gemma 3's pattern (every `sliding_window_pattern`-th global).
            let types: Option<Vec<String>> = v.get("layer_types").and_then(|t| {
                t.as_array().map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("").to_string())
                        .collect()
                })
            });
            let window = v
                .get("sliding_window")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize);
            let sliding = |l: usize| -> bool {
                match &types {
                    Some(t) => t.get(l).is_some_and(|x| x == "sliding_attention"),
                    None if arch == Arch::Gemma2 => l % 2 == 0,
                    None => {
                        let pattern = v
                            .get("sliding_window_pattern")
                            .or_else(|| v.get("_sliding_window_pattern"))
                            .and_then(|x| x.as_u64())
                            .unwrap_or(6) as usize;
                        (l + 1) % pattern.max(1) != 0
                    }
                }
            };
            if let Some(t) = &types {
                if t.len() != num_layers {
                    bail!(
                        "{path}: layer_types has {} entries for {num_layers} layers",
                        t.len()
                    );
                }
            }
            let local_theta = theta_of(rope_local)
                .or_else(|| f64_of("rope_local_base_freq"))
                .unwrap_or(10000.0);
            for l in 0..num_layers {
                if sliding(l) {
                    family.window[l] = Some(window.with_context(|| {
                        format!("{path}: layer {l} slides but `sliding_window` is missing")
                    })?);
                    if arch == Arch::Gemma3 {
                        family.rope_theta[l] = local_theta;
                    }
                }
            }
            family.norm_plus_one = true;
            family.sandwich_norms = true;
            family.embed_scale = true;
            family.activation = match v
                .get("hidden_activation")
                .or_else(|| v.get("hidden_act"))
                .and_then(|x| x.as_str())
                .unwrap_or("gelu_pytorch_tanh")
            {
                "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
                other => bail!("{path}: activation `{other}` is not supported for this family (gelu_pytorch_tanh)"),
            };
            family.attn_scale = 1.0
                / f64_of("query_pre_attn_scalar")
                    .unwrap_or(head_dim as f64)
                    .sqrt();
            family.attn_softcap = f64_of("attn_logit_softcapping");
            family.final_softcap = f64_of("final_logit_softcapping");
        }
        family.qk_norm = matches!(arch, Arch::Qwen3 | Arch::Gemma3);
        if arch == Arch::Qwen2 || arch == Arch::Llama || arch == Arch::Qwen3 {
            if let Some(act) = v.get("hidden_act").and_then(|x| x.as_str()) {
                if act != "silu" {
                    bail!("{path}: hidden_act `{act}` is not supported for {model_type} (silu)");
                }
            }
        }
        Ok(Config {
            arch: arch.clone(),
            hidden_size,
            intermediate_size: get_u("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: v
                .get("num_key_value_heads")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(num_heads),
            head_dim,
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
            family,
        })
    }
}
