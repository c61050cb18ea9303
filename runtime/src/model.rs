//! A decoder-only transformer (Qwen2/Qwen2.5, Llama, Qwen3, Gemma 2 and Gemma 3 text) written
//! on candle tensors, because candle-transformers' models cannot return intermediate layers.
//! What each family adds to the Qwen2/Llama block is in `config::Family`; layers that need a
//! family's extras (q/k norms, soft-capping, sliding windows) take candle ops instead of the
//! fused CUDA kernels.
//!
//! Layer convention: layer l = output of decoder block l (0-based), i.e. what a forward hook on
//! `model.layers[l]` sees; the last block is taken before the final norm.
//!
//! Batches are left-padded: every sequence's last prompt token sits in the last column, position
//! ids skip the padding, and padded keys are masked, so a padded row computes what it would alone.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;

pub use crate::config::{Activation, Arch, Config, Family};
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
    /// Norm weights in f32: the norms run on the f32 residual stream (fused kernel). Gemma's
    /// (1 + w) norms hold 1 + w. `ln2` is the norm before the MLP (Gemma's
    /// pre_feedforward_layernorm).
    pub ln1: Tensor,
    pub ln2: Tensor,
    /// Per-head q and k norms over head_dim (Qwen3, Gemma 3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Norms of the attention output and of the MLP output before their residual adds (Gemma).
    pub post_attn_norm: Option<Tensor>,
    pub post_mlp_norm: Option<Tensor>,
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
    /// RoPE inverse frequencies of the first layer's base (all layers' outside Gemma 3).
    pub inv_freq: Vec<f32>,
    /// Every distinct RoPE base's inverse frequencies, and which one each layer uses.
    rope_sets: Vec<Vec<f32>>,
    layer_rope: Vec<usize>,
    /// Gemma's embedding multiplier sqrt(hidden) as a [1] tensor of the compute dtype (HF
    /// multiplies by it in the embeddings' dtype); built once, not per pass.
    embed_scale: Option<Tensor>,
    steering: Option<(usize, Tensor)>,
    /// Whether a block's last residual update also computes the next block's input norm (one
    /// fused kernel on the GPU). Off: each block normalises its own input; the results are the
    /// same bits (a test compares both, steering included).
    pub(crate) norm_into_next_block: bool,
}

/// RoPE cos/sin tables, one per distinct base (`Model::rope_sets`).
type RopeTables = Vec<(Tensor, Tensor)>;

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
    /// Per RoPE base: [positions, head_dim / 2] in the compute dtype.
    cos: Vec<Tensor>,
    sin: Vec<Tensor>,
    /// Per sliding window (`Family::window`): [max_new, 1, 1, 1, capacity] additive, -inf at
    /// the keys step s must not see because they are a window or more behind.
    window_future: Vec<(usize, Tensor)>,
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

    /// The residual update `h + delta` and the RMSNorm of its result with `w`: one fused kernel
    /// on the GPU (bit-identical to the two it replaces), else [`residual`] then
    /// [`Self::rms_norm`].
    fn residual_then_norm(
        &self,
        h: &Tensor,
        delta: &Tensor,
        w: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let eps = self.cfg.rms_eps as f32;
        if let Some(pair) =
            crate::residual_norm::add_residual_rms_norm(h, delta, w, eps, self.dtype)?
        {
            return Ok(pair);
        }
        let h = residual(h, delta)?;
        let x = self.rms_norm(&h, w)?;
        Ok((h, x))
    }

    fn rope_tables(&self, positions: &[Vec<usize>]) -> Result<RopeTables> {
        // [B, T, hd/2] cos/sin of position x inverse frequency (f32, then the compute dtype),
        // for candle's fused rotate-half kernel: x1·cos − x2·sin, x2·cos + x1·sin, which is HF's
        // x·cat(cos, cos) + rotate_half(x)·cat(sin, sin) operation for operation. One pair per
        // distinct RoPE base.
        let b = positions.len();
        let t = positions[0].len();
        self.rope_sets
            .iter()
            .map(|inv_freq| {
                let half = inv_freq.len();
                let mut cos = Vec::with_capacity(b * t * half);
                let mut sin = Vec::with_capacity(b * t * half);
                for row in positions {
                    for &p in row {
                        for &f in inv_freq {
                            let a = (p as f32) * f;
                            cos.push(a.cos());
                            sin.push(a.sin());
                        }
                    }
                }
                let cos =
                    Tensor::from_vec(cos, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
                let sin =
                    Tensor::from_vec(sin, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
                Ok((cos, sin))
            })
            .collect()
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
        // cos/sin per distinct position (t of them at most, not b·t: the trigonometry runs on
        // the host while the device waits), then gathered per token on the device; the same
        // values as computing them per token.
        let max_pos = positions.iter().flatten().copied().max().unwrap_or(0) + 1;
        let pos_ids: Vec<u32> = positions.iter().flatten().map(|&p| p as u32).collect();
        let pos_ids = Tensor::from_vec(pos_ids, (b * t,), &self.device)?;
        let rope = self
            .rope_tables(&[(0..max_pos).collect()])?
            .into_iter()
            .map(|(c, s)| {
                let gather = |x: Tensor| -> Result<Tensor> {
                    let half = x.dim(2)?;
                    Ok(x.reshape((max_pos, half))?
                        .index_select(&pos_ids, 0)?
                        .reshape((b, t, half))?)
                };
                Ok((gather(c)?, gather(s)?))
            })
            .collect::<Result<RopeTables>>()?;
        let first_key = self.first_keys(cache)?;
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, (b * t,), &self.device)?;
        self.blocks(
            &ids,
            b,
            t,
            &rope,
            &Attend::Prefill {
                first_key: first_key.as_ref(),
            },
            cache,
            capture,
            all_positions,
        )
    }

    /// The decoder blocks on device tensors: `ids` [b·t] u32, `rope` per RoPE base cos/sin
    /// [b, t, hd/2].
    /// Shared by the host-prepared path (prefill, CPU) and the device-resident decoding loop.
    /// Decoding attends over the whole preallocated K/V buffers (keys = capacity): contiguous
    /// buffers go to the kernels without the per-step copies that a narrowed view costs.
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        ids: &Tensor,
        b: usize,
        t: usize,
        rope: &[(Tensor, Tensor)],
        attend: &Attend,
        cache: &mut KvCache,
        capture: &[usize],
        all_positions: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let cfg = &self.cfg;
        let fam = &cfg.family;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        // The residual stream is kept in f32 whatever the compute dtype: only the projections
        // run in bf16/f16, so rounding does not accumulate over the blocks.
        let mut emb = self
            .embed
            .index_select(ids, 0)?
            .reshape((b, t, cfg.hidden_size))?;
        if let Some(normalizer) = &self.embed_scale {
            emb = emb.broadcast_mul(normalizer)?;
        }
        let mut h = emb.to_dtype(DType::F32)?;
        let mut captured: Vec<Option<Tensor>> = vec![None; capture.len()];
        let scale = fam.attn_scale;
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
        // The unfused attention's masks, built once per pass and window if some layer needs
        // them (window None = global attention).
        let mut fallback_masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        let offset = cache.len;
        if offset + t > cache.capacity {
            bail!(
                "KV cache of {} positions is too small for {offset} + {t}",
                cache.capacity
            );
        }
        lap("embed")?;
        // The next block's normed input when the previous block's last residual update
        // computed it in the same pass (`residual_then_norm`).
        let mut normed_next: Option<Tensor> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let x = match normed_next.take() {
                Some(x) => x,
                None => self.rms_norm(&h, &layer.ln1)?,
            };
            lap("norm")?;
            let qkv = linear(&x, &layer.qkv)?;
            let (cos, sin) = &rope[self.layer_rope[l]];
            let fused = if fam.fused_qkv() {
                crate::cuda_ops::qkv_rope_append(
                    &qkv,
                    layer.qkv_b.as_ref(),
                    cos,
                    sin,
                    &cache.k[l],
                    &cache.v[l],
                    offset,
                    (nh, nkv, hd),
                )?
            } else {
                None
            };
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
                    let mut q = split(0, nh)?;
                    let mut k = split(nh, nkv)?;
                    let v = split(nh + nkv, nkv)?;
                    // Per-head norms over head_dim, before RoPE (Qwen3, Gemma 3).
                    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                        q = self.rms_norm(&q, qn)?;
                        k = self.rms_norm(&k, kn)?;
                    }
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
            let window = fam.window.get(l).copied().flatten();
            let fused = match first_key.filter(|_| fam.fused_attention(l)) {
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
                    if !fallback_masks.iter().any(|(w, _)| *w == window) {
                        let m = match attend {
                            Attend::Prefill { .. } => self.prefill_mask(cache, t, window)?,
                            Attend::Decode { tables, step } => {
                                let mut m =
                                    tables.key_mask.broadcast_add(&tables.future.get(*step)?)?;
                                if let Some(w) = window {
                                    let wf = tables
                                        .window_future
                                        .iter()
                                        .find(|(x, _)| *x == w)
                                        .context("decoding tables lack a layer's window")?;
                                    m = m.broadcast_add(&wf.1.get(*step)?)?;
                                }
                                m
                            }
                        };
                        fallback_masks.push((window, m));
                    }
                    let mask = &fallback_masks
                        .iter()
                        .find(|(w, _)| *w == window)
                        .context("attention mask")?
                        .1;
                    // Decoding: the whole buffers (unused slots masked); prefill: the filled part.
                    let keys = if decoding { cache.capacity } else { offset + t };
                    self.attention_with(
                        &q,
                        &cache.k[l].narrow(2, 0, keys)?,
                        &cache.v[l].narrow(2, 0, keys)?,
                        mask,
                        scale,
                        fam.attn_softcap,
                    )?
                }
            };
            lap("attention")?;
            let mut a = linear(&y, &layer.o)?;
            if let Some(pn) = &layer.post_attn_norm {
                a = self.rms_norm(&a, pn)?;
            }
            let x2;
            (h, x2) = self.residual_then_norm(&h, &a, &layer.ln2)?;
            lap("o proj")?;
            let g = linear(&x2, &layer.gate)?;
            let u = linear(&x2, &layer.up)?;
            let gu = match fam.activation {
                Activation::Silu => match crate::cuda_ops::silu_mul(&g, &u)? {
                    Some(gu) => gu,
                    None => (candle_nn::ops::silu(&g)? * u)?,
                },
                Activation::GeluTanh => (g.gelu()? * u)?,
            };
            let mut m = linear(&gu, &layer.down)?;
            if let Some(pn) = &layer.post_mlp_norm {
                m = self.rms_norm(&m, pn)?;
            }
            let steered = self.steering.as_ref().filter(|(sl, _)| *sl == l);
            // The next block's norm reads this update, unless a steering vector comes between.
            let fuse_next = self.norm_into_next_block && steered.is_none();
            match self.layers.get(l + 1).filter(|_| fuse_next) {
                Some(next) => {
                    let x_next;
                    (h, x_next) = self.residual_then_norm(&h, &m, &next.ln1)?;
                    normed_next = Some(x_next);
                }
                None => h = residual(&h, &m)?,
            }
            lap("mlp")?;
            if let Some((_, vec)) = steered {
                h = h.broadcast_add(vec)?;
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
        let hd = q.dim(3)?;
        self.attention_with(q, k, v, mask, 1.0 / (hd as f64).sqrt(), None)
    }

    /// [`Self::masked_attention`] with the score scale and Gemma 2's soft-capping (scores =
    /// cap · tanh(scores / cap), in the compute dtype, before the mask, as HF's eager path).
    pub fn attention_with(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        scale: f64,
        softcap: Option<f64>,
    ) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dim(1)?;
        let total = k.dim(2)?;
        let rep = nh / nkv;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        if let Some(cap) = softcap {
            att = ((att / cap)?.tanh()? * cap)?;
        }
        let att = att.to_dtype(DType::F32)?;
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
    /// With a sliding `window`, keys `window` or more columns behind the query are masked too
    /// (left padding only precedes the real tokens, so columns count positions).
    fn prefill_mask(&self, cache: &KvCache, t: usize, window: Option<usize>) -> Result<Tensor> {
        let b = cache.key_valid.len();
        let total = cache.key_valid.first().map_or(0, |k| k.len());
        let past = total - t;
        let mut mask = vec![0f32; b * t * total];
        for (i, valid) in cache.key_valid.iter().enumerate() {
            for qi in 0..t {
                for (kj, &v) in valid.iter().enumerate() {
                    let outside = window.is_some_and(|w| past + qi >= kj + w && kj != past + qi);
                    if !(kj <= past + qi && (v || kj == past + qi)) || outside {
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
        // Sliding windows: step s (query column prompt + s) must not see keys a window or more
        // behind.
        let mut windows: Vec<usize> = self.cfg.family.window.iter().flatten().copied().collect();
        windows.sort_unstable();
        windows.dedup();
        let mut window_future = Vec::new();
        for w in windows {
            let mut m = vec![0f32; max_new * cap];
            for step in 0..max_new {
                let qcol = prompt + step;
                for j in 0..cap.min((qcol + 1).saturating_sub(w)) {
                    m[step * cap + j] = f32::NEG_INFINITY;
                }
            }
            window_future.push((
                w,
                Tensor::from_vec(m, (max_new, 1, 1, 1, cap), &self.device)?,
            ));
        }
        let max_pos = cache.next_pos.iter().copied().max().unwrap_or(0) + max_new + 1;
        let rope = self.rope_tables(&[(0..max_pos).collect()])?;
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
            cos: rope
                .iter()
                .map(|(c, _)| Ok(c.reshape((max_pos, half))?))
                .collect::<Result<_>>()?,
            sin: rope
                .iter()
                .map(|(_, s)| Ok(s.reshape((max_pos, half))?))
                .collect::<Result<_>>()?,
            window_future,
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
        let rope = tables
            .cos
            .iter()
            .zip(&tables.sin)
            .map(|(c, s)| {
                Ok((
                    c.index_select(&pos, 0)?.reshape((b, 1, half))?,
                    s.index_select(&pos, 0)?.reshape((b, 1, half))?,
                ))
            })
            .collect::<Result<RopeTables>>()?;
        let (h, captured) = self.blocks(
            ids,
            b,
            1,
            &rope,
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
        let clock = std::time::Instant::now();
        let (h, captured) = self.forward_blocks(tokens, valid, cache, capture, false)?;
        if profile::host_timing() {
            profile::add("host: queue a prefill pass", clock.elapsed().as_secs_f64());
        }
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
        if profile::host_timing() {
            profile::add("host: a prefill pass, wall", clock.elapsed().as_secs_f64());
        }
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
        let mut logits = h.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        if let Some(cap) = self.cfg.family.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
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

#[path = "model_load.rs"]
mod load;

#[path = "prefill_chunks.rs"]
pub mod prefill_chunks;

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
