//! CUDA kernels of the training pass (src/kernels/train.cu, built to a fatbin by build.rs with the
//! `cuda` feature): hashed dropout, causal softmax and its backward, and the backward of
//! silu(g)·u. Each entry point returns `None` where it does not apply (CPU tensors, a build
//! without `cuda`, other dtypes); the training pass then runs the candle ops it replaces, which
//! compute the same function (the GPU training check compares the two paths).

use anyhow::Result;
use candle_core::Tensor;

/// x · keep / (1 − p), keep = [hash(seed, i) ≥ p] for element i of the contiguous x: the same
/// (seed, shape) gives the same mask, so a backward pass recomputes it.
pub fn dropout(x: &Tensor, seed: u64, p: f32) -> Result<Option<Tensor>> {
    imp::dropout(x, seed, p)
}

/// The f32 probabilities of `scores` [rows, t] (T): row r attends keys 0..=r mod `t_q`, each
/// score rounded to T after multiplying by `scale` (HF's eager attention multiplies in T).
pub fn causal_softmax(scores: &Tensor, t_q: usize, scale: f32) -> Result<Option<Tensor>> {
    imp::causal_softmax(scores, t_q, scale)
}

/// scale · P · (dP − Σ_row dP·P), rounded to dP's dtype (`probs` f32 [rows, t], `dp` [rows, t]).
pub fn softmax_backward(probs: &Tensor, dp: &Tensor, scale: f32) -> Result<Option<Tensor>> {
    imp::softmax_backward(probs, dp, scale)
}

/// (dg, du) of y = silu(g)·u given dy, in f32 and rounded to g's dtype.
pub fn silu_mul_backward(g: &Tensor, u: &Tensor, gy: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    imp::silu_mul_backward(g, u, gy)
}

/// AdamW's scalars for one step, each rounded to f32 from the f64 the candle path uses (candle
/// converts a scalar operand to the tensor's dtype the same way).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    /// Gradient scale of the global-norm clip, when it applies (coefficient < 1).
    pub clip: Option<f32>,
    /// 1 − lr · weight_decay.
    pub decay: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// 1 / √(1 − β₂ᵗ).
    pub inv_bias2_sqrt: f32,
    pub eps: f32,
    /// lr / (1 − β₁ᵗ).
    pub step_size: f32,
}

/// One AdamW step in place on f32 CUDA tensors `p`, `m`, `v` (same shape, contiguous) from the
/// gradient `g`: one kernel instead of ~17 candle ops and 3 copies per parameter, the same
/// bits (the CUDA train check compares). `false` where it does not apply (CPU, other dtypes).
pub fn adamw_step(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWScalars,
) -> Result<bool> {
    imp::adamw_step(p, g, m, v, s)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;
    pub fn adamw_step(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &AdamWScalars,
    ) -> Result<bool> {
        Ok(false)
    }
    pub fn dropout(_: &Tensor, _: u64, _: f32) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn causal_softmax(_: &Tensor, _: usize, _: f32) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn softmax_backward(_: &Tensor, _: &Tensor, _: f32) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn silu_mul_backward(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use crate::cuda_ops::imp::{
        cuda_only, elementwise_config, held_view, is_kernel_dtype, kernel_name, output, view,
        with_dtype,
    };
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{
        CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape,
    };

    /// Kernel `name` of train.cu (loaded from its fatbin once per device).
    fn train_kernel(
        dev: &candle_core::CudaDevice,
        name: &str,
    ) -> candle_core::Result<crate::kernel_modules::Kernel> {
        crate::kernel_modules::function(dev, &crate::kernel_modules::TRAIN, name)
    }

    /// One block of 256 threads per row.
    fn rows_config(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    struct Dropout {
        seed: u64,
        p: f32,
    }

    impl CustomOp1 for Dropout {
        cuda_only!("train-dropout", s l);
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = s.device();
            let n = l.shape().elem_count();
            let out = with_dtype!(s.dtype(), |T, sfx| {
                let x = view::<T>(s, l, "dropout input")?;
                let out = output::<T>(dev, n)?;
                let f = train_kernel(dev, &kernel_name("dropout", sfx))?;
                let n64 = n as u64;
                let mut b = f.builder();
                b.arg(&x).arg(&out).arg(&n64).arg(&self.seed).arg(&self.p);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(elementwise_config(n)) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, l.shape().clone()))
        }
    }

    pub fn dropout(x: &Tensor, seed: u64, p: f32) -> Result<Option<Tensor>> {
        if !x.device().is_cuda() || !is_kernel_dtype(x.dtype()) {
            return Ok(None);
        }
        Ok(Some(
            x.contiguous()?.apply_op1_no_bwd(&Dropout { seed, p })?,
        ))
    }

    struct CausalSoftmax {
        t_q: usize,
        scale: f32,
    }

    impl CustomOp1 for CausalSoftmax {
        cuda_only!("train-causal-softmax", s l);
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = s.device();
            let dims = l.shape().dims();
            let t = dims[dims.len() - 1];
            let rows = l.shape().elem_count() / t;
            let out = with_dtype!(s.dtype(), |T, sfx| {
                let x = view::<T>(s, l, "scores")?;
                let out = output::<f32>(dev, rows * t)?;
                let f = train_kernel(dev, &kernel_name("causal_softmax", sfx))?;
                let (t32, tq32) = (t as i32, self.t_q as i32);
                let mut b = f.builder();
                b.arg(&x).arg(&out).arg(&t32).arg(&tq32).arg(&self.scale);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(rows_config(rows)) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, l.shape().clone()))
        }
    }

    pub fn causal_softmax(scores: &Tensor, t_q: usize, scale: f32) -> Result<Option<Tensor>> {
        if !scores.device().is_cuda() || !is_kernel_dtype(scores.dtype()) || t_q == 0 {
            return Ok(None);
        }
        Ok(Some(
            scores
                .contiguous()?
                .apply_op1_no_bwd(&CausalSoftmax { t_q, scale })?,
        ))
    }

    struct SoftmaxBackward {
        scale: f32,
    }

    impl CustomOp2 for SoftmaxBackward {
        cuda_only!("train-softmax-backward", a la, b lb);
        fn cuda_fwd(
            &self,
            sp: &CudaStorage,
            lp: &Layout,
            sg: &CudaStorage,
            lg: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sg.device();
            let dims = lg.shape().dims();
            let t = dims[dims.len() - 1];
            let rows = lg.shape().elem_count() / t;
            let out = with_dtype!(sg.dtype(), |T, sfx| {
                let p = view::<f32>(sp, lp, "probabilities")?;
                let g = view::<T>(sg, lg, "dP")?;
                let out = output::<T>(dev, rows * t)?;
                let f = train_kernel(dev, &kernel_name("softmax_backward", sfx))?;
                let t32 = t as i32;
                let mut b = f.builder();
                b.arg(&p).arg(&g).arg(&out).arg(&t32).arg(&self.scale);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(rows_config(rows)) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, lg.shape().clone()))
        }
    }

    pub fn softmax_backward(probs: &Tensor, dp: &Tensor, scale: f32) -> Result<Option<Tensor>> {
        if !dp.device().is_cuda()
            || !is_kernel_dtype(dp.dtype())
            || probs.dtype() != DType::F32
            || probs.dims() != dp.dims()
        {
            return Ok(None);
        }
        Ok(Some(probs.contiguous()?.apply_op2_no_bwd(
            &dp.contiguous()?,
            &SoftmaxBackward { scale },
        )?))
    }

    /// Writes dg and du one after the other: output [2, n].
    struct SiluMulBackward;

    impl CustomOp3 for SiluMulBackward {
        cuda_only!("train-silu-mul-backward", a la, b lb, c lc);
        fn cuda_fwd(
            &self,
            sg: &CudaStorage,
            lg: &Layout,
            su: &CudaStorage,
            lu: &Layout,
            sy: &CudaStorage,
            ly: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sg.device();
            let n = lg.shape().elem_count();
            let out = with_dtype!(sg.dtype(), |T, sfx| {
                let (g, u, y) = (
                    view::<T>(sg, lg, "g")?,
                    view::<T>(su, lu, "u")?,
                    view::<T>(sy, ly, "dy")?,
                );
                let mut out = output::<T>(dev, 2 * n)?;
                let f = train_kernel(dev, &kernel_name("silu_mul_backward", sfx))?;
                let n64 = n as u64;
                {
                    let (mut dg, mut du) = out.split_at_mut(n);
                    let mut b = f.builder();
                    b.arg(&g)
                        .arg(&u)
                        .arg(&y)
                        .arg(&mut dg)
                        .arg(&mut du)
                        .arg(&n64);
                    // SAFETY: argument types and order match the kernel's signature; dg and du
                    // are the two disjoint halves of `out`.
                    unsafe { b.launch(elementwise_config(n)) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, Shape::from((2, n))))
        }
    }

    pub fn silu_mul_backward(
        g: &Tensor,
        u: &Tensor,
        gy: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        if !g.device().is_cuda()
            || !is_kernel_dtype(g.dtype())
            || g.dims() != u.dims()
            || g.dims() != gy.dims()
            || g.dtype() != u.dtype()
            || g.dtype() != gy.dtype()
        {
            return Ok(None);
        }
        let both = g.contiguous()?.apply_op3_no_bwd(
            &u.contiguous()?,
            &gy.contiguous()?,
            &SiluMulBackward,
        )?;
        let shape = g.shape().clone();
        Ok(Some((
            both.get(0)?.reshape(&shape)?,
            both.get(1)?.reshape(&shape)?,
        )))
    }

    struct AdamWInPlace {
        m: Tensor,
        v: Tensor,
        s: AdamWScalars,
    }

    impl candle_core::InplaceOp2 for AdamWInPlace {
        fn name(&self) -> &'static str {
            "train-adamw"
        }
        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<()> {
            candle_core::bail!("train-adamw runs on CUDA only")
        }
        fn cuda_fwd(
            &self,
            sp: &mut CudaStorage,
            lp: &Layout,
            sg: &CudaStorage,
            lg: &Layout,
        ) -> candle_core::Result<()> {
            let dev = sg.device().clone();
            let n = lp.shape().elem_count();
            let (pa, pb) = lp
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("parameter must be contiguous".into()))?;
            let (m_storage, m_layout) = self.m.storage_and_layout();
            let (v_storage, v_layout) = self.v.storage_and_layout();
            let m = held_view::<f32>(&m_storage, m_layout, "AdamW m")?;
            let v = held_view::<f32>(&v_storage, v_layout, "AdamW v")?;
            let g = view::<f32>(sg, lg, "gradient")?;
            let mut p = sp.as_cuda_slice_mut::<f32>()?.slice_mut(pa..pb);
            let f = train_kernel(&dev, &kernel_name("adamw", "f32"))?;
            let s = &self.s;
            let (n64, clip, gscale) = (n as u64, s.clip.is_some() as i32, s.clip.unwrap_or(1.0));
            let mut b = f.builder();
            b.arg(&mut p)
                .arg(&g)
                .arg(&m)
                .arg(&v)
                .arg(&n64)
                .arg(&clip)
                .arg(&gscale);
            for x in [
                &s.decay,
                &s.beta1,
                &s.one_minus_beta1,
                &s.beta2,
                &s.one_minus_beta2,
                &s.inv_bias2_sqrt,
                &s.eps,
                &s.step_size,
            ] {
                b.arg(x);
            }
            // SAFETY: argument types and order match the kernel's signature; the four buffers
            // have n elements (checked in `adamw_step`). m and v are written in place through
            // their views, as the decoding cache is: one stream orders every reader after it.
            unsafe { b.launch(elementwise_config(n)) }.w()?;
            Ok(())
        }
    }

    pub fn adamw_step(
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        s: &AdamWScalars,
    ) -> Result<bool> {
        let all = [p, g, m, v];
        if !p.device().is_cuda()
            || all
                .iter()
                .any(|t| t.dtype() != DType::F32 || t.dims() != p.dims())
            || !p.is_contiguous()
            || !m.is_contiguous()
            || !v.is_contiguous()
        {
            return Ok(false);
        }
        p.inplace_op2(
            &g.contiguous()?,
            &AdamWInPlace {
                m: m.clone(),
                v: v.clone(),
                s: *s,
            },
        )?;
        Ok(true)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn adamw_kernel_is_in_the_fatbin() {
            assert!(crate::kernel_modules::defines(
                &crate::kernel_modules::TRAIN,
                "adamw_f32"
            ));
        }

        #[test]
        fn every_training_kernel_the_launches_name_is_in_the_fatbin() {
            for sfx in ["f32", "bf16", "f16"] {
                for op in [
                    "dropout",
                    "causal_softmax",
                    "softmax_backward",
                    "silu_mul_backward",
                ] {
                    let n = kernel_name(op, sfx);
                    assert!(
                        crate::kernel_modules::defines(&crate::kernel_modules::TRAIN, &n),
                        "{n} is not in the train fatbin"
                    );
                }
            }
        }
    }
}
