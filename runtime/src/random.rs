//! Random weights of a model configuration (HF names): for benchmarks on a given shape
//! (`bench-workload`) and for tests that need a model without a checkpoint.

use crate::model::Config;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// N(0, 0.02) projections, embeddings and biases (when the family has them); norm weights of 1
/// as the model applies them (Gemma's (1 + w) norms get w = 0); every family's extra norms.
pub fn random_weights(
    cfg: &Config,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut w = HashMap::new();
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut add = |name: String, shape: &[usize], std: f64| -> Result<()> {
        w.insert(
            name,
            Tensor::randn(0f32, std as f32, shape, device)?.to_dtype(dtype)?,
        );
        Ok(())
    };
    add(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, h],
        0.02,
    )?;
    add("lm_head.weight".into(), &[cfg.vocab_size, h], 0.02)?;
    add("model.norm.weight".into(), &[h], 0.0)?;
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.self_attn.q_proj.weight"), &[q, h], 0.02)?;
        add(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.02)?;
        add(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.02)?;
        add(format!("{p}.self_attn.o_proj.weight"), &[h, q], 0.02)?;
        if cfg.attention_bias {
            add(format!("{p}.self_attn.q_proj.bias"), &[q], 0.02)?;
            add(format!("{p}.self_attn.k_proj.bias"), &[kv], 0.02)?;
            add(format!("{p}.self_attn.v_proj.bias"), &[kv], 0.02)?;
        }
        if cfg.family.qk_norm {
            add(format!("{p}.self_attn.q_norm.weight"), &[hd], 0.0)?;
            add(format!("{p}.self_attn.k_norm.weight"), &[hd], 0.0)?;
        }
        if cfg.family.sandwich_norms {
            add(format!("{p}.pre_feedforward_layernorm.weight"), &[h], 0.0)?;
            add(format!("{p}.post_feedforward_layernorm.weight"), &[h], 0.0)?;
        }
        add(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.02)?;
        add(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.02)?;
        add(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.02)?;
        add(format!("{p}.input_layernorm.weight"), &[h], 0.0)?;
        add(format!("{p}.post_attention_layernorm.weight"), &[h], 0.0)?;
    }
    // Norm weights of 1 (randn with std 0 gives 0): replace, except for (1 + w) norms.
    if !cfg.family.norm_plus_one {
        for (k, v) in w.iter_mut() {
            if k.ends_with("norm.weight") {
                *v = v.ones_like()?;
            }
        }
    }
    Ok(w)
}
