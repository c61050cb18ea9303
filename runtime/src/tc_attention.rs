//! Host side of the tensor-core attention (src/kernels/attention_tc.cuh): which calls it serves,
//! its launch geometry and the launches. `cuda_ops::cached_attention` routes bf16/f16 calls at
//! head dimension 64 or 128 here (same contract: q [b, nh, t, hd], the cache buffers
//! [b, nkv, cap, hd], `first_key` [b], output [b, t, nh·hd]); f32 and other head dimensions keep
//! the CUDA-core kernel, so the f32 parity checks (`verify-fixture`) still run that one, while
//! `bench-workload` checks this one against an f32 reference before timing anything.
//! `PG_TC_ATTENTION=0` turns it off (to time the CUDA-core kernel on the same build).
//!
//! The kernels and launches only with the `cuda` feature; without it [`serves`] is false.

#[cfg(feature = "cuda")]
pub(crate) use imp::{applies, launch, Dims};

/// Whether `cuda_ops::cached_attention` runs on the tensor cores for this dtype and head
/// dimension (on a CUDA device) rather than on the CUDA-core kernel.
pub fn serves(dtype: candle_core::DType, hd: usize) -> bool {
    #[cfg(feature = "cuda")]
    return applies(dtype, hd);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (dtype, hd);
        false
    }
}

/// Keys per shared-memory tile (TC_KEYS in the kernel).
const TILE_KEYS: usize = 64;
/// Blocks below which a decoding call is split over its cache (flash-decoding): about two waves
/// on a 132-SM H100/H200; a card with fewer SMs only gets longer splits.
const SPLIT_BELOW_BLOCKS: usize = 264;
/// A split covers at least this many tiles, so that merging never costs more than it saves.
const MIN_TILES_PER_SPLIT: usize = 2;

/// Flash-decoding splits for a call of the decoding shape with `blocks` (row, KV head) blocks
/// over `keys` cached keys: enough blocks to fill the card when the batch is small and the cache
/// long, never splits shorter than MIN_TILES_PER_SPLIT tiles. Outside `imp` so that the CPU
/// test suite checks it.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn decode_splits(blocks: usize, keys: usize) -> usize {
    let tiles = keys.div_ceil(TILE_KEYS);
    if blocks >= SPLIT_BELOW_BLOCKS || tiles < 2 * MIN_TILES_PER_SPLIT {
        return 1;
    }
    SPLIT_BELOW_BLOCKS
        .div_ceil(blocks)
        .min(tiles / MIN_TILES_PER_SPLIT)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::decode_splits;

    #[test]
    fn splits_only_small_batches_with_long_caches() {
        // The 7B study's decoding (720 rows x 4 KV heads): never split.
        assert_eq!(decode_splits(2880, 300), 1);
        // One row, 4 KV heads, 2,000 cached keys: 32 tiles, 66 splits wanted, 16 allowed.
        assert_eq!(decode_splits(4, 2000), 16);
        // Short caches are not split (fewer than 4 tiles).
        assert_eq!(decode_splits(4, 190), 1);
        // 16 rows x 4 heads = 64 blocks, 640 keys: 10 tiles, 5 wanted, 5 allowed.
        assert_eq!(decode_splits(64, 640), 5);
        // 260 blocks, just under the threshold, 2,000 keys: 2 wanted, 16 allowed.
        assert_eq!(decode_splits(260, 2000), 2);
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use crate::kernel_modules::{function, DECODE};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::DType;
    use std::sync::OnceLock;

    use super::{decode_splits, TILE_KEYS};

    /// Threads per block (TC_THREADS in the kernel).
    const THREADS: u32 = 128;
    /// M rows of one MMA tile: a decoding call whose t·rep fits takes the WK = 4 shape.
    const MMA_ROWS: usize = 16;

    fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| crate::env_switch_on("PG_TC_ATTENTION"))
    }

    /// Whether the tensor-core kernel serves this dtype and head dimension.
    pub(crate) fn applies(dtype: DType, hd: usize) -> bool {
        enabled() && matches!(dtype, DType::BF16 | DType::F16) && matches!(hd, 64 | 128)
    }

    /// The shape of a `cached_attention` call, for either kernel (the caller checked it
    /// against the tensors).
    pub(crate) struct Dims {
        pub b: usize,
        pub t: usize,
        pub nh: usize,
        pub nkv: usize,
        pub cap: usize,
        pub hd: usize,
        pub offset: usize,
    }

    /// The fatbin entry of one of the kernels ("prefill", "decode" or "combine").
    fn kernel_name(kind: &str, sfx: &str, hd: usize) -> String {
        format!("tc_attention_{kind}_{sfx}_hd{hd}")
    }

    /// Dynamic shared memory: one K and one V tile of padded rows (16-bit elements), below the
    /// 48 kB a kernel may use without opting in.
    fn shared_bytes(hd: usize) -> u32 {
        (2 * TILE_KEYS * (hd + 8) * 2) as u32
    }

    /// Runs the attention into `out` ([b, t, nh, hd]); `sfx` is the dtype's kernel suffix.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch<T: DeviceRepr>(
        dev: &CudaDevice,
        sfx: &str,
        q: &CudaView<T>,
        k: &CudaView<T>,
        v: &CudaView<T>,
        first_key: &CudaView<u32>,
        out: &mut CudaSlice<T>,
        d: &Dims,
        scale: f32,
    ) -> candle_core::Result<()> {
        let m_rows = d.t * (d.nh / d.nkv);
        let decoding = m_rows <= MMA_ROWS;
        let (shape, x_blocks, splits) = if decoding {
            let splits = decode_splits(d.b * d.nkv, d.offset + d.t);
            ("decode", splits, splits)
        } else {
            ("prefill", m_rows.div_ceil(4 * MMA_ROWS), 1)
        };
        let (nh, nkv, cap, t, offset, splits_i) = (
            d.nh as i32,
            d.nkv as i32,
            d.cap as i32,
            d.t as i32,
            d.offset as i32,
            splits as i32,
        );
        // The splits' states, [b, nkv, splits, 16] (o: hd floats; m, l: 2 floats), exist only
        // when there are splits: with one the kernel never touches them and gets null pointers.
        let states = if splits > 1 {
            let slots = d.b * d.nkv * splits * MMA_ROWS;
            // SAFETY: the attention kernel writes every slot the merge reads.
            Some(unsafe {
                (
                    dev.alloc::<f32>(slots * d.hd)?,
                    dev.alloc::<f32>(slots * 2)?,
                )
            })
        } else {
            None
        };
        let null: u64 = 0;
        let f = function(dev, &DECODE, &kernel_name(shape, sfx, d.hd))?;
        let cfg = LaunchConfig {
            grid_dim: (x_blocks as u32, d.nkv as u32, d.b as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared_bytes(d.hd),
        };
        let mut builder = f.builder();
        builder.arg(q).arg(k).arg(v).arg(first_key).arg(&mut *out);
        match &states {
            Some((part_o, part_ml)) => builder.arg(part_o).arg(part_ml),
            None => builder.arg(&null).arg(&null),
        };
        builder.arg(&nh).arg(&nkv).arg(&cap).arg(&t).arg(&offset);
        builder.arg(&scale).arg(&splits_i);
        // SAFETY: argument types and order match tc_attention_{prefill,decode} (a null u64 for
        // a pointer it does not dereference with one split); the caller checked the shapes and
        // the cache's room; the shared memory is below the default limit.
        unsafe { builder.launch(cfg) }.w()?;
        if let Some((part_o, part_ml)) = &states {
            let merge = function(dev, &DECODE, &kernel_name("combine", sfx, d.hd))?;
            let cfg = LaunchConfig {
                grid_dim: (d.nkv as u32, d.b as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = merge.builder();
            builder.arg(part_o).arg(part_ml).arg(&mut *out);
            builder.arg(&nh).arg(&nkv).arg(&t).arg(&splits_i);
            // SAFETY: matches tc_attention_combine; the states were written by the launch above
            // on the same stream.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::kernel_name;

        #[test]
        fn every_kernel_the_launches_name_is_in_the_fatbin() {
            for sfx in ["bf16", "f16"] {
                for hd in [64, 128] {
                    for kind in ["prefill", "decode", "combine"] {
                        let n = kernel_name(kind, sfx, hd);
                        assert!(
                            crate::kernel_modules::defines(&crate::kernel_modules::DECODE, &n),
                            "{n} is not in the decode fatbin"
                        );
                    }
                }
            }
            assert!(!crate::kernel_modules::defines(
                &crate::kernel_modules::DECODE,
                &kernel_name("decode", "f32", 128)
            ));
        }
    }
}
