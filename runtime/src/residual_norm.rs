//! The residual update fused with the RMSNorm that reads its result (decode.cu's
//! `add_residual_rms_norm`): a block's attention output and the MLP's norm, and the MLP's output
//! and the next block's norm, are each one kernel instead of `cuda_ops::add_residual` followed by
//! `cuda_ops::rms_norm_to`. The kernel makes the same sums in the same order as that pair, so
//! both outputs are bit-identical to it (checked by `bench-workload` on the GPU before timing);
//! what it saves is one read of the f32 residual stream and one launch per pair. `None` where it
//! does not apply (CPU, a build without `cuda`, `PG_FUSED=0`, unsupported dtypes or shapes):
//! callers then run the pair or candle's ops. `PG_FUSED_NORM=0` turns off this kernel alone (to
//! time the pair on the same build and card).

use anyhow::Result;
use candle_core::{DType, Tensor};

/// `h + delta` (f32 out; `h` f32 [.., H], `delta` the compute dtype, same shape) and the RMSNorm
/// of that sum with f32 weights `w` [H], rounded once to `dtype`: `(new h, normed)`.
pub fn add_residual_rms_norm(
    h: &Tensor,
    delta: &Tensor,
    w: &Tensor,
    eps: f32,
    dtype: DType,
) -> Result<Option<(Tensor, Tensor)>> {
    #[cfg(feature = "cuda")]
    return imp::add_residual_rms_norm(h, delta, w, eps, dtype);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (h, delta, w, eps, dtype);
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use crate::cuda_ops::fused_enabled;
    use crate::cuda_ops::imp::{
        cuda_only, held_view, is_kernel_dtype, kernel_name, output, view, with_dtype,
    };
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape};

    /// The op's output is the new residual stream; the normed copy goes into `normed`, an
    /// uninitialised tensor the op holds (candle's custom ops return one storage), which the
    /// kernel writes in full.
    struct AddResidualRmsNorm {
        normed: Tensor,
        eps: f32,
    }

    impl CustomOp3 for AddResidualRmsNorm {
        cuda_only!("add-residual-rms-norm", h lh, d ld, w lw);
        fn cuda_fwd(
            &self,
            sh: &CudaStorage,
            lh: &Layout,
            sd: &CudaStorage,
            ld: &Layout,
            sw: &CudaStorage,
            lw: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sh.device();
            let cols = lw.shape().elem_count();
            let n = lh.shape().elem_count();
            let (h, w) = (view::<f32>(sh, lh, "h")?, view::<f32>(sw, lw, "w")?);
            let out_h = output::<f32>(dev, n)?;
            let (ns, nl) = self.normed.storage_and_layout();
            // Block size 256 as rms_norm_to's launch: the reduction order depends on it.
            let cfg = LaunchConfig {
                grid_dim: ((n / cols) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let cols = cols as i32;
            with_dtype!(sd.dtype(), |T, sfx| {
                let d = view::<T>(sd, ld, "delta")?;
                let out_x = held_view::<T>(&ns, nl, "normed")?;
                let f = crate::kernel_modules::function(
                    dev,
                    &crate::kernel_modules::DECODE,
                    &kernel_name("add_residual_rms_norm", sfx),
                )?;
                let mut builder = f.builder();
                builder.arg(&h).arg(&d).arg(&w).arg(&out_h).arg(&out_x);
                builder.arg(&cols).arg(&self.eps);
                // SAFETY: argument types and order match the kernel's signature; `normed` has
                // n elements of T (checked by `add_residual_rms_norm`) and is written in full on
                // the one stream its readers use.
                unsafe { builder.launch(cfg) }.w()?;
            });
            Ok((
                CudaStorage::wrap_cuda_slice(out_h, dev.clone()),
                lh.shape().clone(),
            ))
        }
    }

    fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| crate::env_switch_on("PG_FUSED_NORM"))
    }

    pub fn add_residual_rms_norm(
        h: &Tensor,
        delta: &Tensor,
        w: &Tensor,
        eps: f32,
        dtype: DType,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let cols = w.elem_count();
        if !fused_enabled()
            || !enabled()
            || !h.device().is_cuda()
            || h.dtype() != DType::F32
            || w.dtype() != DType::F32
            || !is_kernel_dtype(delta.dtype())
            || delta.dtype() != dtype
            || h.dims() != delta.dims()
            || w.rank() != 1
            || cols == 0
            || h.dims().last() != Some(&cols)
            || h.elem_count() / cols > u32::MAX as usize
        {
            return Ok(None);
        }
        // SAFETY: every element is written by the kernel before anything reads the tensor.
        let normed = unsafe { Tensor::empty(h.shape(), dtype, h.device())? };
        let op = AddResidualRmsNorm {
            normed: normed.clone(),
            eps,
        };
        let new_h =
            h.contiguous()?
                .apply_op3_no_bwd(&delta.contiguous()?, &w.contiguous()?, &op)?;
        Ok(Some((new_h, normed)))
    }
}
