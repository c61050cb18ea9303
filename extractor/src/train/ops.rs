//! The training block's pieces as single autograd nodes with hand-written backward passes:
//! RMSNorm, RoPE, causal attention, SiLU-gated product and the LoRA projection.
//!
//! Why: composed from candle primitives, one block was ~140 graph nodes, and candle's backward
//! spent a zero-fill and an add on every gradient it accumulated (`or_insert` + `add`; the
//! vendored candle-core now stores the first one as it is, vendor/README.md), plus a cast or
//! broadcast per primitive. On the 7B benchmark that made elementwise kernels ~75% of
//! the GPU time of a micro-batch (Nsight Compute, docs/benchmarks.md) while the matrix products
//! were ~15%. As nodes of their own, a block is ~30 nodes and each backward is the textbook
//! formula in a few products. The forward is computed with plain tensor ops on detached inputs
//! (as HF computes it, same dtypes and roundings) and handed to the node (one copy of the
//! output); the backward uses what the forward kept. Each op's gradient is tested against
//! candle's autograd of the composed form (f64, tests below) and the whole pass against the
//! training oracle and finite differences (tests/train_oracle.rs).

use anyhow::{ensure, Context, Result};
use candle_core::{backend::BackendStorage, CustomOp1, CustomOp2, CustomOp3, DType, Tensor, D};

/// At least f32: where half-precision activations are widened (norms, softmax).
pub fn wide(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The causal mask [t, t] (f32): 0 on and below the diagonal, −∞ above (query i sees keys
/// 0..=i; right padding needs no other mask).
pub fn causal_mask(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}

/// The storage of an already computed result `y` (a fresh, contiguous tensor: the output of a
/// product or an elementwise op), for a custom op's forward: one copy.
fn stashed<S: BackendStorage>(
    y: &Tensor,
    pick: impl Fn(&candle_core::Storage) -> Option<&S>,
) -> candle_core::Result<(S, candle_core::Shape)> {
    let (storage, layout) = y.storage_and_layout();
    match pick(&storage) {
        Some(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
        None => candle_core::bail!("training op: inputs on different devices"),
    }
}

fn cpu(s: &candle_core::Storage) -> Option<&candle_core::CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Some(c),
        _ => None,
    }
}

fn cuda(s: &candle_core::Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        candle_core::Storage::Cuda(c) => Some(c),
        _ => None,
    }
}

use candle_core::{CpuStorage as Cs, CudaStorage as Gs, Layout as L, Shape};
type R<S> = candle_core::Result<(S, Shape)>;

/// The forward of an op whose result was computed beforehand (`self.y`).
macro_rules! stashed_forward {
    (1) => {
        fn cpu_fwd(&self, _: &Cs, _: &L) -> R<Cs> {
            stashed(&self.y, cpu)
        }
        fn cuda_fwd(&self, _: &Gs, _: &L) -> R<Gs> {
            stashed(&self.y, cuda)
        }
    };
    (2) => {
        fn cpu_fwd(&self, _: &Cs, _: &L, _: &Cs, _: &L) -> R<Cs> {
            stashed(&self.y, cpu)
        }
        fn cuda_fwd(&self, _: &Gs, _: &L, _: &Gs, _: &L) -> R<Gs> {
            stashed(&self.y, cuda)
        }
    };
    (3) => {
        fn cpu_fwd(&self, _: &Cs, _: &L, _: &Cs, _: &L, _: &Cs, _: &L) -> R<Cs> {
            stashed(&self.y, cpu)
        }
        fn cuda_fwd(&self, _: &Gs, _: &L, _: &Gs, _: &L, _: &Gs, _: &L) -> R<Gs> {
            stashed(&self.y, cuda)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = (x·rsqrt(mean(x²) + eps)) rounded to x's dtype, times w (frozen).

struct RmsNorm {
    w: Tensor,
    /// rsqrt(mean(x²) + eps) per row, in the wide dtype.
    inv: Tensor,
    y: Tensor,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }
    stashed_forward!(1);

    fn bwd(&self, x: &Tensor, _: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // With x̂ = x·inv and g = gy·w: dx = inv·(g − x̂·mean(g·x̂)), in the wide dtype.
        let dtype = x.dtype();
        let wd = wide(dtype);
        let g = gy.broadcast_mul(&self.w.to_dtype(dtype)?)?.to_dtype(wd)?;
        let xhat = x.to_dtype(wd)?.broadcast_mul(&self.inv)?;
        let dot = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (g - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&self.inv)?;
        Ok(Some(dx.to_dtype(dtype)?))
    }
}

/// RMSNorm as HF computes it: in at least f32, x · rsqrt(mean(x²) + eps), rounded back to the
/// input's dtype, times w (frozen).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.detach().to_dtype(wide(dtype))?;
    let inv = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let y = xf
        .broadcast_mul(&inv)?
        .to_dtype(dtype)?
        .broadcast_mul(&w.to_dtype(dtype)?)?;
    if !x.track_op() {
        return Ok(y);
    }
    let op = RmsNorm {
        w: w.clone(),
        inv,
        y: y.contiguous()?,
    };
    Ok(x.apply_op1(op)?)
}

// ---------------------------------------------------------------------------------------------
// RoPE: y = x·cos + rotate_half(x)·sin, rotate_half(x) = cat(−x₂, x₁).

struct Rope {
    cos: Tensor,
    sin: Tensor,
    y: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "train-rope"
    }
    stashed_forward!(1);

    fn bwd(&self, _: &Tensor, _: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = g·cos + rotate_halfᵀ(g·sin), rotate_halfᵀ(z) = cat(z₂, −z₁).
        let hd = gy.dim(D::Minus1)?;
        let zs = gy.broadcast_mul(&self.sin)?;
        let z1 = zs.narrow(D::Minus1, 0, hd / 2)?;
        let z2 = zs.narrow(D::Minus1, hd / 2, hd / 2)?;
        let back = Tensor::cat(&[&z2, &z1.neg()?], D::Minus1)?;
        Ok(Some((gy.broadcast_mul(&self.cos)? + back)?))
    }
}

/// HF's rotary embedding with cos/sin [t, hd] (halves repeated), on x [.., t, hd].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let xd = x.detach();
    let hd = xd.dim(D::Minus1)?;
    let x1 = xd.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = xd.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let y = (xd.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    if !x.track_op() {
        return Ok(y);
    }
    let op = Rope {
        cos: cos.clone(),
        sin: sin.clone(),
        y: y.contiguous()?,
    };
    Ok(x.apply_op1(op)?)
}

// ---------------------------------------------------------------------------------------------
// SiLU-gated product: y = silu(g)·u.

struct SiluMul {
    y: Tensor,
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "train-silu-mul"
    }
    stashed_forward!(2);

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if let Some((dg, du)) = runtime::train_kernels::silu_mul_backward(g, u, gy).map_err(ext)? {
            return Ok((Some(dg), Some(du)));
        }
        // σ = sigmoid(g): d silu/dg = σ·(1 + g·(1 − σ)). In the wide dtype, then rounded.
        let dtype = g.dtype();
        let wd = wide(dtype);
        let (gw, uw, gyw) = (g.to_dtype(wd)?, u.to_dtype(wd)?, gy.to_dtype(wd)?);
        let sig = candle_nn::ops::sigmoid(&gw)?;
        let dsilu = (&sig * ((&gw * (1.0 - &sig)?)? + 1.0)?)?;
        let du = (&gyw * (&gw * &sig)?)?;
        let dg = ((&gyw * &uw)? * dsilu)?;
        Ok((Some(dg.to_dtype(dtype)?), Some(du.to_dtype(dtype)?)))
    }
}

/// silu(g)·u as HF's MLP computes it (in the activations' dtype).
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    // The decoding pass's fused kernel computes the same roundings (silu in T, then × u).
    let y = match runtime::cuda_ops::silu_mul(&g.detach(), &u.detach())? {
        Some(y) => y,
        None => (g.detach().silu()? * u.detach())?,
    };
    if !g.track_op() && !u.track_op() {
        return Ok(y);
    }
    Ok(g.apply_op2(u, SiluMul { y: y.contiguous()? })?)
}

// ---------------------------------------------------------------------------------------------
// Causal attention core on grouped heads: q [b, kv, rep·t, hd] (the rep query heads of a KV
// head stacked), k and v [b, kv, t, hd]; softmax in the wide dtype with the additive mask
// [t, t]; output [b, kv, rep·t, hd].

struct Attention {
    /// Softmax probabilities [b, kv, rep·t, t], wide dtype.
    probs: Tensor,
    scale: f64,
    y: Tensor,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "train-attention"
    }
    stashed_forward!(3);

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let act = q.dtype();
        let p_act = self.probs.to_dtype(act)?;
        // y = P·v: dv = Pᵀ·gy, dP = gy·vᵀ.
        let dv = p_act.t()?.matmul(gy)?;
        let dp = gy.matmul(&v.t()?)?;
        // Softmax: dS = scale·P·(dP − rowsum(dP·P)); scores = scale·q·kᵀ.
        let ds = match runtime::train_kernels::softmax_backward(&self.probs, &dp, self.scale as f32)
            .map_err(ext)?
        {
            Some(ds) => ds,
            None => {
                let dp = dp.to_dtype(self.probs.dtype())?;
                let rowdot = (&dp * &self.probs)?.sum_keepdim(D::Minus1)?;
                ((dp.broadcast_sub(&rowdot)? * &self.probs)? * self.scale)?.to_dtype(act)?
            }
        };
        let dq = ds.matmul(k)?;
        let dk = ds.t()?.matmul(q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// softmax(scale·q·kᵀ + mask)·v as HF's eager attention computes it (scores rounded to the
/// activations' dtype before the softmax, which runs in the wide dtype; probabilities rounded
/// back before the product with v).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, nkv, rows, _hd) = q.dims4()?;
    let t = k.dim(2)?;
    let rep = rows / t;
    let act = q.dtype();
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let raw = qd.matmul(&kd.t()?)?;
    // On CUDA one kernel does the scale, the causal mask and the softmax (`mask` is the causal
    // mask, which it builds itself: right padding needs no other).
    let probs = match runtime::train_kernels::causal_softmax(&raw, t, scale as f32)? {
        Some(p) => p,
        None => {
            let scores = (raw * scale)?
                .to_dtype(wide(act))?
                .reshape((b, nkv, rep, t, t))?
                .broadcast_add(mask)?;
            let m = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&m)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
                .reshape((b, nkv, rows, t))?
        }
    };
    let y = probs.to_dtype(act)?.matmul(&vd)?;
    if !q.track_op() && !k.track_op() && !v.track_op() {
        return Ok(y);
    }
    let op = Attention {
        probs,
        scale,
        y: y.contiguous()?,
    };
    Ok(q.apply_op3(k, v, op)?)
}

// ---------------------------------------------------------------------------------------------
// A frozen projection with LoRA: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ, x [n, in] in the activations'
// dtype, W [out, in] frozen (model dtype), A [r, in] and B [out, r] the trainable variables
// (LoRA dtype, used in the activations' dtype as under autocast).

struct LoraProjection {
    w: Tensor,
    /// A and B in the activations' dtype.
    a: Tensor,
    b: Tensor,
    /// drop(x) and drop(x)·Aᵀ, kept for dA and dB.
    x_drop: Tensor,
    mid: Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
    y: Tensor,
}

/// LoRA dropout's mask: a tensor (CPU: drawn from this project's stream, kept values already
/// scaled by 1/(1 − p)), or on CUDA a seed whose hashed mask a kernel applies and re-applies in
/// the backward without storing it.
#[derive(Clone, Debug)]
pub enum DropoutMask {
    Tensor(Tensor),
    Hashed { seed: u64, p: f32 },
}

impl DropoutMask {
    /// x ⊙ mask.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            DropoutMask::Tensor(m) => Ok((x * m)?),
            DropoutMask::Hashed { seed, p } => runtime::train_kernels::dropout(x, *seed, *p)?
                .ok_or_else(|| anyhow::anyhow!("hashed dropout needs a CUDA tensor")),
        }
    }
}

/// An anyhow error inside a candle op's backward.
fn ext(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}

impl CustomOp3 for LoraProjection {
    fn name(&self) -> &'static str {
        "train-lora-projection"
    }
    stashed_forward!(3);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let act = x.dtype();
        let model = self.w.dtype();
        // Through the frozen weight: gy·W.
        let mut dx = gy.to_dtype(model)?.matmul(&self.w)?.to_dtype(act)?;
        // Through the adapter: g_mid = s·gy·B [n, r].
        let g_mid = (gy.matmul(&self.b)? * self.scale)?;
        let dx_drop = g_mid.matmul(&self.a)?;
        dx = match &self.mask {
            Some(m) => (dx + m.apply(&dx_drop).map_err(ext)?)?,
            None => (dx + dx_drop)?,
        };
        let da = g_mid.t()?.matmul(&self.x_drop)?.to_dtype(a.dtype())?;
        let db = (gy.t()?.matmul(&self.mid)? * self.scale)?.to_dtype(b.dtype())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// y = x·Wᵀ + scale·(drop(x)·Aᵀ)·Bᵀ (`mask` = the dropout mask, kept values already scaled by
/// 1/(1 − p); None without dropout), differentiable in x, A and B when `record` (else the
/// values only: A and B are variables, so without the flag every pass would build a node).
pub fn lora_projection(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    mask: Option<DropoutMask>,
    scale: f64,
    record: bool,
) -> Result<Tensor> {
    let act = x.dtype();
    let xd = x.detach();
    let base = xd.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(act)?;
    let x_drop = match &mask {
        Some(m) => m.apply(&xd)?,
        None => xd.clone(),
    };
    let (a_act, b_act) = (a.detach().to_dtype(act)?, b.detach().to_dtype(act)?);
    let mid = x_drop.matmul(&a_act.t()?)?;
    let y = (base + (mid.matmul(&b_act.t()?)? * scale)?)?;
    if !record {
        return Ok(y);
    }
    let op = LoraProjection {
        w: w.clone(),
        a: a_act,
        b: b_act,
        x_drop,
        mid,
        mask,
        scale,
        y: y.contiguous()?,
    };
    Ok(x.apply_op3(a, b, op)?)
}

/// On a CUDA device: checks the training kernels (runtime::train_kernels) against the candle
/// ops they replace, on random data, in f32 and bf16, before any training step; fails naming
/// the kernel. Returns a one-line summary (None on other devices).
pub fn check_cuda_kernels(device: &candle_core::Device) -> Result<Option<String>> {
    use runtime::train_kernels as k;
    if !device.is_cuda() {
        return Ok(None);
    }
    let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
        let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
        let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / b
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            .max(f32::MIN_POSITIVE))
    };
    let mut worst = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let rnd = |shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)
        };
        let (b, nkv, rep, t) = (2usize, 2usize, 3usize, 37usize);
        let scale = 0.37;
        // Causal softmax and its backward.
        let raw = (rnd(&[b, nkv, rep * t, t])? * 4.0)?;
        let mask = causal_mask(t, device)?;
        let scores = (&raw * scale)?
            .to_dtype(DType::F32)?
            .reshape((b, nkv, rep, t, t))?
            .broadcast_add(&mask)?;
        let m = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&m)?.exp()?;
        let want = e
            .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
            .reshape((b, nkv, rep * t, t))?;
        let got = k::causal_softmax(&raw, t, scale as f32)?.context("causal_softmax")?;
        let err = rel(&got, &want)?;
        ensure!(
            err <= tol,
            "causal_softmax kernel ({dtype:?}) differs from candle's: {err:e}"
        );
        worst.push(err);
        let dp = rnd(&[b, nkv, rep * t, t])?;
        let dpf = dp.to_dtype(DType::F32)?;
        let rowdot = (&dpf * &want)?.sum_keepdim(D::Minus1)?;
        let want_ds = ((dpf.broadcast_sub(&rowdot)? * &want)? * scale)?.to_dtype(dtype)?;
        let got_ds = k::softmax_backward(&want, &dp, scale as f32)?.context("softmax_backward")?;
        let err = rel(&got_ds, &want_ds)?;
        ensure!(
            err <= tol,
            "softmax_backward kernel ({dtype:?}) differs from candle's: {err:e}"
        );
        worst.push(err);
        // silu·mul backward.
        let (g, u, gy) = (
            (rnd(&[64, 300])? * 3.0)?,
            rnd(&[64, 300])?,
            rnd(&[64, 300])?,
        );
        let (gw, uw, gyw) = (
            g.to_dtype(DType::F32)?,
            u.to_dtype(DType::F32)?,
            gy.to_dtype(DType::F32)?,
        );
        let sig = candle_nn::ops::sigmoid(&gw)?;
        let dsilu = (&sig * ((&gw * (1.0 - &sig)?)? + 1.0)?)?;
        let want_du = (&gyw * (&gw * &sig)?)?;
        let want_dg = ((&gyw * &uw)? * dsilu)?;
        let (dg, du) = k::silu_mul_backward(&g, &u, &gy)?.context("silu_mul_backward")?;
        for (what, got, want) in [("dg", &dg, &want_dg), ("du", &du, &want_du)] {
            let err = rel(got, want)?;
            ensure!(
                err <= tol,
                "silu_mul_backward kernel ({dtype:?}, {what}) differs: {err:e}"
            );
            worst.push(err);
        }
        // Hashed dropout: a keep fraction of 1 − p, kept values scaled by 1/(1 − p), the same
        // mask for the same seed (so the backward re-applies the forward's), another for another.
        let ones = Tensor::ones((1000, 100), dtype, device)?;
        let mask = k::dropout(&ones, 7, 0.25)?.context("dropout")?;
        let v: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
        ensure!(
            (kept - 0.75).abs() < 0.01
                && v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-2),
            "dropout kernel ({dtype:?}): kept {kept}, values not 0 or 1/(1 - p)"
        );
        let x = rnd(&[1000, 100])?;
        let err = rel(
            &k::dropout(&x, 7, 0.25)?.context("dropout")?,
            &(&x * &mask)?,
        )?;
        ensure!(
            err <= tol,
            "dropout kernel ({dtype:?}) is not the same mask for the same seed"
        );
        let other = k::dropout(&ones, 8, 0.25)?.context("dropout")?;
        ensure!(
            rel(&other, &mask)? > 0.1,
            "dropout kernel: seeds 7 and 8 give the same mask"
        );
    }
    // The fused AdamW step against the candle ops it replaces: the same bits, clipped or not,
    // over three steps (bias corrections change with the step).
    for clip in [1.0, 0.37] {
        let shape = [97usize, 131];
        let p0 = Tensor::randn(0f32, 1.0, &shape[..], device)?;
        let cfg = super::optim::AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let grads = (0..3)
            .map(|step| Ok(Tensor::randn(0f32, 1.0 + step as f32, &shape[..], device)?))
            .collect::<Result<Vec<_>>>()?;
        let mut finals = Vec::new();
        for fused in [false, true] {
            let p = candle_core::Var::from_tensor(&p0)?;
            let mut adam = super::optim::AdamW::new(cfg, &[&p])?;
            for g in &grads {
                adam.step_with(&[&p], std::slice::from_ref(g), clip, 1e-3, fused)?;
            }
            finals.push([
                p.as_tensor().clone(),
                adam.m[0].as_tensor().clone(),
                adam.v[0].as_tensor().clone(),
            ]);
        }
        for (what, (a, b)) in ["p", "m", "v"].iter().zip(finals[0].iter().zip(&finals[1])) {
            let (a, b): (Vec<f32>, Vec<f32>) =
                (a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?);
            let differ = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            ensure!(
                differ == 0,
                "fused AdamW kernel (clip {clip}): {differ} of {} elements of {what} differ from candle's ops",
                a.len()
            );
        }
    }
    let max = worst.iter().cloned().fold(0f32, f32::max);
    Ok(Some(format!(
        "training kernels checked against candle's ops on this GPU (f32, bf16): worst relative error {max:.1e}; fused AdamW bit-identical"
    )))
}

#[cfg(test)]
mod tests {
    //! Each op's gradients against candle's autograd of the same function composed from
    //! primitives (f64, CPU): the composed forms are the previous training pass.
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = shared::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// max |a − b| / max |b|.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f64>().unwrap() / m.to_scalar::<f64>().unwrap().max(1e-300)
    }

    /// Gradients of Σ y·probe w.r.t. `vars`, for y = f(vars).
    fn grads(vars: &[&Var], y: &Tensor, probe: &Tensor) -> Vec<Tensor> {
        let loss = (y * probe).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    fn check(name: &str, got: &[Tensor], want: &[Tensor], y: (&Tensor, &Tensor)) {
        assert!(rel(y.0, y.1) < 1e-12, "{name}: forward differs");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let e = rel(g, w);
            assert!(e < 1e-10, "{name}: gradient {i} differs by {e:e}");
        }
    }

    #[test]
    fn rms_norm_rope_silu_mul_gradients_equal_autograd() {
        let x = Var::from_tensor(&randn(&[6, 8], 1)).unwrap();
        let w = (randn(&[8], 2) + 1.0).unwrap();
        let probe = randn(&[6, 8], 3);
        let mine = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
        let g1 = grads(&[&x], &mine, &probe);
        let xs = x.as_tensor();
        let inv = (xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        let composed = xs.broadcast_mul(&inv).unwrap().broadcast_mul(&w).unwrap();
        let g2 = grads(&[&x], &composed, &probe);
        check("rms_norm", &g1, &g2, (&mine, &composed));

        let x = Var::from_tensor(&randn(&[2, 3, 5, 8], 4)).unwrap();
        let (cos, sin) = (randn(&[5, 8], 5), randn(&[5, 8], 6));
        let probe = randn(&[2, 3, 5, 8], 7);
        let mine = rope(x.as_tensor(), &cos, &sin).unwrap();
        let g1 = grads(&[&x], &mine, &probe);
        let xs = x.as_tensor();
        let rotated = Tensor::cat(
            &[
                &xs.narrow(3, 4, 4).unwrap().neg().unwrap(),
                &xs.narrow(3, 0, 4).unwrap(),
            ],
            3,
        )
        .unwrap();
        let composed =
            (xs.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap();
        let g2 = grads(&[&x], &composed, &probe);
        check("rope", &g1, &g2, (&mine, &composed));

        let g = Var::from_tensor(&(randn(&[4, 6], 8) * 3.0).unwrap()).unwrap();
        let u = Var::from_tensor(&randn(&[4, 6], 9)).unwrap();
        let probe = randn(&[4, 6], 10);
        let mine = silu_mul(g.as_tensor(), u.as_tensor()).unwrap();
        let g1 = grads(&[&g, &u], &mine, &probe);
        let composed = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        let g2 = grads(&[&g, &u], &composed, &probe);
        check("silu_mul", &g1, &g2, (&mine, &composed));
    }

    #[test]
    fn attention_gradients_equal_autograd() {
        // 2 KV heads of 3 query heads each, t = 5, hd = 4, causal mask.
        let (b, nkv, rep, t, hd) = (2, 2, 3, 5, 4);
        let q = Var::from_tensor(&randn(&[b, nkv, rep * t, hd], 11)).unwrap();
        let k = Var::from_tensor(&randn(&[b, nkv, t, hd], 12)).unwrap();
        let v = Var::from_tensor(&randn(&[b, nkv, t, hd], 13)).unwrap();
        let mask = causal_mask(t, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let probe = randn(&[b, nkv, rep * t, hd], 14);
        let scale = 0.5;
        let mine = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale).unwrap();
        let g1 = grads(&[&q, &k, &v], &mine, &probe);
        let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale)
            .unwrap()
            .reshape((b, nkv, rep, t, t))
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let m = scores.max_keepdim(D::Minus1).unwrap().detach();
        let e = scores.broadcast_sub(&m).unwrap().exp().unwrap();
        let probs = e
            .broadcast_div(&e.sum_keepdim(D::Minus1).unwrap())
            .unwrap()
            .reshape((b, nkv, rep * t, t))
            .unwrap();
        let composed = probs.matmul(v.as_tensor()).unwrap();
        let g2 = grads(&[&q, &k, &v], &composed, &probe);
        check("attention", &g1, &g2, (&mine, &composed));
    }

    #[test]
    fn lora_projection_gradients_equal_autograd_with_and_without_dropout() {
        let (n, inp, out, r) = (7, 6, 5, 3);
        let w = randn(&[out, inp], 21);
        let x = Var::from_tensor(&randn(&[n, inp], 22)).unwrap();
        let a = Var::from_tensor(&randn(&[r, inp], 23)).unwrap();
        let b = Var::from_tensor(&randn(&[out, r], 24)).unwrap();
        let probe = randn(&[n, out], 25);
        // A dropout mask with kept values scaled by 1/(1 − p), p = 0.25.
        let keep: Vec<f64> = (0..n * inp)
            .map(|i| if i % 4 == 1 { 0.0 } else { 1.0 / 0.75 })
            .collect();
        let mask = Tensor::from_vec(keep, (n, inp), &Device::Cpu).unwrap();
        for mask in [None, Some(mask)] {
            let mine = lora_projection(
                x.as_tensor(),
                &w,
                a.as_tensor(),
                b.as_tensor(),
                mask.clone().map(DropoutMask::Tensor),
                2.0,
                true,
            )
            .unwrap();
            let g1 = grads(&[&x, &a, &b], &mine, &probe);
            let xs = x.as_tensor();
            let dropped = match &mask {
                Some(m) => (xs * m).unwrap(),
                None => xs.clone(),
            };
            let delta = dropped
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .matmul(&b.as_tensor().t().unwrap())
                .unwrap();
            let composed = (xs.matmul(&w.t().unwrap()).unwrap() + (delta * 2.0).unwrap()).unwrap();
            let g2 = grads(&[&x, &a, &b], &composed, &probe);
            check("lora_projection", &g1, &g2, (&mine, &composed));
        }
    }
}
