//! The model runtime shared by extraction and training: loading (HF directory, HF cache, GGUF),
//! tokenizer and chat template, LoRA merging, the decoder on candle tensors (Qwen2/Qwen2.5 and
//! Llama families) with its fused CUDA kernels.
//!
//! Layer convention: layer l = output of decoder block l (0-based), i.e. a forward hook on
//! `model.layers[l]`; the last block is taken before the final norm.

pub mod config;
pub mod cuda_ops;
pub mod hash;
mod kernel_modules;
pub mod lora;
pub mod model;
pub mod phases;
pub mod profile;
pub mod random;
pub mod residual_norm;
pub mod tc_attention;
pub mod template;
pub mod tokenize;
pub mod train_kernels;
pub mod weights;

/// A switch that is on unless the environment sets `var` to `0`: the `PG_*` switches that turn
/// one optimisation off to time or check it against the path it replaces on the same build.
pub fn env_switch_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v != "0")
}
