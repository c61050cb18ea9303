//! The `train` command's flags: a TRAIN.toml, or flags alone, or a file with flags overriding
//! its fields.

use anyhow::{bail, Result};
use std::path::PathBuf;

use super::config::{read_train_config, Recipe, TrainConfig};
use crate::study::ModelSpec;

#[derive(clap::Args, Debug, Default)]
pub struct TrainArgs {
    /// TRAIN.toml (see docs/training.md); flags below override its fields.
    pub config: Option<PathBuf>,
    /// Base model identity (a Hugging Face repo id; the adapter declares it as its base).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Local HF directory or .gguf file (without it the HF cache is searched for --model-id).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Training data: JSON Lines of {"messages": [...]} conversations.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory (PEFT adapter, training.json, loss.csv, loss.svg).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// System prompt prepended to every conversation (replacing its own).
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Start from this PEFT adapter.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// cpu (default), cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Frozen weights' dtype: f32 (CPU default) or bf16 (CUDA default); LoRA and AdamW stay f32.
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// LoRA rank.
    #[arg(long)]
    pub r: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    #[arg(long)]
    pub max_seq: Option<usize>,
    /// Keep the file's order (no shuffling).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Checkpoint every this many optimizer steps (0 = never).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue from the output directory's checkpoint.
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    pub fn to_config(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => read_train_config(p)?,
            None => {
                let (Some(id), Some(data), Some(out)) = (&self.model_id, &self.data, &self.out)
                else {
                    bail!("train: give a TRAIN.toml, or at least --model-id, --data and --out (and --model-path unless the model is in the Hugging Face cache)");
                };
                TrainConfig {
                    model: ModelSpec {
                        id: id.clone(),
                        path: None,
                        revision: None,
                        dtype: None,
                        device: None,
                        chat_template: None,
                    },
                    data: data.clone(),
                    output: out.clone(),
                    system_prompt: None,
                    init_adapter: None,
                    checkpoint_every: 25,
                    recipe: Recipe::default(),
                }
            }
        };
        fn set<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        if let Some(id) = &self.model_id {
            cfg.model.id = id.clone();
        }
        set(&mut cfg.model.path, &self.model_path);
        set(&mut cfg.model.device, &self.device);
        set(&mut cfg.model.dtype, &self.dtype);
        set(&mut cfg.system_prompt, &self.system_prompt);
        set(&mut cfg.init_adapter, &self.init_adapter);
        if let Some(d) = &self.data {
            cfg.data = d.clone();
        }
        if let Some(o) = &self.out {
            cfg.output = o.clone();
        }
        if let Some(c) = self.checkpoint_every {
            cfg.checkpoint_every = c;
        }
        let r = &mut cfg.recipe;
        macro_rules! over {
            ($($flag:ident => $field:ident),*) => {$(
                if let Some(v) = self.$flag {
                    r.$field = v;
                }
            )*};
        }
        over!(seed => seed, epochs => epochs, lr => learning_rate, r => r, lora_alpha => lora_alpha,
              lora_dropout => lora_dropout, micro_batch => micro_batch, grad_accum => grad_accum,
              max_seq => max_seq);
        if self.max_steps.is_some() {
            r.max_steps = self.max_steps;
        }
        if self.no_shuffle {
            r.shuffle = false;
        }
        r.validate("train flags")?;
        Ok(cfg)
    }
}
