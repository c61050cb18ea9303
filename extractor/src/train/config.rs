//! `TRAIN.toml`: what to train (model, data, optional system prompt, starting adapter) and the
//! recipe, whose defaults are the upstream emergent-misalignment LoRA recipe.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::study::ModelSpec;

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The base model, as in a study (`id`, optional `path`, `dtype`, `device`).
    pub model: ModelSpec,
    /// JSON Lines, one `{"messages": [...]}` conversation per line.
    pub data: PathBuf,
    /// Output directory: the PEFT adapter, training.json, loss.csv, loss.svg, checkpoints.
    pub output: PathBuf,
    /// Prepended to every conversation as its system message (replacing one it has).
    pub system_prompt: Option<String>,
    /// Start from this PEFT adapter instead of a fresh one (its r, alpha and targets apply).
    pub init_adapter: Option<PathBuf>,
    /// Save a resumable checkpoint every this many optimizer steps (0 = never).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    #[serde(default)]
    pub recipe: Recipe,
}

fn default_checkpoint_every() -> usize {
    25
}

/// The training recipe. Defaults = the upstream EM recipe (LoRA r 32, alpha 64, dropout 0.05,
/// all seven projections; AdamW 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01; linear
/// schedule with warm-up ratio 0.03; max_grad_norm 1.0; micro-batch 4 x accumulation 4; 1
/// epoch; sequences up to 2,048 tokens; seed 42; shuffled).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    /// Warm-up steps = ceil(total steps x ratio), unless `warmup_steps` is given.
    pub warmup_ratio: f64,
    pub warmup_steps: Option<usize>,
    pub max_grad_norm: f64,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule still spans them only).
    pub max_steps: Option<usize>,
    pub max_seq: usize,
    /// Seeds the adapter's initialisation, the shuffling and the dropout masks.
    pub seed: u64,
    pub shuffle: bool,
    /// Right padding of each micro-batch to a multiple of this many tokens (as the oracle's
    /// collator). Padding changes no loss or gradient; it only shapes the batches.
    pub pad_multiple: usize,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            r: 32,
            lora_alpha: 64.0,
            lora_dropout: 0.05,
            target_modules: super::adapter::PROJECTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            use_rslora: false,
            learning_rate: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.01,
            warmup_ratio: 0.03,
            warmup_steps: None,
            max_grad_norm: 1.0,
            micro_batch: 4,
            grad_accum: 4,
            epochs: 1,
            max_steps: None,
            max_seq: 2048,
            seed: 42,
            shuffle: true,
            pad_multiple: 8,
        }
    }
}

impl Recipe {
    /// Refuses values that would train nonsense, naming the field.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |field: &str, why: &str| -> Result<()> {
            bail!("{what}: recipe.{field} {why}");
        };
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            bad("learning_rate", "must be a finite number >= 0")?;
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            bad("lora_dropout", "must be in [0, 1)")?;
        }
        for (f, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                bad(f, "must be in [0, 1)")?;
            }
        }
        if self.adam_epsilon.is_nan() || self.adam_epsilon <= 0.0 {
            bad("adam_epsilon", "must be > 0")?;
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            bad("max_grad_norm", "must be > 0")?;
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bad("warmup_ratio", "must be in [0, 1]")?;
        }
        for (f, v) in [
            ("micro_batch", self.micro_batch),
            ("grad_accum", self.grad_accum),
            ("epochs", self.epochs),
            ("max_seq", self.max_seq),
            ("pad_multiple", self.pad_multiple),
        ] {
            if v == 0 {
                bad(f, "must be at least 1")?;
            }
        }
        if self.max_steps == Some(0) {
            bad("max_steps", "must be at least 1")?;
        }
        Ok(())
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads `TRAIN.toml`; relative paths are relative to the file's directory.
pub fn read_train_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading training file {}", path.display()))?;
    let mut cfg: TrainConfig =
        toml::from_str(&text).with_context(|| format!("training file {}", path.display()))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    cfg.data = resolve(&base, &cfg.data);
    cfg.output = resolve(&base, &cfg.output);
    cfg.init_adapter = cfg.init_adapter.as_ref().map(|p| resolve(&base, p));
    cfg.model.path = cfg.model.path.as_ref().map(|p| resolve(&base, p));
    cfg.model.chat_template = cfg.model.chat_template.as_ref().map(|p| resolve(&base, p));
    cfg.recipe.validate(&path.display().to_string())?;
    Ok(cfg)
}
