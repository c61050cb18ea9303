//! Fused CUDA kernels for decoding (src/kernels/decode.cu, built to PTX by build.rs with the
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
            let on = std::env::var("PG_FUSED").map(|v| v != "0").unwrap_or(true);
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
mod imp {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{
        CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape,
    };

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
    const MODULE: &str = "persona_geometry_decode";
    const THREADS: u32 = 128;
    /// Dynamic shared memory without raising the per-kernel limit.
    const SHARED_LIMIT: usize = 48 * 1024;
    /// Query heads per KV head that the kernel holds in registers (REP4 in decode.cu).
    const MAX_REP: usize = 8;

    /// Dynamic shared memory of the attention kernel (decode.cu's layout): q, probabilities
    /// [n_keys][8], 1/sum [8], and the key groups' partial outputs.
    fn attention_shared_bytes(rep: usize, hd: usize, n_keys: usize) -> usize {
        let groups = THREADS as usize / (hd / 4).max(1);
        (rep * hd + n_keys * MAX_REP + MAX_REP + groups * rep * hd) * 4
    }

    fn suffix(dtype: DType) -> Option<&'static str> {
        match dtype {
            DType::F32 => Some("f32"),
            DType::BF16 => Some("bf16"),
            DType::F16 => Some("f16"),
            _ => None,
        }
    }

    fn contiguous_offsets(l: &Layout, what: &str) -> candle_core::Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))
    }

    struct DecodeAttention {
        first_key: Tensor,
        t: usize,
        offset: usize,
        scale: f32,
        nh: usize,
        nkv: usize,
        cap: usize,
        hd: usize,
        b: usize,
    }

    impl CustomOp3 for DecodeAttention {
        fn name(&self) -> &'static str {
            "decode-attention"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("decode-attention is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            sq: &CudaStorage,
            lq: &Layout,
            sk: &CudaStorage,
            lk: &Layout,
            sv: &CudaStorage,
            lv: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sq.device().clone();
            let (fk_storage, fk_layout) = self.first_key.storage_and_layout();
            let fk = match &*fk_storage {
                candle_core::Storage::Cuda(s) => s.as_cuda_slice::<u32>()?,
                _ => candle_core::bail!("first_key must be on the CUDA device"),
            };
            let (f0, f1) = contiguous_offsets(fk_layout, "first_key")?;
            let fk = fk.slice(f0..f1);
            let (q0, q1) = contiguous_offsets(lq, "q")?;
            let (k0, k1) = contiguous_offsets(lk, "k")?;
            let (v0, v1) = contiguous_offsets(lv, "v")?;
            let rep = self.nh / self.nkv;
            let shared = attention_shared_bytes(rep, self.hd, self.offset + self.t);
            // Head dims the kernel is specialised for (loops unrolled); others read it at run time.
            let hd_variant = match self.hd {
                64 => "hd64",
                128 => "hd128",
                _ => "hd0",
            };
            let cfg = LaunchConfig {
                grid_dim: (self.t as u32, self.nkv as u32, self.b as u32),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: shared as u32,
            };
            let out_len = self.b * self.t * self.nh * self.hd;
            macro_rules! launch {
                ($variant:ident, $t:ty, $name:literal) => {{
                    let (
                        CudaStorageSlice::$variant(q),
                        CudaStorageSlice::$variant(k),
                        CudaStorageSlice::$variant(v),
                    ) = (&sq.slice, &sk.slice, &sv.slice)
                    else {
                        candle_core::bail!("decode-attention: q, k and v must share one dtype")
                    };
                    let func = dev.get_or_load_custom_func(
                        &format!("{}_{hd_variant}", $name),
                        MODULE,
                        PTX,
                    )?;
                    // SAFETY: every element is written by the kernel.
                    let out = unsafe { dev.alloc::<$t>(out_len)? };
                    let (q, k, v) = (q.slice(q0..q1), k.slice(k0..k1), v.slice(v0..v1));
                    let (nh, nkv, cap, hd, t, offset) = (
                        self.nh as i32,
                        self.nkv as i32,
                        self.cap as i32,
                        self.hd as i32,
                        self.t as i32,
                        self.offset as i32,
                    );
                    let mut builder = func.builder();
                    builder.arg(&q);
                    builder.arg(&k);
                    builder.arg(&v);
                    builder.arg(&fk);
                    builder.arg(&out);
                    builder.arg(&nh);
                    builder.arg(&nkv);
                    builder.arg(&cap);
                    builder.arg(&hd);
                    builder.arg(&t);
                    builder.arg(&offset);
                    builder.arg(&self.scale);
                    // SAFETY: argument types and order match the kernel's signature; the
                    // shapes were checked by `decode_attention`.
                    unsafe { builder.launch(cfg) }.w()?;
                    CudaStorageSlice::$variant(out)
                }};
            }
            let slice = match sq.dtype() {
                DType::F32 => launch!(F32, f32, "decode_attention_f32"),
                DType::BF16 => launch!(BF16, half::bf16, "decode_attention_bf16"),
                DType::F16 => launch!(F16, half::f16, "decode_attention_f16"),
                d => candle_core::bail!("decode-attention: unsupported dtype {d:?}"),
            };
            Ok((
                CudaStorage { slice, device: dev },
                Shape::from((self.b, self.t, self.nh * self.hd)),
            ))
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
        if !fused_enabled() || !q.device().is_cuda() {
            return Ok(None);
        }
        let Some(suffix_len) = suffix(q.dtype()).map(|_| q.dtype().size_in_bytes()) else {
            return Ok(None);
        };
        let (b, nh, t, hd) = q.dims4()?;
        let (kb, nkv, cap, khd) = k.dims4()?;
        let rep = nh / nkv.max(1);
        let shared = attention_shared_bytes(rep, hd, offset + t);
        let fits = t >= 1
            && t <= i32::MAX as usize
            && b <= 65_535
            && kb == b
            && khd == hd
            && v.dims() == k.dims()
            && nkv > 0
            && nh % nkv == 0
            && rep <= MAX_REP
            && hd % 4 == 0
            && hd / 4 <= THREADS as usize
            && (hd * suffix_len) % 16 == 0
            && offset + t <= cap
            && shared <= SHARED_LIMIT
            && first_key.dims() == [b]
            && first_key.dtype() == DType::U32
            && k.dtype() == q.dtype()
            && v.dtype() == q.dtype();
        if !fits {
            return Ok(None);
        }
        let op = DecodeAttention {
            first_key: first_key.contiguous()?,
            t,
            offset,
            scale,
            nh,
            nkv,
            cap,
            hd,
            b,
        };
        Ok(Some(q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &op,
        )?))
    }

    struct SiluMul;

    impl CustomOp2 for SiluMul {
        fn name(&self) -> &'static str {
            "silu-mul"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("silu-mul is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            sg: &CudaStorage,
            lg: &Layout,
            su: &CudaStorage,
            lu: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sg.device().clone();
            let (g0, g1) = contiguous_offsets(lg, "gate")?;
            let (u0, u1) = contiguous_offsets(lu, "up")?;
            let n = g1 - g0;
            // Up to 8 elements per thread.
            let cfg = elementwise_config(n.div_ceil(8));
            macro_rules! launch {
                ($variant:ident, $t:ty, $name:literal) => {{
                    let (CudaStorageSlice::$variant(g), CudaStorageSlice::$variant(u)) =
                        (&sg.slice, &su.slice)
                    else {
                        candle_core::bail!("silu-mul: gate and up must share one dtype")
                    };
                    let func = dev.get_or_load_custom_func($name, MODULE, PTX)?;
                    // SAFETY: every element is written by the kernel.
                    let out = unsafe { dev.alloc::<$t>(n)? };
                    let (g, u) = (g.slice(g0..g1), u.slice(u0..u1));
                    let n64 = n as u64;
                    let mut builder = func.builder();
                    builder.arg(&g);
                    builder.arg(&u);
                    builder.arg(&out);
                    builder.arg(&n64);
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { builder.launch(cfg) }.w()?;
                    CudaStorageSlice::$variant(out)
                }};
            }
            let slice = match sg.dtype() {
                DType::F32 => launch!(F32, f32, "silu_mul_f32"),
                DType::BF16 => launch!(BF16, half::bf16, "silu_mul_bf16"),
                DType::F16 => launch!(F16, half::f16, "silu_mul_f16"),
                d => candle_core::bail!("silu-mul: unsupported dtype {d:?}"),
            };
            Ok((CudaStorage { slice, device: dev }, lg.shape().clone()))
        }
    }

    use candle_core::cuda_backend::cudarc::driver::sys;

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
        fn name(&self) -> &'static str {
            "qkv-rope-append"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("qkv-rope-append is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sc: &CudaStorage,
            lc: &Layout,
            ss: &CudaStorage,
            ls: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sx.device().clone();
            let (x0, x1) = contiguous_offsets(lx, "qkv")?;
            let (c0, c1) = contiguous_offsets(lc, "cos")?;
            let (s0, s1) = contiguous_offsets(ls, "sin")?;
            fn held(t: &Tensor) -> (candle_core::StorageRef<'_>, &Layout) {
                t.storage_and_layout()
            }
            let (kst, kl) = held(&self.k_cache);
            let (vst, vl) = held(&self.v_cache);
            let (k0, k1) = contiguous_offsets(kl, "k cache")?;
            let (v0, v1) = contiguous_offsets(vl, "v cache")?;
            let bias_held = self.bias.as_ref().map(|bb| held(bb));
            let cfg = LaunchConfig {
                grid_dim: ((self.b * self.t) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let q_len = self.b * self.nh * self.t * self.hd;
            macro_rules! launch {
                ($variant:ident, $t:ty, $name:literal) => {{
                    let (
                        CudaStorageSlice::$variant(x),
                        CudaStorageSlice::$variant(c),
                        CudaStorageSlice::$variant(sn),
                    ) = (&sx.slice, &sc.slice, &ss.slice)
                    else {
                        candle_core::bail!("qkv-rope-append: qkv, cos and sin must share one dtype")
                    };
                    let kslice = match &*kst {
                        candle_core::Storage::Cuda(c) => c.as_cuda_slice::<$t>()?,
                        _ => candle_core::bail!(
                            "qkv-rope-append: the k cache must be on the CUDA device"
                        ),
                    };
                    let vslice = match &*vst {
                        candle_core::Storage::Cuda(c) => c.as_cuda_slice::<$t>()?,
                        _ => candle_core::bail!(
                            "qkv-rope-append: the v cache must be on the CUDA device"
                        ),
                    };
                    let func = dev.get_or_load_custom_func($name, MODULE, PTX)?;
                    // SAFETY: every element of q is written by the kernel.
                    let q = unsafe { dev.alloc::<$t>(q_len)? };
                    let (x, c, sn) = (x.slice(x0..x1), c.slice(c0..c1), sn.slice(s0..s1));
                    let (kv, vv) = (kslice.slice(k0..k1), vslice.slice(v0..v1));
                    let (t, nh, nkv, hd, cap, offset) = (
                        self.t as i32,
                        self.nh as i32,
                        self.nkv as i32,
                        self.hd as i32,
                        self.cap as i32,
                        self.offset as i32,
                    );
                    let null: u64 = 0;
                    let mut builder = func.builder();
                    builder.arg(&x);
                    let bias_view;
                    match &bias_held {
                        Some((bst, bl)) => {
                            let (b0, b1) = contiguous_offsets(bl, "bias")?;
                            let bslice = match &**bst {
                                candle_core::Storage::Cuda(cs) => cs.as_cuda_slice::<$t>()?,
                                _ => candle_core::bail!(
                                    "qkv-rope-append: the bias must be on the CUDA device"
                                ),
                            };
                            bias_view = bslice.slice(b0..b1);
                            builder.arg(&bias_view);
                        }
                        None => {
                            builder.arg(&null);
                        }
                    }
                    builder.arg(&c);
                    builder.arg(&sn);
                    builder.arg(&q);
                    builder.arg(&kv);
                    builder.arg(&vv);
                    builder.arg(&t);
                    builder.arg(&nh);
                    builder.arg(&nkv);
                    builder.arg(&hd);
                    builder.arg(&cap);
                    builder.arg(&offset);
                    // SAFETY: argument types and order match the kernel's signature; shapes and
                    // the cache's room were checked by `qkv_rope_append`. The cache buffers are
                    // written in place on the one stream that all their readers use.
                    unsafe { builder.launch(cfg) }.w()?;
                    CudaStorageSlice::$variant(q)
                }};
            }
            let slice = match sx.dtype() {
                DType::F32 => launch!(F32, f32, "qkv_rope_f32"),
                DType::BF16 => launch!(BF16, half::bf16, "qkv_rope_bf16"),
                DType::F16 => launch!(F16, half::f16, "qkv_rope_f16"),
                d => candle_core::bail!("qkv-rope-append: unsupported dtype {d:?}"),
            };
            Ok((
                CudaStorage { slice, device: dev },
                Shape::from((self.b, self.nh, self.t, self.hd)),
            ))
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
        if !fused_enabled() || !qkv.device().is_cuda() || suffix(qkv.dtype()).is_none() {
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

    /// Launches a one-dimensional elementwise kernel over `n` elements (grid-stride loops).
    fn elementwise_config(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    struct AddResidual;

    impl CustomOp2 for AddResidual {
        fn name(&self) -> &'static str {
            "add-residual"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("add-residual is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            sh: &CudaStorage,
            lh: &Layout,
            sd: &CudaStorage,
            ld: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sh.device().clone();
            let (h0, h1) = contiguous_offsets(lh, "h")?;
            let (d0, d1) = contiguous_offsets(ld, "delta")?;
            let n = h1 - h0;
            let CudaStorageSlice::F32(h) = &sh.slice else {
                candle_core::bail!("add-residual: h must be f32")
            };
            let h = h.slice(h0..h1);
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<f32>(n)? };
            let n64 = n as u64;
            macro_rules! launch {
                ($d:expr, $name:literal) => {{
                    let d = $d.slice(d0..d1);
                    let func = dev.get_or_load_custom_func($name, MODULE, PTX)?;
                    let mut builder = func.builder();
                    builder.arg(&h);
                    builder.arg(&d);
                    builder.arg(&out);
                    builder.arg(&n64);
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { builder.launch(elementwise_config(n)) }.w()?;
                }};
            }
            match &sd.slice {
                CudaStorageSlice::F32(d) => launch!(d, "add_residual_f32"),
                CudaStorageSlice::BF16(d) => launch!(d, "add_residual_bf16"),
                CudaStorageSlice::F16(d) => launch!(d, "add_residual_f16"),
                _ => candle_core::bail!("add-residual: unsupported delta dtype"),
            }
            Ok((
                CudaStorage {
                    slice: CudaStorageSlice::F32(out),
                    device: dev,
                },
                lh.shape().clone(),
            ))
        }
    }

    pub fn add_residual(h: &Tensor, delta: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !h.device().is_cuda()
            || h.dtype() != DType::F32
            || suffix(delta.dtype()).is_none()
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
        fn name(&self) -> &'static str {
            "rms-norm-to"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("rms-norm-to is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sw: &CudaStorage,
            lw: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = sx.device().clone();
            let (x0, x1) = contiguous_offsets(lx, "x")?;
            let (w0, w1) = contiguous_offsets(lw, "w")?;
            let (CudaStorageSlice::F32(x), CudaStorageSlice::F32(w)) = (&sx.slice, &sw.slice)
            else {
                candle_core::bail!("rms-norm-to: x and w must be f32")
            };
            let (x, w) = (x.slice(x0..x1), w.slice(w0..w1));
            let cols = w1 - w0;
            let n = x1 - x0;
            let rows = n / cols;
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let cols_i = cols as i32;
            macro_rules! launch {
                ($variant:ident, $t:ty, $name:literal) => {{
                    let func = dev.get_or_load_custom_func($name, MODULE, PTX)?;
                    // SAFETY: every element is written by the kernel.
                    let out = unsafe { dev.alloc::<$t>(n)? };
                    let mut builder = func.builder();
                    builder.arg(&x);
                    builder.arg(&w);
                    builder.arg(&out);
                    builder.arg(&cols_i);
                    builder.arg(&self.eps);
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { builder.launch(cfg) }.w()?;
                    CudaStorageSlice::$variant(out)
                }};
            }
            let slice = match self.dtype {
                DType::F32 => launch!(F32, f32, "rms_norm_to_f32"),
                DType::BF16 => launch!(BF16, half::bf16, "rms_norm_to_bf16"),
                DType::F16 => launch!(F16, half::f16, "rms_norm_to_f16"),
                d => candle_core::bail!("rms-norm-to: unsupported dtype {d:?}"),
            };
            Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
        }
    }

    pub fn rms_norm_to(x: &Tensor, w: &Tensor, eps: f32, dtype: DType) -> Result<Option<Tensor>> {
        let cols = w.elem_count();
        if !fused_enabled()
            || !x.device().is_cuda()
            || x.dtype() != DType::F32
            || w.dtype() != DType::F32
            || suffix(dtype).is_none()
            || w.rank() != 1
            || x.dims().last() != Some(&cols)
            || x.elem_count() / cols.max(1) > u32::MAX as usize
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
        fn name(&self) -> &'static str {
            "argmax-rows"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("argmax-rows is a CUDA kernel")
        }
        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let (o0, o1) = contiguous_offsets(l, "logits")?;
            let (rows, cols) = l.shape().dims2()?;
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<u32>(rows)? };
            let cols_i = cols as i32;
            macro_rules! launch {
                ($x:expr, $name:literal) => {{
                    let x = $x.slice(o0..o1);
                    let func = dev.get_or_load_custom_func($name, MODULE, PTX)?;
                    let mut builder = func.builder();
                    builder.arg(&x);
                    builder.arg(&out);
                    builder.arg(&cols_i);
                    // SAFETY: argument types and order match the kernel's signature.
                    unsafe { builder.launch(cfg) }.w()?;
                }};
            }
            match &s.slice {
                CudaStorageSlice::F32(x) => launch!(x, "argmax_rows_f32"),
                CudaStorageSlice::BF16(x) => launch!(x, "argmax_rows_bf16"),
                CudaStorageSlice::F16(x) => launch!(x, "argmax_rows_f16"),
                _ => candle_core::bail!("argmax-rows: unsupported dtype"),
            }
            Ok((
                CudaStorage {
                    slice: CudaStorageSlice::U32(out),
                    device: dev,
                },
                Shape::from(rows),
            ))
        }
    }

    pub fn argmax_rows(logits: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !logits.device().is_cuda()
            || suffix(logits.dtype()).is_none()
            || logits.rank() != 2
            || logits.dim(1)? > i32::MAX as usize
            || logits.dim(0)? > u32::MAX as usize
        {
            return Ok(None);
        }
        Ok(Some(logits.contiguous()?.apply_op1_no_bwd(&ArgmaxRows)?))
    }

    /// The default memory pool of the device's context (what cuMemAllocAsync draws from).
    fn default_pool(d: &candle_core::CudaDevice) -> Result<sys::CUmemoryPool> {
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

    pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        if !fused_enabled()
            || !gate.device().is_cuda()
            || suffix(gate.dtype()).is_none()
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
}
