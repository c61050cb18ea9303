//! A decoder-only transformer (Qwen2/Qwen2.5 and Llama families) written on candle tensors,
//! because candle-transformers' models cannot return intermediate layers.
//!
//! Layer convention: layer l = output of decoder block l (0-based), i.e. what a forward hook on
//! `model.layers[l]` sees; the last block is taken before the final norm.
//!
//! Batches are left-padded: every sequence's last prompt token sits in the last column, position
//! ids skip the padding, and padded keys are masked, so a padded row computes what it would alone.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;

pub use crate::config::{Arch, Config};
pub use crate::profile;

/// One decoder block's weights (public for the training forward, `extractor::train`).
pub struct Layer {
    /// q, k and v projections stacked: one matmul per block instead of three.
    pub qkv: Tensor,
    pub qkv_b: Option<Tensor>,
    pub o: Tensor,
    /// gate and up stay separate: stacked, their halves are strided views, and candle's strided
    /// SiLU/mul kernels on the prefill's [tokens, intermediate] tensors cost more than the
    /// second matmul launch saves.
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
    /// Norm weights in f32: the norms run on the f32 residual stream (fused kernel).
    pub ln1: Tensor,
    pub ln2: Tensor,
}

/// A residual-stream intervention: add `vector` (hidden) to the output of block `layer`.
#[derive(Clone, Debug)]
pub struct Steering {
    pub layer: usize,
    pub vector: Vec<f32>,
}

pub struct Model {
    pub cfg: Config,
    pub device: Device,
    pub dtype: DType,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Tensor,
    pub inv_freq: Vec<f32>,
    steering: Option<(usize, Tensor)>,
}

/// Per-layer key/value cache for a batch: buffers [b, kv heads, capacity, head_dim] allocated
/// once (zeros: the unfused decoding path masks unused slots, and 0 · garbage could be NaN),
/// written in place.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Positions written so far (the same for every layer between passes).
    len: usize,
    /// Per sequence: whether each cached key column is real (not left padding).
    key_valid: Vec<Vec<bool>>,
    /// Per sequence: next position id.
    next_pos: Vec<usize>,
    /// Preallocated positions per sequence.
    capacity: usize,
}

/// See [`Model::decode_tables`].
pub struct DecodeTables {
    /// [b, 1, 1, capacity] additive: -inf at the prompts' left padding.
    key_mask: Tensor,
    /// [max_new, 1, 1, 1, capacity] additive: -inf at the slots step s must not see yet.
    future: Tensor,
    /// [positions, head_dim / 2] in the compute dtype.
    cos: Tensor,
    sin: Tensor,
    /// [max_new, b] u32: row i's position id at decoding step s.
    positions: Tensor,
    /// [b] u32: the first real key of each row (the prompts' left padding comes before), for
    /// the fused decoding attention.
    first_key: Tensor,
    /// Cached positions before decoding (the padded prompt length).
    prompt: usize,
}

/// How a pass through the blocks attends.
enum Attend<'a> {
    /// A prefill over the cache's filled part: the fused CUDA kernel where it applies (given
    /// each row's first real key, when padding is a prefix), else candle's ops with the mask of
    /// `prefill_mask`, built only then.
    Prefill { first_key: Option<&'a Tensor> },
    /// Decoding step `step` over the whole preallocated K/V buffers: the fused CUDA kernel
    /// where it applies, else the mask `key_mask + future[step]` (unused slots are zeros).
    Decode {
        tables: &'a DecodeTables,
        step: usize,
    },
}

pub struct StepOutput {
    /// Greedy next token of each row (argmax of the last column's logits, computed on the
    /// device so that only ids cross to the host), if asked for.
    pub next_tokens: Option<Vec<u32>>,
    /// Per requested layer: hidden state of the last column, [batch][hidden] f32.
    pub last_hidden: Vec<Vec<Vec<f32>>>,
}

fn get(w: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    w.remove(name)
        .with_context(|| format!("weight `{name}` not found in the checkpoint"))
}

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
            let f32w =
                |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(DType::F32)?) };
            layers.push(Layer {
                qkv: Tensor::cat(&[&q, &k, &v], 0)?,
                qkv_b,
                o: tr(get(&mut w, &format!("{p}.self_attn.o_proj.weight"))?)?,
                gate,
                up,
                down: tr(get(&mut w, &format!("{p}.mlp.down_proj.weight"))?)?,
                ln1: f32w(get(&mut w, &format!("{p}.input_layernorm.weight"))?)?,
                ln2: f32w(get(
                    &mut w,
                    &format!("{p}.post_attention_layernorm.weight"),
                )?)?,
            });
        }
        let hd = cfg.head_dim;
        let inv_freq = rope_inv_freq(&cfg, hd);
        Ok(Model {
            embed: to(embed_raw)?,
            norm: get(&mut w, "model.norm.weight")?
                .to_device(device)?
                .to_dtype(DType::F32)?,
            lm_head,
            layers,
            inv_freq,
            device: device.clone(),
            dtype,
            cfg,
            steering: None,
        })
    }

    pub fn set_steering(&mut self, s: Option<Steering>) -> Result<()> {
        self.steering = match s {
            None => None,
            Some(s) => {
                if s.vector.len() != self.cfg.hidden_size || s.layer >= self.cfg.num_layers {
                    bail!("steering vector of size {} at layer {} does not fit a model with hidden {} and {} layers", s.vector.len(), s.layer, self.cfg.hidden_size, self.cfg.num_layers);
                }
                Some((
                    s.layer,
                    Tensor::from_vec(s.vector, (1, 1, self.cfg.hidden_size), &self.device)?,
                ))
            }
        };
        Ok(())
    }

    /// A cache for `batch` sequences with room for `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let capacity = capacity.max(1);
        let shape = (batch, self.cfg.num_kv_heads, capacity, self.cfg.head_dim);
        let buffers = || -> Result<Vec<Tensor>> {
            (0..self.cfg.num_layers)
                .map(|_| Ok(Tensor::zeros(shape, self.dtype, &self.device)?))
                .collect()
        };
        Ok(KvCache {
            k: buffers()?,
            v: buffers()?,
            len: 0,
            key_valid: vec![vec![]; batch],
            next_pos: vec![0; batch],
            capacity,
        })
    }

    /// RMSNorm of the f32 residual stream with f32 weights in one fused kernel
    /// (x / sqrt(mean(x²) + eps) · w), rounded once to the compute dtype.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        if let Some(y) = crate::cuda_ops::rms_norm_to(&x, w, self.cfg.rms_eps as f32, self.dtype)? {
            return Ok(y);
        }
        let y = candle_nn::ops::rms_norm(&x, w, self.cfg.rms_eps as f32)?;
        Ok(y.to_dtype(self.dtype)?)
    }

    fn rope_tables(&self, positions: &[Vec<usize>]) -> Result<(Tensor, Tensor)> {
        // [B, T, hd/2] cos/sin of position x inverse frequency (f32, then the compute dtype),
        // for candle's fused rotate-half kernel: x1·cos − x2·sin, x2·cos + x1·sin, which is HF's
        // x·cat(cos, cos) + rotate_half(x)·cat(sin, sin) operation for operation.
        let b = positions.len();
        let t = positions[0].len();
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    let a = (p as f32) * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Runs `tokens` ([batch][t], left-padded, `valid` marks real tokens) through the blocks,
    /// appending to `cache`. Returns the final hidden states [b, t, H] and, per `capture` layer,
    /// that block's output: [b, t, H] if `all_positions`, else the last column [b, H].
    fn forward_blocks(
        &self,
        tokens: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
        capture: &[usize],
        all_positions: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let b = tokens.len();
        let t = tokens[0].len();
        // Positions skip padding.
        let mut positions = vec![vec![0usize; t]; b];
        for i in 0..b {
            for j in 0..t {
                positions[i][j] = cache.next_pos[i];
                if valid[i][j] {
                    cache.next_pos[i] += 1;
                }
            }
            cache.key_valid[i].extend_from_slice(&valid[i]);
        }
        let (cos, sin) = self.rope_tables(&positions)?;
        let first_key = self.first_keys(cache)?;
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, (b * t,), &self.device)?;
        self.blocks(
            &ids,
            b,
            t,
            &cos,
            &sin,
            &Attend::Prefill {
                first_key: first_key.as_ref(),
            },
            cache,
            capture,
            all_positions,
        )
    }

    /// The decoder blocks on device tensors: `ids` [b·t] u32, `cos`/`sin` [b, t, hd/2].
    /// Shared by the host-prepared path (prefill, CPU) and the device-resident decoding loop.
    /// Decoding attends over the whole preallocated K/V buffers (keys = capacity): contiguous
    /// buffers go to the kernels without the per-step copies that a narrowed view costs.
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        ids: &Tensor,
        b: usize,
        t: usize,
        cos: &Tensor,
        sin: &Tensor,
        attend: &Attend,
        cache: &mut KvCache,
        capture: &[usize],
        all_positions: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        // The residual stream is kept in f32 whatever the compute dtype: only the projections
        // run in bf16/f16, so rounding does not accumulate over the blocks.
        let mut h = self
            .embed
            .index_select(ids, 0)?
            .reshape((b, t, cfg.hidden_size))?
            .to_dtype(DType::F32)?;
        let mut captured: Vec<Option<Tensor>> = vec![None; capture.len()];
        let scale = 1.0 / (hd as f64).sqrt();
        let prof = profile::enabled();
        let decoding = matches!(attend, Attend::Decode { .. });
        let mut clock = std::time::Instant::now();
        let mut lap = |name: &'static str| -> Result<()> {
            if prof {
                self.device.synchronize()?;
                profile::add(
                    profile::label(decoding, name),
                    clock.elapsed().as_secs_f64(),
                );
                clock = std::time::Instant::now();
            }
            Ok(())
        };
        // The unfused attention's mask, built once per pass if some layer needs it.
        let mut fallback_mask: Option<Tensor> = None;
        let offset = cache.len;
        if offset + t > cache.capacity {
            bail!(
                "KV cache of {} positions is too small for {offset} + {t}",
                cache.capacity
            );
        }
        lap("embed")?;
        for (l, layer) in self.layers.iter().enumerate() {
            let x = self.rms_norm(&h, &layer.ln1)?;
            lap("norm")?;
            let qkv = linear(&x, &layer.qkv)?;
            let fused = crate::cuda_ops::qkv_rope_append(
                &qkv,
                layer.qkv_b.as_ref(),
                cos,
                sin,
                &cache.k[l],
                &cache.v[l],
                offset,
                (nh, nkv, hd),
            )?;
            let q = match fused {
                Some(q) => q,
                None => {
                    let qkv = match &layer.qkv_b {
                        Some(bb) => qkv.broadcast_add(bb)?,
                        None => qkv,
                    };
                    let split = |offset: usize, heads: usize| -> Result<Tensor> {
                        Ok(qkv
                            .narrow(2, offset * hd, heads * hd)?
                            .reshape((b, t, heads, hd))?
                            .transpose(1, 2)?
                            .contiguous()?)
                    };
                    let q = split(0, nh)?;
                    let k = split(nh, nkv)?;
                    let v = split(nh + nkv, nkv)?;
                    let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
                    let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
                    cache.k[l].slice_set(&k, 2, offset)?;
                    cache.v[l].slice_set(&v, 2, offset)?;
                    q
                }
            };
            lap("qkv + rope + kv append")?;
            // The fused kernel reads the whole buffers and needs each row's first key.
            let (first_key, fused_offset) = match attend {
                Attend::Prefill { first_key } => (*first_key, offset),
                Attend::Decode { tables, step } => (Some(&tables.first_key), tables.prompt + step),
            };
            let fused = match first_key {
                Some(fk) => crate::cuda_ops::cached_attention(
                    &q,
                    &cache.k[l],
                    &cache.v[l],
                    fk,
                    fused_offset,
                    scale as f32,
                )?,
                None => None,
            };
            let y = match fused {
                Some(y) => y,
                None => {
                    if fallback_mask.is_none() {
                        fallback_mask = Some(match attend {
                            Attend::Prefill { .. } => self.prefill_mask(cache, t)?,
                            Attend::Decode { tables, step } => {
                                tables.key_mask.broadcast_add(&tables.future.get(*step)?)?
                            }
                        });
                    }
                    let mask = fallback_mask.as_ref().context("attention mask")?;
                    // Decoding: the whole buffers (unused slots masked); prefill: the filled part.
                    let keys = if decoding { cache.capacity } else { offset + t };
                    self.masked_attention(
                        &q,
                        &cache.k[l].narrow(2, 0, keys)?,
                        &cache.v[l].narrow(2, 0, keys)?,
                        mask,
                    )?
                }
            };
            lap("attention")?;
            h = residual(&h, &linear(&y, &layer.o)?)?;
            lap("o proj")?;
            let x2 = self.rms_norm(&h, &layer.ln2)?;
            let g = linear(&x2, &layer.gate)?;
            let u = linear(&x2, &layer.up)?;
            let gu = match crate::cuda_ops::silu_mul(&g, &u)? {
                Some(gu) => gu,
                None => (candle_nn::ops::silu(&g)? * u)?,
            };
            h = residual(&h, &linear(&gu, &layer.down)?)?;
            lap("mlp")?;
            if let Some((sl, vec)) = &self.steering {
                if *sl == l {
                    h = h.broadcast_add(vec)?;
                }
            }
            for (ci, &cl) in capture.iter().enumerate() {
                if cl == l {
                    captured[ci] = Some(if all_positions {
                        h.clone()
                    } else {
                        h.narrow(1, t - 1, 1)?.squeeze(1)?
                    });
                }
            }
        }
        cache.len += t;
        let captured = captured
            .into_iter()
            .map(|c| c.context("captured layer beyond the model's depth"))
            .collect::<Result<_>>()?;
        Ok((h, captured))
    }

    /// Grouped-query attention with candle ops: `q` [b, nh, t, hd], `k`/`v` [b, nkv, keys, hd],
    /// additive `mask` [b, 1, t, keys] (f32). Returns [b, t, nh·hd]. The `rep` query heads of a
    /// KV head (HF repeat_kv order) are stacked along the query axis, so repeated K/V are never
    /// materialised. Scores are rounded to the compute dtype before the f32 softmax, as in HF's
    /// eager attention.
    pub fn masked_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let total = k.dim(2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let att = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let att = att
            .reshape((b, nkv, rep, t, total))?
            .broadcast_add(&mask.unsqueeze(1)?)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?
            .to_dtype(self.dtype)?
            .reshape((b, nkv, rep * t, total))?;
        Ok(att
            .matmul(&v.contiguous()?)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?)
    }

    /// The greedy next token of each row from its last block output [b, H] (final norm,
    /// LM head, argmax on the device).
    fn greedy_next(&self, last: &Tensor) -> Result<Tensor> {
        let clock = std::time::Instant::now();
        let last = self.rms_norm(last, &self.norm)?;
        let logits = last.matmul(&self.lm_head.t()?)?;
        // Argmax over the compute-dtype logits equals argmax over their f32 copy (the cast is
        // exact); the fused kernel skips that copy of [rows, vocab].
        let next = match crate::cuda_ops::argmax_rows(&logits)? {
            Some(next) => next,
            None => logits.to_dtype(DType::F32)?.argmax(D::Minus1)?,
        };
        if profile::enabled() {
            self.device.synchronize()?;
            profile::add("lm head + argmax", clock.elapsed().as_secs_f64());
        }
        Ok(next)
    }

    /// The unfused prefill's additive mask [b, 1, t, keys] for the last `t` cached positions:
    /// causal, padded keys masked (a padded query may see itself so that its softmax stays
    /// finite; its output is never used).
    fn prefill_mask(&self, cache: &KvCache, t: usize) -> Result<Tensor> {
        let b = cache.key_valid.len();
        let total = cache.key_valid.first().map_or(0, |k| k.len());
        let past = total - t;
        let mut mask = vec![0f32; b * t * total];
        for (i, valid) in cache.key_valid.iter().enumerate() {
            for qi in 0..t {
                for (kj, &v) in valid.iter().enumerate() {
                    if !(kj <= past + qi && (v || kj == past + qi)) {
                        mask[(i * t + qi) * total + kj] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(mask, (b, 1, t, total), &self.device)?)
    }

    /// Each row's first real key [b] u32 on the device, when every row's padding is a prefix
    /// of its keys (left padding, as `left_pad` makes it): what the fused attention kernel takes
    /// instead of a mask. `None` otherwise.
    fn first_keys(&self, cache: &KvCache) -> Result<Option<Tensor>> {
        let mut first = Vec::with_capacity(cache.key_valid.len());
        for kv in &cache.key_valid {
            let f = kv.iter().take_while(|v| !**v).count();
            if kv[f..].iter().any(|v| !v) {
                return Ok(None);
            }
            first.push(f as u32);
        }
        let b = first.len();
        Ok(Some(Tensor::from_vec(first, (b,), &self.device)?))
    }

    /// Tables for decoding a batch on the device after its prefill: the key mask (left padding
    /// of the prompts), RoPE cos/sin for every position the batch can reach (computed exactly
    /// like `rope_tables`), and each row's position id at every decoding step. Built once per
    /// batch, so a decoding step moves nothing between host and device.
    pub fn decode_tables(&self, cache: &KvCache, max_new: usize) -> Result<DecodeTables> {
        let b = cache.key_valid.len();
        let prompt = cache.key_valid.first().map(|k| k.len()).unwrap_or(0);
        let cap = cache.capacity;
        if prompt + max_new > cap {
            bail!("KV cache of {cap} positions is too small for {prompt} + {max_new}");
        }
        let mut mask = vec![0f32; b * cap];
        for (i, kv) in cache.key_valid.iter().enumerate() {
            for (j, &v) in kv.iter().enumerate() {
                if !v {
                    mask[i * cap + j] = f32::NEG_INFINITY;
                }
            }
        }
        // Step s may see keys 0..=prompt+s; later slots of the buffer are hidden.
        let mut future = vec![0f32; max_new * cap];
        for step in 0..max_new {
            for j in prompt + step + 1..cap {
                future[step * cap + j] = f32::NEG_INFINITY;
            }
        }
        let max_pos = cache.next_pos.iter().copied().max().unwrap_or(0) + max_new + 1;
        let (cos, sin) = self.rope_tables(&[(0..max_pos).collect()])?;
        let half = self.inv_freq.len();
        let mut positions = Vec::with_capacity(max_new * b);
        for step in 0..max_new {
            for &p in &cache.next_pos {
                positions.push((p + step) as u32);
            }
        }
        let first_key = self
            .first_keys(cache)?
            .context("decoding needs left-padded prompts (padding only before each prompt)")?;
        Ok(DecodeTables {
            first_key,
            prompt,
            key_mask: Tensor::from_vec(mask, (b, 1, 1, cap), &self.device)?,
            future: Tensor::from_vec(future, (max_new, 1, 1, 1, cap), &self.device)?,
            cos: cos.reshape((max_pos, half))?,
            sin: sin.reshape((max_pos, half))?,
            positions: Tensor::from_vec(positions, (max_new, b), &self.device)?,
        })
    }

    /// Decoding step `step` (0-based, after the prefill) with every input and output on the
    /// device: `ids` [b] u32 are the tokens fed now (every row feeds one; rows past their stop
    /// token feed whatever they produced, and callers ignore those rows). Returns the greedy next
    /// tokens [b] u32 (if `want_logits`) and per `capture` layer the block output [b, H] f32.
    pub fn decode_step(
        &self,
        ids: &Tensor,
        step: usize,
        tables: &DecodeTables,
        cache: &mut KvCache,
        capture: &[usize],
        want_logits: bool,
    ) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        let b = ids.dim(0)?;
        let half = self.inv_freq.len();
        let pos = tables.positions.get(step)?;
        let cos = tables.cos.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let sin = tables.sin.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let (h, captured) = self.blocks(
            ids,
            b,
            1,
            &cos,
            &sin,
            &Attend::Decode { tables, step },
            cache,
            capture,
            false,
        )?;
        let captured = captured
            .into_iter()
            .map(|c| Ok(c.to_dtype(DType::F32)?))
            .collect::<Result<_>>()?;
        let next = if want_logits {
            Some(self.greedy_next(&h.squeeze(1)?)?)
        } else {
            None
        };
        Ok((next, captured))
    }

    /// A prefill over host tokens (left-padded, `valid` marks real tokens): the greedy
    /// next tokens if `want_logits` and, per `capture` layer, the last column's block output,
    /// copied to the host.
    pub fn step(
        &self,
        tokens: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
        capture: &[usize],
        want_logits: bool,
    ) -> Result<StepOutput> {
        let t = tokens[0].len();
        let (h, captured) = self.forward_blocks(tokens, valid, cache, capture, false)?;
        let next_tokens = if want_logits {
            Some(
                self.greedy_next(&h.narrow(1, t - 1, 1)?.squeeze(1)?)?
                    .to_vec1::<u32>()?,
            )
        } else {
            None
        };
        let last_hidden = captured
            .iter()
            .map(|c| Ok(c.to_dtype(DType::F32)?.to_vec2()?))
            .collect::<Result<_>>()?;
        Ok(StepOutput {
            next_tokens,
            last_hidden,
        })
    }

    /// Summed next-token cross-entropy (f64) of `tokens[from..]` given everything before them,
    /// for one unpadded sequence: the training loss's numerator for one example (its label
    /// tokens are `tokens[from..]`). Forward only (no gradients).
    pub fn label_cross_entropy(&self, tokens: &[u32], from: usize) -> Result<f64> {
        anyhow::ensure!(
            from >= 1 && from < tokens.len(),
            "labels must start after the first token and before the end"
        );
        let mut cache = self.new_cache(1, tokens.len())?;
        let (h, _) = self.forward_blocks(
            &[tokens.to_vec()],
            &[vec![true; tokens.len()]],
            &mut cache,
            &[],
            true,
        )?;
        // Positions from−1 .. len−2 predict tokens from .. len−1.
        let n = tokens.len() - from;
        let h = h.squeeze(0)?.narrow(0, from - 1, n)?;
        let h = self.rms_norm(&h, &self.norm)?;
        let logits = h.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut total = 0.0f64;
        for (row, &target) in rows.iter().zip(&tokens[from..]) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            total += lse - row[target as usize] as f64;
        }
        Ok(total)
    }

    /// Hidden states of every position at `capture` layers for one unpadded sequence
    /// ([layer][position][hidden]); used for the `templated` Method-B span.
    pub fn all_positions(&self, tokens: &[u32], capture: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut cache = self.new_cache(1, tokens.len())?;
        let (_, captured) = self.forward_blocks(
            &[tokens.to_vec()],
            &[vec![true; tokens.len()]],
            &mut cache,
            capture,
            true,
        )?;
        captured
            .into_iter()
            .map(|c| -> Result<Vec<Vec<f32>>> {
                Ok(c.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()?)
            })
            .collect()
    }
}

fn rope_inv_freq(cfg: &Config, hd: usize) -> Vec<f32> {
    // Computed in f32 exactly as transformers does (base ** (arange(0, d, 2).float() / d)): at
    // position ~400 a one-ulp difference in a frequency already moves activations by ~1e-4.
    let mut inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
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

/// The residual update h (f32) + delta (compute dtype), in f32.
fn residual(h: &Tensor, delta: &Tensor) -> Result<Tensor> {
    match crate::cuda_ops::add_residual(h, delta)? {
        Some(out) => Ok(out),
        None => Ok((h + delta.to_dtype(DType::F32)?)?),
    }
}

/// [b, t, in] x [out, in]ᵀ as one 2-D matmul: candle's broadcast_matmul would run b separate
/// (t x in) products, which for decoding (t = 1) are b slow matrix-vector products.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let o = w.dim(0)?;
    Ok(x.reshape((b * t, i))?.matmul(&w.t()?)?.reshape((b, t, o))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> Model {
        let cfg = Config {
            arch: Arch::Qwen2,
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            vocab_size: 64,
            rms_eps: 1e-6,
            rope_theta: 1e4,
            rope_llama3: None,
            tie_embeddings: false,
            attention_bias: true,
        };
        let w = crate::random::random_weights(&cfg, &Device::Cpu, DType::F32).unwrap();
        Model::new(cfg, w, &Device::Cpu, DType::F32).unwrap()
    }

    #[test]
    fn first_keys_are_the_left_padding_and_other_padding_is_refused_for_decoding() {
        let m = tiny_model();
        let mut cache = m.new_cache(3, 8).unwrap();
        cache.key_valid = vec![
            vec![false, false, true, true],
            vec![true, true, true, true],
            vec![false, true, true, true],
        ];
        let fk = m
            .first_keys(&cache)
            .unwrap()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(fk, vec![2, 0, 1]);
        // Padding after a real token cannot be described by a first key: the fused kernel is not
        // used for such a prefill, and decoding (which needs it) refuses with a message.
        cache.key_valid[1] = vec![true, false, true, true];
        assert!(m.first_keys(&cache).unwrap().is_none());
        let err = m
            .decode_tables(&cache, 2)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("left-padded"), "{err}");
    }

    #[test]
    fn a_pass_beyond_the_cache_capacity_is_an_error() {
        let m = tiny_model();
        let mut cache = m.new_cache(1, 3).unwrap();
        let err = m
            .step(
                &[vec![1, 2, 3, 4]],
                &[vec![true; 4]],
                &mut cache,
                &[0],
                false,
            )
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("too small for 0 + 4"), "{err}");
    }

    #[test]
    fn the_cache_holds_each_pass_at_its_offset() {
        // Prefill 3 tokens, then one more pass of 1: the buffers hold 4 written positions and
        // zeros after them, and the second pass's activations equal a single 4-token prefill's
        // (the KV cache is read back correctly at the offset).
        let m = tiny_model();
        let tokens = vec![5u32, 9, 17, 33];
        let mut cache = m.new_cache(1, 6).unwrap();
        m.step(
            &[tokens[..3].to_vec()],
            &[vec![true; 3]],
            &mut cache,
            &[1],
            false,
        )
        .unwrap();
        let second = m
            .step(&[vec![tokens[3]]], &[vec![true]], &mut cache, &[1], false)
            .unwrap();
        assert_eq!(cache.len, 4);
        let tail = cache.k[0]
            .narrow(2, 4, 2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(tail.to_scalar::<f32>().unwrap(), 0.0);
        let mut whole = m.new_cache(1, 4).unwrap();
        let once = m
            .step(&[tokens.clone()], &[vec![true; 4]], &mut whole, &[1], false)
            .unwrap();
        let (a, b) = (&second.last_hidden[0][0], &once.last_hidden[0][0]);
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 1e-2, "activations too small to compare: {scale}");
        assert!(
            diff < 1e-5 * scale.max(1.0),
            "cached pass differs by {diff} (scale {scale})"
        );
        // And the pass did attend to the cached keys: without them the state differs.
        let mut fresh = m.new_cache(1, 1).unwrap();
        let alone = m
            .step(&[vec![tokens[3]]], &[vec![true]], &mut fresh, &[1], false)
            .unwrap();
        let apart = alone.last_hidden[0][0]
            .iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(apart > 100.0 * diff.max(1e-7), "{apart} vs {diff}");
    }
}
