//! The training forward pass: the model of `crate::model` with LoRA on its projections, every
//! piece differentiable.
//!
//! candle's fused RmsNorm, RoPE and softmax kernels (and this project's CUDA kernels) have no
//! backward: a gradient through them stops silently (candle issues #2168, #3568, #3569). So
//! the block's pieces (RMSNorm, RoPE, attention, SiLU-gated product, LoRA projection) are
//! autograd nodes of their own (`ops`) whose forward computes operation for operation what
//! Hugging Face's eager Qwen2 does and whose backward is written out; the tests check the
//! gradients against the training oracle and against finite differences.
//!
//! Frozen weights are plain tensors used through `frozen_linear` (whose backward computes the
//! input's gradient only); the LoRA A and B are `Var`s. Sequences are right-padded (as the Trainer's collator does): with a causal mask,
//! no real token attends to a padding token, so padding changes nothing a label sees.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};

use super::adapter::{module_path, TrainableLora, PROJECTIONS};
use super::data::Tokenized;
use super::ops::{
    attention, causal_mask, lora_projection, rms_norm, rope, silu_mul, wide, DropoutMask,
};
use crate::model::Model;

/// LoRA dropout on the adapter's input: the mask of each (micro-batch, module) comes from a
/// stream keyed by the seed, the micro-batch's global index and the module's name, so a run
/// resumed from a checkpoint, and the block recomputed in the backward pass, draw the same
/// masks. Inverted dropout (kept values scaled by 1/(1 − p)) as torch's `nn.Dropout`, with
/// other random numbers. On the CPU the mask is drawn from this project's xoshiro stream; on
/// CUDA it is a hash of (a seed from that stream, element index) that a kernel applies (a 7B
/// model needs over a billion draws per micro-batch): CUDA runs are reproducible on CUDA, but
/// with dropout > 0 a CUDA run and a CPU run draw different masks.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
    /// The micro-batch's index in the whole run.
    pub micro_batch: u64,
}

impl Dropout {
    fn mask(
        &self,
        module: &str,
        shape: (usize, usize),
        device: &Device,
        dtype: DType,
    ) -> Result<DropoutMask> {
        let keep = 1.0 - self.p;
        let mut rng =
            shared::rng::Rng::stream(self.seed, &format!("dropout/{module}"), self.micro_batch);
        if device.is_cuda() {
            return Ok(DropoutMask::Hashed {
                seed: rng.next_u64(),
                p: self.p as f32,
            });
        }
        let n = shape.0 * shape.1;
        // keep with probability `keep`: the top 53 bits below keep · 2^53.
        let threshold = (keep * (1u64 << 53) as f64) as u64;
        let scale = (1.0 / keep) as f32;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if rng.next_u64() >> 11 < threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok(DropoutMask::Tensor(
            Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?,
        ))
    }
}

/// A micro-batch ready for the forward pass.
pub struct MicroBatch {
    /// [b, t] token ids, right-padded with `pad_id` to a multiple of `pad_multiple`.
    ids: Tensor,
    b: usize,
    t: usize,
    /// Flat row indices (i·t + position) of the positions whose next token is a label, and the
    /// label tokens themselves.
    label_rows: Tensor,
    targets: Tensor,
    pub label_tokens: usize,
    /// Real (non-padding) tokens, for tokens/s.
    pub tokens: usize,
}

impl MicroBatch {
    /// The label rows and their targets in chunks of at most `n` rows.
    pub fn label_chunks(&self, n: usize) -> Result<Vec<(Tensor, Tensor)>> {
        (0..self.label_tokens)
            .step_by(n.max(1))
            .map(|s| {
                let len = n.max(1).min(self.label_tokens - s);
                Ok((
                    self.label_rows.narrow(0, s, len)?,
                    self.targets.narrow(0, s, len)?,
                ))
            })
            .collect()
    }

    pub fn new(
        examples: &[&Tokenized],
        pad_id: u32,
        pad_multiple: usize,
        device: &Device,
    ) -> Result<MicroBatch> {
        ensure!(!examples.is_empty(), "an empty micro-batch");
        let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let t = longest.div_ceil(pad_multiple.max(1)) * pad_multiple.max(1);
        let b = examples.len();
        let mut ids = Vec::with_capacity(b * t);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (i, e) in examples.iter().enumerate() {
            ids.extend_from_slice(&e.ids);
            ids.resize((i + 1) * t, pad_id);
            // Position p predicts token p + 1: the labels ids[from..] come from from−1 .. len−2.
            for p in e.labels_from - 1..e.ids.len() - 1 {
                rows.push((i * t + p) as u32);
                targets.push(e.ids[p + 1]);
            }
        }
        let label_tokens = rows.len();
        Ok(MicroBatch {
            ids: Tensor::from_vec(ids, (b * t,), device)?,
            b,
            t,
            label_rows: Tensor::from_vec(rows, (label_tokens,), device)?,
            targets: Tensor::from_vec(targets, (label_tokens, 1), device)?,
            label_tokens,
            tokens: examples.iter().map(|e| e.ids.len()).sum(),
        })
    }
}

/// The summed next-token cross-entropy of the label rows of `logits` [n, vocab] (f32).
fn summed_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(targets, 1)?;
    Ok((log_sum - picked)?.sum_all()?)
}

/// The model with LoRA, in training form.
pub struct TrainForward<'a> {
    pub model: &'a Model,
    pub lora: &'a TrainableLora,
}

impl TrainForward<'_> {
    /// Frozen projection plus, when adapted, scale · B·A·dropout(x). `x` [n, in] in the
    /// activations' dtype; `w` the frozen [out, in] weight in the model's dtype. Returns
    /// [n, out] in the activations' dtype.
    fn projection(
        &self,
        x: &Tensor,
        w: &Tensor,
        layer: usize,
        proj: usize,
        dropout: Option<&Dropout>,
        record: bool,
    ) -> Result<Tensor> {
        let dtype = self.model.dtype;
        let act = x.dtype();
        let Some(pair) = &self.lora.pairs[layer][proj] else {
            return Ok(frozen_linear(&x.to_dtype(dtype)?, w)?.to_dtype(act)?);
        };
        let mask = match dropout {
            Some(d) if d.p > 0.0 => Some(d.mask(
                &module_path(layer, PROJECTIONS[proj]),
                x.dims2()?,
                x.device(),
                act,
            )?),
            _ => None,
        };
        // In the activations' dtype, as PEFT's f32 LoRA weights run under bf16 autocast.
        lora_projection(
            x,
            w,
            pair.a.as_tensor(),
            pair.b.as_tensor(),
            mask,
            self.lora.shape.scale(),
            record,
        )
    }

    /// cos and sin [t, hd] of positions 0..t (right padding: positions are plain indices).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let freqs = &self.model.inv_freq;
        let hd = freqs.len() * 2;
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
        for p in 0..t {
            for _half in 0..2 {
                for &f in freqs {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let (dev, act) = (&self.model.device, self.act_dtype());
        Ok((
            Tensor::from_vec(cos, (t, hd), dev)?.to_dtype(act)?,
            Tensor::from_vec(sin, (t, hd), dev)?.to_dtype(act)?,
        ))
    }

    /// The activations' dtype: the model's when it computes in half precision (bf16 on a GPU:
    /// HF's bf16 training, where autocast runs the f32 LoRA weights in bf16 too; norms, softmax
    /// and the loss are widened to f32), else the LoRA dtype (f32; f64 in the finite-difference
    /// test).
    fn act_dtype(&self) -> DType {
        match self.model.dtype {
            DType::BF16 | DType::F16 => self.model.dtype,
            _ => self.lora.dtype(),
        }
    }

    /// The per-pass constants of a micro-batch: rotary tables and the causal mask.
    pub fn prepare(&self, mb: &MicroBatch) -> Result<PassConstants> {
        let t = mb.t;
        let (cos, sin) = self.rope_tables(t)?;
        let mask = causal_mask(t, &self.model.device)?.to_dtype(wide(self.act_dtype()))?;
        Ok(PassConstants {
            cos,
            sin,
            mask,
            b: mb.b,
            t,
        })
    }

    /// The embeddings of the micro-batch's tokens, [b·t, hidden], in the activations' dtype.
    pub fn embed(&self, mb: &MicroBatch) -> Result<Tensor> {
        Ok(self
            .model
            .embed
            .index_select(&mb.ids, 0)?
            .to_dtype(self.act_dtype())?
            .reshape((mb.b * mb.t, self.model.cfg.hidden_size))?)
    }

    /// Decoder block `l` on the residual stream `h` [b·t, hidden], its autograd graph recorded
    /// (the LoRA variables' gradients reach it).
    pub fn block(
        &self,
        l: usize,
        h: &Tensor,
        pass: &PassConstants,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        self.block_with(l, h, pass, dropout, true)
    }

    /// The same values as `block` with no graph recorded: the checkpointed first pass, whose
    /// outputs are detached anyway (no node, no stashed copies, no kept activations).
    pub fn block_values(
        &self,
        l: usize,
        h: &Tensor,
        pass: &PassConstants,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        self.block_with(l, &h.detach(), pass, dropout, false)
    }

    fn block_with(
        &self,
        l: usize,
        h: &Tensor,
        pass: &PassConstants,
        dropout: Option<&Dropout>,
        record: bool,
    ) -> Result<Tensor> {
        let m = self.model;
        let cfg = &m.cfg;
        let layer = &m.layers[l];
        let (b, t) = (pass.b, pass.t);
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let rep = nh / nkv;
        let act = self.act_dtype();
        let scale = 1.0 / (hd as f64).sqrt();
        let (q_rows, kv_rows) = (nh * hd, nkv * hd);
        let x = rms_norm(h, &layer.ln1, cfg.rms_eps)?;
        let bias = |offset: usize, len: usize, y: Tensor| -> Result<Tensor> {
            Ok(match &layer.qkv_b {
                Some(bias) => y.broadcast_add(&bias.narrow(0, offset, len)?.to_dtype(act)?)?,
                None => y,
            })
        };
        let wq = layer.qkv.narrow(0, 0, q_rows)?;
        let wk = layer.qkv.narrow(0, q_rows, kv_rows)?;
        let wv = layer.qkv.narrow(0, q_rows + kv_rows, kv_rows)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(
            bias(0, q_rows, self.projection(&x, &wq, l, 0, dropout, record)?)?,
            nh,
        )?;
        let k = heads(
            bias(
                q_rows,
                kv_rows,
                self.projection(&x, &wk, l, 1, dropout, record)?,
            )?,
            nkv,
        )?;
        let v = heads(
            bias(
                q_rows + kv_rows,
                kv_rows,
                self.projection(&x, &wv, l, 2, dropout, record)?,
            )?,
            nkv,
        )?;
        let q = rope(&q, &pass.cos, &pass.sin)?;
        let k = rope(&k, &pass.cos, &pass.sin)?;
        // The `rep` query heads of a KV head (HF repeat_kv order) stacked along the query
        // axis, so repeated keys and values are never materialised.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let y = attention(&q, &k, &v, &pass.mask, scale)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        let h = (h + self.projection(&y, &layer.o, l, 3, dropout, record)?)?;
        let x2 = rms_norm(&h, &layer.ln2, cfg.rms_eps)?;
        let g = self.projection(&x2, &layer.gate, l, 4, dropout, record)?;
        let u = self.projection(&x2, &layer.up, l, 5, dropout, record)?;
        let gu = silu_mul(&g, &u)?;
        Ok((h + self.projection(&gu, &layer.down, l, 6, dropout, record)?)?)
    }

    /// The summed cross-entropy of the label tokens given the last block's output `h`.
    pub fn head_loss(&self, h: &Tensor, mb: &MicroBatch) -> Result<Tensor> {
        self.head_loss_rows(h, &mb.label_rows, &mb.targets)
    }

    /// The summed cross-entropy of the label rows `rows` (flat indices into `h`) with their
    /// next tokens `targets` [rows, 1].
    pub fn head_loss_rows(&self, h: &Tensor, rows: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let m = self.model;
        // Only the label positions need logits: [labels, hidden] → [labels, vocab].
        let h = h.index_select(rows, 0)?;
        let h = rms_norm(&h, &m.norm, m.cfg.rms_eps)?;
        let logits =
            frozen_linear(&h.to_dtype(m.dtype)?, &m.lm_head)?.to_dtype(self.lora.dtype())?;
        summed_cross_entropy(&logits, targets)
    }

    /// The summed cross-entropy of the micro-batch's label tokens with the whole graph kept (a
    /// scalar whose gradient reaches the LoRA variables). Training recomputes block by block
    /// instead (`trainer`); this is the same function in one piece.
    pub fn summed_label_loss(&self, mb: &MicroBatch, dropout: Option<&Dropout>) -> Result<Tensor> {
        let pass = self.prepare(mb)?;
        let mut h = self.embed(mb)?;
        for l in 0..self.model.layers.len() {
            h = self.block(l, &h, &pass, dropout)?;
        }
        self.head_loss(&h, mb)
    }
}

/// What every block of one micro-batch's pass shares.
pub struct PassConstants {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    b: usize,
    t: usize,
}

/// y = x·Wᵀ for a frozen W with a backward pass for x alone. candle's matmul backward also
/// computes (and keeps until the pass ends) the gradient of every frozen weight: for a 7B model
/// a model-sized tensor per micro-batch and a third more backward work. Here the product is
/// computed on the detached input, and a custom op hands that result on (one copy of the
/// output) with backward grad·W.
struct FrozenLinear {
    w: Tensor,
    y: Tensor,
}

impl FrozenLinear {
    fn result<S: candle_core::backend::BackendStorage>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, candle_core::Shape)> {
        let (storage, layout) = self.y.storage_and_layout();
        match pick(&storage) {
            Some(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            None => candle_core::bail!("frozen-linear: input and weight on different devices"),
        }
    }
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        self.result(|s| match s {
            candle_core::Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// x [n, in] · Wᵀ ([out, in], frozen), differentiable in x only.
fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.detach().matmul(&w.t()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    // The copy needs y contiguous from offset 0 (a fresh matmul output is).
    let y = y.contiguous()?;
    Ok(x.apply_op1(FrozenLinear { w: w.clone(), y })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_one_minus_p_scaled_and_is_keyed() {
        let d = Dropout {
            p: 0.25,
            seed: 42,
            micro_batch: 3,
        };
        let mask = |d: &Dropout, module: &str| -> Vec<f32> {
            let DropoutMask::Tensor(m) = d
                .mask(module, (100, 100), &Device::Cpu, DType::F32)
                .unwrap()
            else {
                panic!("a tensor mask on the CPU")
            };
            m.flatten_all().unwrap().to_vec1().unwrap()
        };
        let m = mask(&d, "model.layers.0.self_attn.q_proj");
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        // 10,000 Bernoulli(0.75) draws: sd 0.0043.
        assert!((kept - 0.75).abs() < 0.02, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(m, mask(&d, "model.layers.0.self_attn.q_proj"));
        assert_ne!(m, mask(&d, "model.layers.0.self_attn.k_proj"));
        let next = Dropout {
            micro_batch: 4,
            ..d
        };
        assert_ne!(m, mask(&next, "model.layers.0.self_attn.q_proj"));
    }
}
