//! Where our CUDA kernels' machine code comes from, so that a fresh machine does not pay for
//! compiling it inside the first step.
//!
//! The CUDA driver JIT-compiles PTX the first time a process on a machine loads it (the result
//! is kept in the driver's cache, ~/.nv/ComputeCache). Loaded as PTX, our decode.cu (890 kB of
//! PTX: three dtypes, several head dimensions) and train.cu cost a fresh H200 ~4 s inside
//! training's first step (5.4 s vs 1.4 s steady) and ~16 s inside the full study's first
//! checkpoint. build.rs now builds each as a fatbin holding machine code (SASS) for the build's
//! compute capability plus PTX for newer GPUs, and [`function`] loads kernels from those images:
//! on the card the build targets none of ours is compiled. candle's own kernels get the same
//! treatment in the vendored candle-kernels/candle-core (vendor/README.md): with the driver's
//! cache disabled a 7B training run took 38.0 s instead of 49.7 s (docs/benchmarks.md,
//! Training, session 8; loading candle's PTX ahead on a thread was tried first and compiled
//! whole modules for 24 s: slower).
//!
//! Only with the `cuda` feature.

#[cfg(all(feature = "cuda", test))]
pub(crate) use imp::defines;
#[cfg(feature = "cuda")]
pub(crate) use imp::{function, Kernel, DECODE, TRAIN};

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaModule, CudaStream, LaunchArgs,
    };
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// One of our kernel modules: its name (for errors) and fatbin image.
    pub(crate) struct OurModule {
        pub name: &'static str,
        image: &'static [u8],
    }

    pub(crate) static DECODE: OurModule = OurModule {
        name: "decode",
        image: include_bytes!(concat!(env!("OUT_DIR"), "/decode.fatbin")),
    };
    pub(crate) static TRAIN: OurModule = OurModule {
        name: "train",
        image: include_bytes!(concat!(env!("OUT_DIR"), "/train.fatbin")),
    };

    /// A kernel of ours, ready to launch on the device's stream.
    pub(crate) struct Kernel {
        func: CudaFunction,
        stream: Arc<CudaStream>,
    }

    impl Kernel {
        pub fn builder(&self) -> LaunchArgs<'_> {
            self.stream.launch_builder(&self.func)
        }
    }

    type Loaded = HashMap<(DeviceId, &'static str), Arc<CudaModule>>;

    fn loaded() -> &'static Mutex<Loaded> {
        static LOADED: OnceLock<Mutex<Loaded>> = OnceLock::new();
        LOADED.get_or_init(|| Mutex::new(HashMap::new()))
    }

    fn module(dev: &CudaDevice, m: &'static OurModule) -> candle_core::Result<Arc<CudaModule>> {
        let key = (dev.id(), m.name);
        // Held while loading: a second thread asking for the same module waits for this load
        // instead of loading it again.
        let mut map = loaded()
            .lock()
            .map_err(|_| candle_core::Error::Msg("kernel module cache poisoned".into()))?;
        if let Some(md) = map.get(&key) {
            return Ok(md.clone());
        }
        // The image is copied into a fresh allocation (malloc's alignment, which the driver
        // needs for a fatbin; `include_bytes!` data is only byte-aligned).
        let md = dev
            .cuda_stream()
            .context()
            .load_module(Ptx::from_binary(m.image.to_vec()))
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "loading the {} CUDA kernels: {e}; they were built for compute capability {} (machine code) and newer (PTX): on another card rebuild with CUDA_COMPUTE_CAP set to its capability (scripts/build_cuda.sh)",
                    m.name,
                    env!("PG_CUDA_COMPUTE_CAP")
                ))
            })?;
        map.insert(key, md.clone());
        Ok(md)
    }

    /// Whether module `m`'s image defines kernel `name`: its machine code names every kernel as
    /// a NUL-terminated symbol (what `load_function` will look up), so no GPU is needed.
    #[cfg(test)]
    pub(crate) fn defines(m: &OurModule, name: &str) -> bool {
        let symbol = [&[0u8][..], name.as_bytes(), &[0u8]].concat();
        m.image
            .windows(symbol.len())
            .any(|w| w == symbol.as_slice())
    }

    /// Kernel `name` of module `m` on `dev` (the module is loaded once per device).
    pub(crate) fn function(
        dev: &CudaDevice,
        m: &'static OurModule,
        name: &str,
    ) -> candle_core::Result<Kernel> {
        let func = module(dev, m)?.load_function(name).map_err(|e| {
            candle_core::Error::Msg(format!(
                "kernel {name} is not in the {} module ({e}); the binary's kernels and code disagree: rebuild",
                m.name
            ))
        })?;
        Ok(Kernel {
            func,
            stream: dev.cuda_stream(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use candle_core::cuda_backend::kernels;

        /// A fatbin starts with the magic 0xBA55ED50 (little-endian): these images load
        /// without JIT compilation, where PTX text would start with "//".
        fn is_fatbin(image: &[u8]) -> bool {
            image.len() > 8 && image[..4] == 0xBA55ED50u32.to_le_bytes()
        }

        #[test]
        fn our_kernel_modules_are_fatbins() {
            for m in [&DECODE, &TRAIN] {
                assert!(is_fatbin(m.image), "{} is not a fatbin", m.name);
            }
        }

        #[test]
        fn a_kernel_is_found_by_its_whole_name_only() {
            assert!(defines(&DECODE, "argmax_rows_bf16"));
            // A prefix of a real name, and a name that does not exist.
            assert!(!defines(&DECODE, "argmax_rows"));
            assert!(!defines(&DECODE, "argmax_rows_f64"));
        }

        #[test]
        fn the_candle_modules_we_launch_come_as_fatbins() {
            // The vendored candle-kernels builds these when CUDA_COMPUTE_CAP is set (as
            // scripts/build_cuda.sh does); without them the driver compiles their PTX.
            let launched = [
                ("affine", &kernels::AFFINE),
                ("binary", &kernels::BINARY),
                ("cast", &kernels::CAST),
                ("fill", &kernels::FILL),
                ("indexing", &kernels::INDEXING),
                ("reduce", &kernels::REDUCE),
                ("ternary", &kernels::TERNARY),
                ("unary", &kernels::UNARY),
            ];
            for (name, m) in launched {
                let image = m
                    .image()
                    .unwrap_or_else(|| panic!("candle's {name} has no image"));
                assert!(is_fatbin(image), "candle's {name} image is not a fatbin");
            }
        }
    }
}
