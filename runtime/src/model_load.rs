//! Building a `Model` from Hugging Face-named weights: each family's norms and projections,
//! and the RoPE frequencies of every base its layers use.

use super::*;

impl Model {
    /// Builds the model from HF-named weights (already merged with any adapter).
    pub fn new(
        cfg: Config,
        mut w: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Model> {
        let to = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
        // Weights keep the checkpoint's [out, in] layout; `linear` multiplies by a transposed
        // view, which candle's gemm runs faster than a pre-transposed copy (2x for the LM head).
        let tr = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
        let embed_raw = get(&mut w, "model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_embeddings || !w.contains_key("lm_head.weight") {
            tr(embed_raw.clone())?
        } else {
            tr(get(&mut w, "lm_head.weight")?)?
        };
        let fam = cfg.family.clone();
        // Norm weights in f32; Gemma's (1 + w) norms get their 1 here, once.
        let norm_w = |t: Tensor| -> Result<Tensor> {
            let t = t.to_device(device)?.to_dtype(DType::F32)?;
            Ok(if fam.norm_plus_one {
                t.affine(1.0, 1.0)?
            } else {
                t
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let opt = |w: &mut HashMap<String, Tensor>, n: &str| -> Result<Option<Tensor>> {
                w.remove(&format!("{p}.{n}")).map(to).transpose()
            };
            let q = tr(get(&mut w, &format!("{p}.self_attn.q_proj.weight"))?)?;
            let k = tr(get(&mut w, &format!("{p}.self_attn.k_proj.weight"))?)?;
            let v = tr(get(&mut w, &format!("{p}.self_attn.v_proj.weight"))?)?;
            let biases = [
                opt(&mut w, "self_attn.q_proj.bias")?,
                opt(&mut w, "self_attn.k_proj.bias")?,
                opt(&mut w, "self_attn.v_proj.bias")?,
            ];
            // A missing bias among present ones is a zero bias.
            let qkv_b = if biases.iter().any(|b| b.is_some()) {
                let parts = biases
                    .iter()
                    .zip([&q, &k, &v])
                    .map(|(b, wt)| match b {
                        Some(b) => Ok(b.clone()),
                        None => Ok(Tensor::zeros(wt.dim(0)?, dtype, device)?),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&parts, 0)?)
            } else {
                None
            };
            let gate = tr(get(&mut w, &format!("{p}.mlp.gate_proj.weight"))?)?;
            let up = tr(get(&mut w, &format!("{p}.mlp.up_proj.weight"))?)?;
            let o = tr(get(&mut w, &format!("{p}.self_attn.o_proj.weight"))?)?;
            let down = tr(get(&mut w, &format!("{p}.mlp.down_proj.weight"))?)?;
            let mut norm =
                |n: &str| -> Result<Tensor> { norm_w(get(&mut w, &format!("{p}.{n}"))?) };
            let (ln2, post_attn_norm, post_mlp_norm) = if fam.sandwich_norms {
                (
                    norm("pre_feedforward_layernorm.weight")?,
                    Some(norm("post_attention_layernorm.weight")?),
                    Some(norm("post_feedforward_layernorm.weight")?),
                )
            } else {
                (norm("post_attention_layernorm.weight")?, None, None)
            };
            let (q_norm, k_norm) = if fam.qk_norm {
                (
                    Some(norm("self_attn.q_norm.weight")?),
                    Some(norm("self_attn.k_norm.weight")?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                qkv: Tensor::cat(&[&q, &k, &v], 0)?,
                qkv_b,
                o,
                gate,
                up,
                down,
                ln1: norm("input_layernorm.weight")?,
                ln2,
                q_norm,
                k_norm,
                post_attn_norm,
                post_mlp_norm,
            });
        }
        let hd = cfg.head_dim;
        let mut rope_sets: Vec<Vec<f32>> = Vec::new();
        let mut layer_rope = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let theta = fam.rope_theta.get(l).copied().unwrap_or(cfg.rope_theta);
            let inv = rope_inv_freq(&cfg, hd, theta);
            let i = match rope_sets.iter().position(|r| *r == inv) {
                Some(i) => i,
                None => {
                    rope_sets.push(inv);
                    rope_sets.len() - 1
                }
            };
            layer_rope.push(i);
        }
        if rope_sets.is_empty() {
            rope_sets.push(rope_inv_freq(&cfg, hd, cfg.rope_theta));
        }
        let inv_freq = rope_sets[layer_rope.first().copied().unwrap_or(0)].clone();
        let embed_scale = if fam.embed_scale {
            Some(Tensor::new(&[(cfg.hidden_size as f64).sqrt() as f32], device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Model {
            embed: to(embed_raw)?,
            embed_scale,
            norm: norm_w(get(&mut w, "model.norm.weight")?)?,
            lm_head,
            layers,
            inv_freq,
            rope_sets,
            layer_rope,
            device: device.clone(),
            dtype,
            cfg,
            steering: None,
            norm_into_next_block: true,
        })
    }
}

fn rope_inv_freq(cfg: &Config, hd: usize, theta: f64) -> Vec<f32> {
    // Computed in f32 exactly as transformers does (base ** (arange(0, d, 2).float() / d)): at
    // position ~400 a one-ulp difference in a frequency already moves activations by ~1e-4.
    let mut inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / hd as f32))
        .collect();
    if let Some((factor, low, high, orig)) = cfg.rope_llama3 {
        let low_wavelen = orig / low;
        let high_wavelen = orig / high;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *f as f64;
            let v = *f as f64;
            *f = if wavelen < high_wavelen {
                v
            } else if wavelen > low_wavelen {
                v / factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 - smooth) * v / factor + smooth * v
            } as f32;
        }
    }
    inv
}
