//! The `persona-geometry` binary's library: model loading (HF directory, HF cache, GGUF), LoRA
//! merging, chat templates, Method A/B extraction, study runs, import/export, and thin wrappers
//! over `shared` for the analysis commands.
//!
//! Layer convention: layer l = output of decoder block l (0-based), i.e. a forward hook on
//! `model.layers[l]`; the last block is taken before the final norm.

pub mod cmd_analysis;
// The model runtime lives in its own crate (shared with training); re-exported under the paths
// the commands and tests have always used.
pub use runtime::{cuda_ops, lora, model, template, tokenize, weights};
pub mod extract;
pub mod fixture_check;
pub mod full_study;
pub mod generate;
pub mod import;
pub mod io_util;
pub mod npy;
pub mod study;
pub mod train;
pub mod workload;

/// candle allocates a fresh buffer for every op; glibc returns large ones to the OS and pays a
/// page fault per page on the next step (about a fifth of decoding time). mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells the allocator to keep freed memory instead of returning it to the OS after 10 ms.
/// `analyze` frees and re-allocates buffers of tens of MB per fold and per draw batch; each
/// return made the kernel zero fresh huge pages on the next use (8% of the full-size analysis's
/// CPU time in a profile, 12% of its wall time). Costs ~1 GB more peak memory there; called
/// only by `analyze`.
pub fn keep_freed_memory() {
    // mimalloc's `mi_option_purge_delay` (index 15 in both its v2 and v3 option enums; the
    // crate does not export the constant): -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a plain integer option; called before the analysis starts its threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
