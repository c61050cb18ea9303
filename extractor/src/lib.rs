//! The `persona-geometry` binary's library: model loading (HF directory, HF cache, GGUF), LoRA
//! merging, chat templates, Method A/B extraction, study runs, import/export, and thin wrappers
//! over `shared` for the analysis commands.
//!
//! Layer convention: layer l = output of decoder block l (0-based), i.e. a forward hook on
//! `model.layers[l]`; the last block is taken before the final norm.

pub mod cmd_analysis;
pub mod cuda_ops;
pub mod extract;
pub mod fixture_check;
pub mod import;
pub mod io_util;
pub mod lora;
pub mod model;
pub mod npy;
pub mod study;
pub mod template;
pub mod tokenize;
pub mod weights;
pub mod workload;

/// candle allocates a fresh buffer for every op; glibc returns large ones to the OS and pays a
/// page fault per page on the next step (about a fifth of decoding time). mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
