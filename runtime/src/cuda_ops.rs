//! Fused CUDA kernels for decoding (src/kernels/decode.cu, built to a fatbin by build.rs with the
//! `cuda` feature). Each entry point returns `None` where the kernel does not apply (CPU tensors,
//! a build without `cuda`, unsupported shapes, or `PG_FUSED=0` to compare against candle's
//! unfused path); callers then run the candle ops they replace. The kernels compute the same
//! function as those ops (the GPU parity checks in `verify-fixture` and `bench-workload` compare
//! them).

use anyhow::Result;
use candle_core::Tensor;

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet read from `PG_FUSED`; 1: on; 2: off.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Whether the fused kernels may be used (on by default; `PG_FUSED=0` turns them off).
pub fn fused_enabled() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = crate::env_switch_on("PG_FUSED");
            set_fused(on);
            on
        }
    }
}

/// Turns the fused kernels on or off for this process (the benchmark times both paths).
pub fn set_fused(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Grouped-query attention of `t` new positions per row over the cache buffers (decoding:
/// t = 1; prefill: the chunk). `q` [b, nh, t, hd] (after RoPE), `k`/`v` [b, nkv, cap, hd]
/// contiguous with this chunk's keys already at `offset..offset + t`, `first_key` [b] u32:
/// query ti of row i attends keys first_key[i] ..= offset + ti (left padding before, causal
/// limit after; a padded query gets zeros). Returns [b, t, nh·hd], or `None` where the kernel
/// does not apply.
pub fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first_key: &Tensor,
    offset: usize,
    scale: f32,
) -> Result<Option<Tensor>> {
    imp::cached_attention(q, k, v, first_key, offset, scale)
}

/// After the stacked q/k/v projection `qkv` [b, t, (nh + 2·nkv)·hd]: adds `bias`, applies RoPE
/// (`cos`/`sin` [b, t, hd/2]) and writes k and v into the cache buffers `k_cache`/`v_cache`
/// [b, nkv, cap, hd] at positions `offset..offset + t` in place. Returns q [b, nh, t, hd], or
/// `None` where the kernel does not apply (then nothing was written).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_append(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    offset: usize,
    heads: (usize, usize, usize),
) -> Result<Option<Tensor>> {
    imp::qkv_rope_append(qkv, bias, cos, sin, k_cache, v_cache, offset, heads)
}

/// The residual update `h + delta` with `h` f32 and `delta` in the compute dtype (f32 out), in
/// one pass; `None` where the kernel does not apply.
pub fn add_residual(h: &Tensor, delta: &Tensor) -> Result<Option<Tensor>> {
    imp::add_residual(h, delta)
}

/// RMSNorm of f32 rows `x` [.., H] with f32 weights `w` [H], rounded once to `dtype`; `None`
/// where the kernel does not apply.
pub fn rms_norm_to(
    x: &Tensor,
    w: &Tensor,
    eps: f32,
    dtype: candle_core::DType,
) -> Result<Option<Tensor>> {
    imp::rms_norm_to(x, w, eps, dtype)
}

/// Index of each row's largest logit ([rows, vocab] → [rows] u32; the first of equal maxima, as
/// torch.argmax), read in the logits' dtype; `None` where the kernel does not apply.
pub fn argmax_rows(logits: &Tensor) -> Result<Option<Tensor>> {
    imp::argmax_rows(logits)
}

/// Allocator and bookkeeping settings for a CUDA device, applied once when it is opened:
/// - the stream-ordered memory pool keeps freed memory (release threshold = unlimited, like
///   PyTorch's caching allocator). With the default threshold of 0 every synchronisation (the
///   end of each batch, the decoding loop's stop checks) hands the pool's free memory back to
///   the driver, and the next batch maps it again.
/// - cudarc's per-allocation event tracking is off: this program uses a single stream, so the
///   two CUDA events created and destroyed with every tensor are pure host overhead.
///
/// No-op on the CPU.
pub fn tune_device(device: &candle_core::Device) -> Result<()> {
    imp::tune_device(device)
}

/// Hands the memory pool's cached free memory back to the driver (after synchronising), so
/// that a free-memory query sees what this process could allocate. No-op on the CPU.
pub fn release_cached_memory(device: &candle_core::Device) -> Result<()> {
    imp::release_cached_memory(device)
}

/// The CUDA memory pool's bytes (after synchronising): in use and held now, and their
/// high-water marks since the process started or the last `reset_high_water` (what nvidia-smi
/// sees is the pool's holding plus the context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub used: u64,
    pub reserved: u64,
    pub used_high: u64,
    pub reserved_high: u64,
}

/// The pool's [`PoolStats`]; with `reset_high_water` the marks restart from the current values
/// (to attribute a peak to one phase). None on the CPU.
pub fn pool_stats(
    device: &candle_core::Device,
    reset_high_water: bool,
) -> Result<Option<PoolStats>> {
    imp::pool_stats(device, reset_high_water)
}

/// silu(gate) · up ([.., n] each, same shape), or `None` where the kernel does not apply.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    imp::silu_mul(gate, up)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;
    pub fn cached_attention(
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: usize,
        _: f32,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn silu_mul(_: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn tune_device(_: &candle_core::Device) -> Result<()> {
        Ok(())
    }
    pub fn release_cached_memory(_: &candle_core::Device) -> Result<()> {
        Ok(())
    }
    pub fn pool_stats(_: &candle_core::Device, _: bool) -> Result<Option<super::PoolStats>> {
        Ok(None)
    }
    pub fn add_residual(_: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn rms_norm_to(
        _: &Tensor,
        _: &Tensor,
        _: f32,
        _: candle_core::DType,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn argmax_rows(_: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_append(
        _: &Tensor,
        _: Option<&Tensor>,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: usize,
        _: (usize, usize, usize),
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod imp {
    use super::*;
    use crate::kernel_modules::Kernel;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        sys, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape,
        Storage,
    };

    const THREADS: u32 = 128;

    /// Kernel `name` of decode.cu (loaded from its fatbin once per device).
    fn decode_kernel(dev: &CudaDevice, name: &str) -> candle_core::Result<Kernel> {
        crate::kernel_modules::function(dev, &crate::kernel_modules::DECODE, name)
    }
    /// Dynamic shared memory without raising the per-kernel limit.
    const SHARED_LIMIT: usize = 48 * 1024;
    /// Query heads per KV head that the kernel holds in registers (REP4 in decode.cu).
    const MAX_REP: usize = 8;

    /// Runs `$body` with `$t` the Rust element type of `$dtype` and `$sfx` the kernels' name
    /// suffix for it (the kernels are built for f32, bf16 and f16).
    macro_rules! with_dtype {
        ($dtype:expr, |$t:ident, $sfx:ident| $body:expr) => {
            match $dtype {
                DType::F32 => {
                    type $t = f32;
                    let $sfx = "f32";
                    $body
                }
                DType::BF16 => {
                    type $t = half::bf16;
                    let $sfx = "bf16";
                    $body
                }
                DType::F16 => {
                    type $t = half::f16;
                    let $sfx = "f16";
                    $body
                }
                d => candle_core::bail!("the fused kernels do not support {d:?}"),
            }
        };
    }

    /// These ops are only built for CUDA tensors (the public functions return `None`
    /// elsewhere), so their CPU forward refuses.
    macro_rules! cuda_only {
        ($name:literal, $($s:ident $l:ident),+) => {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                $($s: &CpuStorage, $l: &Layout),+
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                let _ = ($($s, $l),+);
                candle_core::bail!(concat!($name, " is a CUDA kernel"))
            }
        };
    }

    pub(crate) use {cuda_only, with_dtype};

    /// The PTX entry of the attention kernel for a dtype suffix and head dimension (64 and 128
    /// have loops unrolled at compile time; others read the head dimension at run time).
    fn attention_kernel(sfx: &str, hd: usize) -> String {
        let variant = match hd {
            64 => "hd64",
            128 => "hd128",
            _ => "hd0",
        };
        format!("cached_attention_{sfx}_{variant}")
    }

    /// The PTX entry of one of the other kernels (`qkv_rope`, `silu_mul`, ...) for a suffix.
    pub(crate) fn kernel_name(op: &str, sfx: &str) -> String {
        format!("{op}_{sfx}")
    }

    pub(crate) fn is_kernel_dtype(dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    /// Dynamic shared memory of the attention kernel (decode.cu's layout): q, probabilities
    /// [n_keys][8], 1/sum [8], and the key groups' partial outputs.
    fn attention_shared_bytes(rep: usize, hd: usize, n_keys: usize) -> usize {
        let groups = THREADS as usize / (hd / 4).max(1);
        (rep * hd + n_keys * MAX_REP + MAX_REP + groups * rep * hd) * 4
    }

    /// An op's contiguous input as a typed device view.
    pub(crate) fn view<'a, T: CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// A tensor an op holds besides its inputs (read under its storage lock) as a typed view.
    pub(crate) fn held_view<'a, T: CudaDType>(
        s: &'a Storage,
        l: &Layout,
        what: &str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        match s {
            Storage::Cuda(s) => view(s, l, what),
            _ => candle_core::bail!("{what} must be on the CUDA device"),
        }
    }

    /// An output buffer of `n` elements; every kernel below writes each element of its output.
    pub(crate) fn output<T: DeviceRepr>(
        dev: &CudaDevice,
        n: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        // SAFETY: uninitialised device memory, fully written by the kernel launched next.
        unsafe { dev.alloc::<T>(n) }
    }

    /// A one-dimensional launch over `n` work items (the kernels loop with a grid stride).
    pub(crate) fn elementwise_config(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    struct CachedAttention {
        first_key: Tensor,
        scale: f32,
        d: crate::tc_attention::Dims,
    }

    impl CustomOp3 for CachedAttention {
        cuda_only!("cached-attention", q lq, k lk, v lv);
        fn cuda_fwd(
            &self,
            sq: &CudaStorage,
            lq: &Layout,
            sk: &CudaStorage,
            lk: &Layout,
            sv: &CudaStorage,
            lv: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sq.device();
            let (fk_storage, fk_layout) = self.first_key.storage_and_layout();
            let fk = held_view::<u32>(&fk_storage, fk_layout, "first_key")?;
            let d = &self.d;
            let out = with_dtype!(sq.dtype(), |T, sfx| {
                let (q, k, v) = (
                    view::<T>(sq, lq, "q")?,
                    view::<T>(sk, lk, "k")?,
                    view::<T>(sv, lv, "v")?,
                );
                let mut out = output::<T>(dev, d.b * d.t * d.nh * d.hd)?;
                if crate::tc_attention::applies(sq.dtype(), d.hd) {
                    crate::tc_attention::launch(
                        dev, sfx, &q, &k, &v, &fk, &mut out, d, self.scale,
                    )?;
                } else {
                    let cfg = LaunchConfig {
                        grid_dim: (d.t as u32, d.nkv as u32, d.b as u32),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: attention_shared_bytes(d.nh / d.nkv, d.hd, d.offset + d.t)
                            as u32,
                    };
                    let ints = [d.nh, d.nkv, d.cap, d.hd, d.t, d.offset].map(|x| x as i32);
                    let f = decode_kernel(dev, &attention_kernel(sfx, d.hd))?;
                    let mut builder = f.builder();
                    builder.arg(&q).arg(&k).arg(&v).arg(&fk).arg(&out);
                    for x in &ints {
                        builder.arg(x);
                    }
                    builder.arg(&self.scale);
                    // SAFETY: argument types and order match the kernel's signature; shapes, the
                    // cache's room and the shared memory were checked by `cached_attention`.
                    unsafe { builder.launch(cfg) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, Shape::from((d.b, d.t, d.nh * d.hd))))
        }
    }

    pub fn cached_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        first_key: &Tensor,
        offset: usize,
        scale: f32,
    ) -> Result<Option<Tensor>> {
        if !fused_enabled() || !q.device().is_cuda() || !is_kernel_dtype(q.dtype()) {
            return Ok(None);
        }
        let (b, nh, t, hd) = q.dims4()?;
        let (kb, nkv, cap, khd) = k.dims4()?;
        let rep = nh / nkv.max(1);
        let fits = t >= 1
            && t <= i32::MAX as usize
            && b <= 65_535
            && kb == b
            && khd == hd
            && v.dims() == k.dims()
            && nkv > 0
            && nh % nkv == 0
            && (hd * q.dtype().size_in_bytes()) % 16 == 0
            && offset + t <= cap
            // The tensor-core kernel has no limit on rep or the cache's length; the CUDA-core
            // one holds rep heads in registers and all scores in shared memory.
            && (crate::tc_attention::applies(q.dtype(), hd)
                || (rep <= MAX_REP
                    && hd % 4 == 0
                    && hd / 4 <= THREADS as usize
                    && attention_shared_bytes(rep, hd, offset + t) <= SHARED_LIMIT))
            && first_key.dims() == [b]
            && first_key.dtype() == DType::U32
            && k.dtype() == q.dtype()
            && v.dtype() == q.dtype();
        if !fits {
            return Ok(None);
        }
        let op = CachedAttention {
            first_key: first_key.contiguous()?,
            scale,
            d: crate::tc_attention::Dims {
                b,
                t,
                nh,
                nkv,
                cap,
                hd,
                offset,
            },
        };
        Ok(Some(q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &op,
        )?))
    }

    struct QkvRope {
        bias: Option<Tensor>,
        k_cache: Tensor,
        v_cache: Tensor,
        offset: usize,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
        cap: usize,
    }

    impl CustomOp3 for QkvRope {
        cuda_only!("qkv-rope-append", x lx, c lc, s ls);
        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sc: &CudaStorage,
            lc: &Layout,
            ss: &CudaStorage,
            ls: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sx.device();
            let (k_storage, k_layout) = self.k_cache.storage_and_layout();
            let (v_storage, v_layout) = self.v_cache.storage_and_layout();
            let bias = self.bias.as_ref().map(|b| b.storage_and_layout());
            let cfg = LaunchConfig {
                grid_dim: ((self.b * self.t) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let ints =
                [self.t, self.nh, self.nkv, self.hd, self.cap, self.offset].map(|x| x as i32);
            let null: u64 = 0;
            let q = with_dtype!(sx.dtype(), |T, sfx| {
                let x = view::<T>(sx, lx, "qkv")?;
                let (c, sn) = (view::<T>(sc, lc, "cos")?, view::<T>(ss, ls, "sin")?);
                let kc = held_view::<T>(&k_storage, k_layout, "k cache")?;
                let vc = held_view::<T>(&v_storage, v_layout, "v cache")?;
                let bias = match &bias {
                    Some((st, l)) => Some(held_view::<T>(st, l, "bias")?),
                    None => None,
                };
                let q = output::<T>(dev, self.b * self.nh * self.t * self.hd)?;
                let f = decode_kernel(dev, &kernel_name("qkv_rope", sfx))?;
                let mut builder = f.builder();
                builder.arg(&x);
                match &bias {
                    Some(bias) => builder.arg(bias),
                    None => builder.arg(&null),
                };
                builder.arg(&c).arg(&sn).arg(&q).arg(&kc).arg(&vc);
                for x in &ints {
                    builder.arg(x);
                }
                // SAFETY: argument types and order match the kernel's signature (a null bias
                // pointer means no bias); shapes and the cache's room were checked by
                // `qkv_rope_append`. The cache buffers are written in place on the one stream
                // that all their readers use.
                unsafe { builder.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(q, dev.clone())
            });
            Ok((q, Shape::from((self.b, self.nh, self.t, self.hd))))
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_append(
        qkv: &Tensor,
        bias: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        offset: usize,
        (nh, nkv, hd): (usize, usize, usize),
    ) -> Result<Option<Tensor>> {
        if !fused_enabled() || !qkv.device().is_cuda() || !is_kernel_dtype(qkv.dtype()) {
            return Ok(None);
        }
        let (b, t, w) = qkv.dims3()?;
        let (kb, knkv, cap, khd) = k_cache.dims4()?;
        let dt = qkv.dtype();
        let fits = w == (nh + 2 * nkv) * hd
            && hd % 2 == 0
            && kb == b
            && knkv == nkv
            && khd == hd
            && offset + t <= cap
            && v_cache.dims() == k_cache.dims()
            && cos.dims() == [b, t, hd / 2]
            && sin.dims() == cos.dims()
            && bias.is_none_or(|bb| bb.dims() == [w] && bb.dtype() == dt)
            && [cos.dtype(), sin.dtype(), k_cache.dtype(), v_cache.dtype()]
                .iter()
                .all(|d| *d == dt)
            && k_cache.is_contiguous()
            && v_cache.is_contiguous();
        if !fits {
            return Ok(None);
        }
        let op = QkvRope {
            bias: bias.map(|bb| bb.contiguous()).transpose()?,
            k_cache: k_cache.clone(),
            v_cache: v_cache.clone(),
            offset,
            b,
            t,
            nh,
            nkv,
            hd,
            cap,
        };
        Ok(Some(qkv.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &op,
        )?))
    }

    struct SiluMul;

    impl CustomOp2 for SiluMul {
        cuda_only!("silu-mul", g lg, u lu);
        fn cuda_fwd(
            &self,
            sg: &CudaStorage,
            lg: &Layout,
            su: &CudaStorage,
            lu: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sg.device();
            let n = lg.shape().elem_count();
            let out = with_dtype!(sg.dtype(), |T, sfx| {
                let (g, u) = (view::<T>(sg, lg, "gate")?, view::<T>(su, lu, "up")?);
                let out = output::<T>(dev, n)?;
                let f = decode_kernel(dev, &kernel_name("silu_mul", sfx))?;
                let n64 = n as u64;
                let mut builder = f.builder();
                builder.arg(&g).arg(&u).arg(&out).arg(&n64);
                // SAFETY: argument types and order match the kernel's signature. Up to 8
                // elements per thread.
                unsafe { builder.launch(elementwise_config(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, lg.shape().clone()))
        }
    }

    pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !gate.device().is_cuda()
            || !is_kernel_dtype(gate.dtype())
            || gate.dims() != up.dims()
            || gate.dtype() != up.dtype()
        {
            return Ok(None);
        }
        Ok(Some(
            gate.contiguous()?
                .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)?,
        ))
    }

    struct AddResidual;

    impl CustomOp2 for AddResidual {
        cuda_only!("add-residual", h lh, d ld);
        fn cuda_fwd(
            &self,
            sh: &CudaStorage,
            lh: &Layout,
            sd: &CudaStorage,
            ld: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sh.device();
            let n = lh.shape().elem_count();
            let h = view::<f32>(sh, lh, "h")?;
            let out = output::<f32>(dev, n)?;
            with_dtype!(sd.dtype(), |T, sfx| {
                let d = view::<T>(sd, ld, "delta")?;
                let f = decode_kernel(dev, &kernel_name("add_residual", sfx))?;
                let n64 = n as u64;
                let mut builder = f.builder();
                builder.arg(&h).arg(&d).arg(&out).arg(&n64);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { builder.launch(elementwise_config(n)) }.w()?;
            });
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev.clone()),
                lh.shape().clone(),
            ))
        }
    }

    pub fn add_residual(h: &Tensor, delta: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !h.device().is_cuda()
            || h.dtype() != DType::F32
            || !is_kernel_dtype(delta.dtype())
            || h.dims() != delta.dims()
        {
            return Ok(None);
        }
        Ok(Some(
            h.contiguous()?
                .apply_op2_no_bwd(&delta.contiguous()?, &AddResidual)?,
        ))
    }

    struct RmsNormTo {
        eps: f32,
        dtype: DType,
    }

    impl CustomOp2 for RmsNormTo {
        cuda_only!("rms-norm-to", x lx, w lw);
        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sw: &CudaStorage,
            lw: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sx.device();
            let (x, w) = (view::<f32>(sx, lx, "x")?, view::<f32>(sw, lw, "w")?);
            let cols = lw.shape().elem_count();
            let n = lx.shape().elem_count();
            let cfg = LaunchConfig {
                grid_dim: ((n / cols) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let cols = cols as i32;
            let out = with_dtype!(self.dtype, |T, sfx| {
                let out = output::<T>(dev, n)?;
                let f = decode_kernel(dev, &kernel_name("rms_norm_to", sfx))?;
                let mut builder = f.builder();
                builder.arg(&x).arg(&w).arg(&out).arg(&cols).arg(&self.eps);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { builder.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            });
            Ok((out, lx.shape().clone()))
        }
    }

    pub fn rms_norm_to(x: &Tensor, w: &Tensor, eps: f32, dtype: DType) -> Result<Option<Tensor>> {
        let cols = w.elem_count();
        if !fused_enabled()
            || !x.device().is_cuda()
            || x.dtype() != DType::F32
            || w.dtype() != DType::F32
            || !is_kernel_dtype(dtype)
            || w.rank() != 1
            || cols == 0
            || x.dims().last() != Some(&cols)
            || x.elem_count() / cols > u32::MAX as usize
        {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &RmsNormTo { eps, dtype },
        )?))
    }

    struct ArgmaxRows;

    impl CustomOp1 for ArgmaxRows {
        cuda_only!("argmax-rows", s l);
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = s.device();
            let (rows, cols) = l.shape().dims2()?;
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            let out = output::<u32>(dev, rows)?;
            let cols = cols as i32;
            with_dtype!(s.dtype(), |T, sfx| {
                let x = view::<T>(s, l, "logits")?;
                let f = decode_kernel(dev, &kernel_name("argmax_rows", sfx))?;
                let mut builder = f.builder();
                builder.arg(&x).arg(&out).arg(&cols);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { builder.launch(cfg) }.w()?;
            });
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev.clone()),
                Shape::from(rows),
            ))
        }
    }

    pub fn argmax_rows(logits: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !logits.device().is_cuda()
            || !is_kernel_dtype(logits.dtype())
            || logits.rank() != 2
            || logits.dim(1)? > i32::MAX as usize
            || logits.dim(0)? > u32::MAX as usize
        {
            return Ok(None);
        }
        Ok(Some(logits.contiguous()?.apply_op1_no_bwd(&ArgmaxRows)?))
    }

    /// The default memory pool of the device's context (what cuMemAllocAsync draws from).
    fn default_pool(d: &CudaDevice) -> Result<sys::CUmemoryPool> {
        let ctx = d.cuda_stream().context().clone();
        ctx.bind_to_thread()
            .map_err(|e| anyhow::anyhow!("binding the CUDA context: {e:?}"))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: valid out-pointer, the context's own device.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
            .result()
            .map_err(|e| anyhow::anyhow!("querying the CUDA memory pool: {e:?}"))?;
        Ok(pool)
    }

    pub fn pool_stats(
        device: &candle_core::Device,
        reset_high_water: bool,
    ) -> Result<Option<super::PoolStats>> {
        use sys::CUmemPool_attribute as A;
        let candle_core::Device::Cuda(d) = device else {
            return Ok(None);
        };
        device.synchronize()?;
        let pool = default_pool(d)?;
        let read = |attr| -> Result<u64> {
            let mut v: u64 = 0;
            // SAFETY: a valid pool and a pointer to a u64, the attribute's type.
            unsafe {
                sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void)
            }
            .result()
            .map_err(|e| anyhow::anyhow!("reading the CUDA memory pool: {e:?}"))?;
            Ok(v)
        };
        let stats = super::PoolStats {
            used: read(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            reserved: read(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
            used_high: read(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            reserved_high: read(A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        };
        if reset_high_water {
            for attr in [
                A::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            ] {
                let mut zero: u64 = 0;
                // SAFETY: as above; the high-water attributes may only be set to 0 (= reset).
                unsafe {
                    sys::cuMemPoolSetAttribute(
                        pool,
                        attr,
                        &mut zero as *mut u64 as *mut std::ffi::c_void,
                    )
                }
                .result()
                .map_err(|e| anyhow::anyhow!("resetting the CUDA memory pool's marks: {e:?}"))?;
            }
        }
        Ok(Some(stats))
    }

    pub fn release_cached_memory(device: &candle_core::Device) -> Result<()> {
        let candle_core::Device::Cuda(d) = device else {
            return Ok(());
        };
        device.synchronize()?;
        let pool = default_pool(d)?;
        // SAFETY: a valid pool; trimming only releases memory no allocation holds.
        unsafe { sys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .map_err(|e| anyhow::anyhow!("trimming the CUDA memory pool: {e:?}"))?;
        Ok(())
    }

    pub fn tune_device(device: &candle_core::Device) -> Result<()> {
        let candle_core::Device::Cuda(d) = device else {
            return Ok(());
        };
        // SAFETY: one stream per device in this program (see the doc comment).
        unsafe { d.disable_event_tracking() };
        let pool = default_pool(d)?;
        let mut threshold: u64 = u64::MAX;
        // SAFETY: a valid pool and a pointer to a u64, the attribute's type.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
            .result()
            .map_err(|e| {
                anyhow::anyhow!("setting the CUDA memory pool's release threshold: {e:?}")
            })?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_kernel_the_launches_name_is_in_the_fatbin() {
            for sfx in ["f32", "bf16", "f16"] {
                let mut names: Vec<String> = [12, 64, 128]
                    .iter()
                    .map(|&hd| attention_kernel(sfx, hd))
                    .collect();
                for op in [
                    "qkv_rope",
                    "silu_mul",
                    "add_residual",
                    "rms_norm_to",
                    "add_residual_rms_norm",
                    "argmax_rows",
                ] {
                    names.push(kernel_name(op, sfx));
                }
                for n in names {
                    assert!(
                        crate::kernel_modules::defines(&crate::kernel_modules::DECODE, &n),
                        "{n} is not in the decode fatbin"
                    );
                }
            }
        }
    }
}
