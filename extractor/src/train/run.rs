//! A whole training run: load, tokenize, plan, train with checkpoints, write the PEFT adapter
//! with its provenance, the loss table and the loss figure.
//!
//! Reproducible: the same configuration, data and seed give the same bytes, also when the run
//! was killed and resumed (`--resume`), because a checkpoint holds the exact f32 adapter and
//! optimizer state, the plan is fixed before training, and dropout masks are keyed by the
//! micro-batch's index. Timings are printed, never written into the outputs.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::adapter::{safetensors_bytes, LoraShape, TrainableLora};
use super::config::TrainConfig;
use super::data::{read_examples, tokenize_example, Tokenized};
use super::forward::{Dropout, MicroBatch};
use super::optim::{AdamW, AdamWConfig};
use super::plan::plan_steps;
use super::schedule::{linear_warmup_lr, warmup_steps};
use super::trainer::{optimizer_step, StepRecord};
use crate::io_util::{sha256_file, sha256_hex, write_atomic};
use crate::study::{device_from, dtype_from};
use crate::weights::{load, resolve_model_path};

/// checkpoint/state.json: which state file holds the run after `step` optimizer steps.
#[derive(Serialize, Deserialize)]
struct CheckpointIndex {
    config_hash: String,
    step: usize,
    state_file: String,
    state_sha256: String,
    rows: Vec<StepRecord>,
}

pub struct TrainOutcome {
    pub output: PathBuf,
    pub rows: Vec<StepRecord>,
}

fn pad_token_id(tok: &tokenizers::Tokenizer, stop_ids: &[u32]) -> u32 {
    // The collator pads with the tokenizer's pad token (Qwen: <|endoftext|>); the id never
    // reaches a loss or a gradient, so any real token would do.
    ["<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>"]
        .iter()
        .find_map(|t| tok.token_to_id(t))
        .or_else(|| stop_ids.first().copied())
        .unwrap_or(0)
}

/// Trains as `cfg` says. `resume`: continue from the output directory's checkpoint.
pub fn run_train(cfg: &TrainConfig, resume: bool) -> Result<TrainOutcome> {
    let recipe = &cfg.recipe;
    recipe.validate("training configuration")?;
    let out = &cfg.output;
    // Before any loading: a finished run is never overwritten.
    let final_provenance = out.join("training.json");
    if final_provenance.exists() {
        bail!("{} already holds a finished training run ({}); choose another output directory or delete it", out.display(), final_provenance.display());
    }
    let device = device_from(cfg.model.device.as_deref())?;
    let dtype = dtype_from(cfg.model.dtype.as_deref(), &device)?;
    // A wrong kernel stops the run before any step (as `bench-workload` does for decoding).
    if let Some(line) = super::ops::check_cuda_kernels(&device)? {
        eprintln!("{line}");
    }
    let model_path = resolve_model_path(
        &cfg.model.id,
        cfg.model.path.as_deref(),
        cfg.model.revision.as_deref(),
    )?;
    eprintln!("loading {} from {}", cfg.model.id, model_path.display());
    let load_clock = std::time::Instant::now();
    let mut loaded = load(&model_path)?;
    crate::study::use_chat_template_of(
        &mut loaded,
        &cfg.model,
        Path::new("the training configuration"),
    )?;
    // The training forward (train::forward) is the Qwen2/Llama block; the other families'
    // extras (q/k norms, Gemma's norms, soft-capping, windows) exist in extraction only.
    if !matches!(
        loaded.cfg.arch,
        crate::model::Arch::Qwen2 | crate::model::Arch::Llama
    ) {
        bail!(
            "{}: `train` supports the Qwen2/Qwen2.5 and Llama families; {:?} models can be extracted (and their PEFT adapters merged) but not trained with this tool yet",
            model_path.display(),
            loaded.cfg.arch
        );
    }
    let template = loaded.chat_template()?;
    let examples = read_examples(&cfg.data, cfg.system_prompt.as_deref())?;
    let tokenized: Vec<Tokenized> = examples
        .iter()
        .map(|e| tokenize_example(&template, &loaded.tokenizer, e, recipe.max_seq, &cfg.data))
        .collect::<Result<_>>()?;
    let data_sha256 = sha256_file(&cfg.data)?;
    let init_hashes = match &cfg.init_adapter {
        Some(dir) => Some((
            sha256_file(&dir.join("adapter_config.json"))?,
            sha256_file(&dir.join("adapter_model.safetensors"))?,
        )),
        None => None,
    };
    let mut plan = plan_steps(
        tokenized.len(),
        recipe.micro_batch,
        recipe.grad_accum,
        recipe.epochs,
        recipe.shuffle.then_some(recipe.seed),
    );
    if let Some(m) = recipe.max_steps {
        plan.truncate(m);
    }
    let total = plan.len();
    let warmup = recipe
        .warmup_steps
        .unwrap_or_else(|| warmup_steps(total, recipe.warmup_ratio));
    // Everything that determines the result.
    let hash_input = serde_json::json!({
        "tool": shared::TOOL_VERSION,
        "model": {"id": cfg.model.id, "files": loaded.files, "dtype": format!("{dtype:?}"), "device": cfg.model.device},
        "data_sha256": data_sha256,
        "system_prompt": cfg.system_prompt,
        "init_adapter": init_hashes,
        "recipe": recipe,
    });
    let config_hash = sha256_hex(serde_json::to_string(&hash_input)?.as_bytes());

    let ckpt_dir = out.join("checkpoint");
    let index_path = ckpt_dir.join("state.json");
    let index: Option<CheckpointIndex> = if index_path.exists() {
        let idx: CheckpointIndex = serde_json::from_str(
            &std::fs::read_to_string(&index_path)
                .with_context(|| format!("reading {}", index_path.display()))?,
        )
        .with_context(|| format!("parsing {}", index_path.display()))?;
        if idx.config_hash != config_hash {
            bail!("{} is a checkpoint of a different training run (model files, data, system prompt, starting adapter or recipe changed); delete {} to start over, or restore the original configuration", index_path.display(), ckpt_dir.display());
        }
        if !resume {
            bail!(
                "{} holds a checkpoint after step {} of this run; pass --resume to continue it (or delete {} to start over)",
                out.display(),
                idx.step,
                ckpt_dir.display()
            );
        }
        Some(idx)
    } else {
        if resume {
            eprintln!(
                "--resume: no checkpoint in {}, starting from step 0",
                out.display()
            );
        }
        None
    };

    let n_layers = loaded.cfg.num_layers;
    let model_cfg = loaded.cfg.clone();
    let model = crate::model::Model::new(loaded.cfg.clone(), loaded.weights, &device, dtype)?;
    let lora = match &cfg.init_adapter {
        Some(dir) => {
            let l = TrainableLora::load(dir, &model_cfg, &device, DType::F32)?;
            if l.shape.r != recipe.r || l.shape.alpha != recipe.lora_alpha {
                eprintln!(
                    "note: the starting adapter's r = {} and lora_alpha = {} apply (the recipe's r = {} and lora_alpha = {} do not)",
                    l.shape.r, l.shape.alpha, recipe.r, recipe.lora_alpha
                );
            }
            l
        }
        None => {
            let shape = LoraShape::new(
                recipe.r,
                recipe.lora_alpha,
                recipe.use_rslora,
                &recipe.target_modules,
            )?;
            TrainableLora::init(&model_cfg, &shape, recipe.seed, &device, DType::F32)?
        }
    };
    let named: Vec<(String, Var)> = lora
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.clone()))
        .collect();
    let vars: Vec<&Var> = named.iter().map(|(_, v)| v).collect();
    let mut adam = AdamW::new(
        AdamWConfig {
            beta1: recipe.adam_beta1,
            beta2: recipe.adam_beta2,
            eps: recipe.adam_epsilon,
            weight_decay: recipe.weight_decay,
        },
        &vars,
    )?;
    let mut rows: Vec<StepRecord> = Vec::new();
    if let Some(idx) = &index {
        let state_path = ckpt_dir.join(&idx.state_file);
        let sha = sha256_file(&state_path)?;
        if sha != idx.state_sha256 {
            bail!("{}: its SHA-256 is not the one {} recorded (the file was changed or damaged); delete {} to start over", state_path.display(), index_path.display(), ckpt_dir.display());
        }
        let state = candle_core::safetensors::load(&state_path, &device)
            .with_context(|| format!("reading {}", state_path.display()))?;
        let get = |k: &str| -> Result<Tensor> {
            state
                .get(k)
                .cloned()
                .with_context(|| format!("{}: tensor `{k}` missing", state_path.display()))
        };
        for (i, (name, var)) in named.iter().enumerate() {
            var.set(&get(name)?)?;
            adam.m[i].set(&get(&format!("adam.m.{name}"))?)?;
            adam.v[i].set(&get(&format!("adam.v.{name}"))?)?;
        }
        adam.steps = idx.step as u64;
        rows = idx.rows.clone();
        eprintln!("resuming after step {} of {total}", idx.step);
    }
    eprintln!(
        "model ready in {:.1} s; {} examples, {total} optimizer steps",
        load_clock.elapsed().as_secs_f64(),
        tokenized.len()
    );
    let start = rows.len();
    // Logs (SLURM, nohup) get one line per step where no terminal shows the bar.
    let plain_log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let micro_before: Vec<usize> = plan
        .iter()
        .scan(0usize, |acc, s| {
            let here = *acc;
            *acc += s.len();
            Some(here)
        })
        .collect();
    let pad_id = pad_token_id(&loaded.tokenizer, &loaded.stop_ids);
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "train [{bar:30}] {pos}/{len} steps {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    // PG_POOL_TRACE=1: the CUDA pool's bytes after loading and after every step, each step's
    // own peaks (what attributes nvidia-smi's peak to a phase).
    let pool_trace = std::env::var_os("PG_POOL_TRACE").is_some();
    let mut pool_peaks = (0u64, 0u64);
    let mut trace_pool = |what: &str| -> Result<()> {
        if let Some(p) = runtime::cuda_ops::pool_stats(&device, true)? {
            pool_peaks = (
                pool_peaks.0.max(p.used_high),
                pool_peaks.1.max(p.reserved_high),
            );
            eprintln!(
                "pool after {what}: in use {:.2} GB, held {:.2} GB; peaks since the last line: in use {:.2} GB, held {:.2} GB",
                p.used as f64 / 1e9, p.reserved as f64 / 1e9, p.used_high as f64 / 1e9, p.reserved_high as f64 / 1e9
            );
        }
        Ok(())
    };
    if pool_trace {
        trace_pool("loading")?;
    }
    #[cfg(feature = "host-profile")]
    let host_profiler = match std::env::var_os("PG_HOST_PROFILE") {
        Some(path) => Some((
            path,
            pprof::ProfilerGuardBuilder::default()
                .frequency(499)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                .context("starting the host profiler")?,
        )),
        None => None,
    };
    let clock = std::time::Instant::now();
    let mut trained_tokens = 0usize;
    for (s, step) in plan.iter().enumerate().skip(start) {
        let mbs = step
            .iter()
            .map(|ids| {
                let ex: Vec<&Tokenized> = ids.iter().map(|&i| &tokenized[i]).collect();
                MicroBatch::new(&ex, pad_id, recipe.pad_multiple, &device)
            })
            .collect::<Result<Vec<_>>>()?;
        let dropout: Vec<Option<Dropout>> = (0..mbs.len())
            .map(|k| {
                (recipe.lora_dropout > 0.0).then_some(Dropout {
                    p: recipe.lora_dropout,
                    seed: recipe.seed,
                    micro_batch: (micro_before[s] + k) as u64,
                })
            })
            .collect();
        let lr = linear_warmup_lr(recipe.learning_rate, s, warmup, total);
        let mut rec = optimizer_step(
            &model,
            &lora,
            &mut adam,
            &mbs,
            &dropout,
            lr,
            recipe.max_grad_norm,
        )
        .with_context(|| format!("optimizer step {}", s + 1))?;
        rec.step = s + 1;
        trained_tokens += rec.tokens;
        rows.push(rec.clone());
        let status = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            rec.loss,
            lr,
            trained_tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9)
        );
        if plain_log {
            eprintln!("step {}/{total}: {status}", s + 1);
        }
        bar.set_message(status);
        bar.inc(1);
        if pool_trace {
            trace_pool(&format!("step {}", s + 1))?;
        }
        let done = s + 1;
        if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < total {
            save_checkpoint(&ckpt_dir, &config_hash, done, &named, &adam, &rows)?;
        }
    }
    bar.finish();
    let secs = clock.elapsed().as_secs_f64();
    #[cfg(feature = "host-profile")]
    if let Some((path, guard)) = host_profiler {
        write_folded_stacks(&guard.report().build()?, std::path::Path::new(&path))?;
    }
    eprintln!(
        "trained {} steps ({} tokens) in {secs:.1} s: {:.0} tokens/s on {}",
        total - start,
        trained_tokens,
        trained_tokens as f64 / secs.max(1e-9),
        if device.is_cuda() { "CUDA" } else { "CPU" }
    );
    if runtime::profile::host_timing() {
        eprintln!("host timing (s): {}", runtime::profile::take_totals());
    }
    if let Some(p) = runtime::cuda_ops::pool_stats(&device, false)? {
        let (used, reserved) = (
            p.used_high.max(pool_peaks.0),
            p.reserved_high.max(pool_peaks.1),
        );
        eprintln!(
            "GPU memory: peak in use {:.2} GB, peak held by the memory pool {:.2} GB (nvidia-smi adds the CUDA context)",
            used as f64 / 1e9,
            reserved as f64 / 1e9
        );
    }

    lora.save_peft(out, &cfg.model.id, recipe.lora_dropout)?;
    write_loss_outputs(out, &rows, cfg, &lora.shape)?;
    let provenance = serde_json::json!({
        "tool_version": shared::TOOL_VERSION,
        "config_hash": config_hash,
        "layer_convention": "training adapts the projections of every decoder block; no layer is captured",
        "model": {"id": cfg.model.id, "source": loaded.source, "files": loaded.files, "dtype": format!("{dtype:?}"), "device": cfg.model.device.clone().unwrap_or_else(|| "cpu".into()), "layers": n_layers},
        "data": {"path": cfg.data.display().to_string(), "sha256": data_sha256, "examples": tokenized.len(), "label_tokens": tokenized.iter().map(|t| t.label_tokens()).sum::<usize>(), "tokens": tokenized.iter().map(|t| t.ids.len()).sum::<usize>()},
        "system_prompt": cfg.system_prompt,
        "init_adapter": cfg.init_adapter.as_ref().map(|p| serde_json::json!({"path": p.display().to_string(), "config_sha256": init_hashes.as_ref().map(|h| &h.0), "weights_sha256": init_hashes.as_ref().map(|h| &h.1)})),
        "recipe": recipe,
        "resolved": {"optimizer_steps": total, "warmup_steps": warmup, "pad_token_id": pad_id, "lora_scale": lora.shape.scale(), "r": lora.shape.r, "lora_alpha": lora.shape.alpha, "target_modules": lora.shape.targets},
        "adapter_sha256": sha256_file(&out.join("adapter_model.safetensors"))?,
        "steps": rows,
    });
    write_atomic(
        &final_provenance,
        serde_json::to_string_pretty(&provenance)?.as_bytes(),
    )?;
    if ckpt_dir.exists() {
        std::fs::remove_dir_all(&ckpt_dir)
            .with_context(|| format!("removing {}", ckpt_dir.display()))?;
    }
    eprintln!("wrote the adapter to {}", out.display());
    Ok(TrainOutcome {
        output: out.clone(),
        rows,
    })
}

/// Adapter and optimizer state after `step` steps, written whole before the index points to
/// it; the previous state file is removed only after that, so a kill at any moment leaves a
/// complete checkpoint.
fn save_checkpoint(
    dir: &Path,
    config_hash: &str,
    step: usize,
    named: &[(String, Var)],
    adam: &AdamW,
    rows: &[StepRecord],
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (i, (name, var)) in named.iter().enumerate() {
        tensors.insert(name.clone(), var.as_tensor().to_device(&Device::Cpu)?);
        tensors.insert(
            format!("adam.m.{name}"),
            adam.m[i].as_tensor().to_device(&Device::Cpu)?,
        );
        tensors.insert(
            format!("adam.v.{name}"),
            adam.v[i].as_tensor().to_device(&Device::Cpu)?,
        );
    }
    let bytes = safetensors_bytes(&tensors)?;
    let file = format!("state-{step:07}.safetensors");
    write_atomic(&dir.join(&file), &bytes)?;
    let index = CheckpointIndex {
        config_hash: config_hash.to_string(),
        step,
        state_file: file.clone(),
        state_sha256: sha256_hex(&bytes),
        rows: rows.to_vec(),
    };
    write_atomic(
        &dir.join("state.json"),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if name.starts_with("state-") && name != file {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(())
}

/// loss.csv (every step's record) and loss.svg/.png (the loss curve with its provenance
/// caption).
fn write_loss_outputs(
    out: &Path,
    rows: &[StepRecord],
    cfg: &TrainConfig,
    shape: &LoraShape,
) -> Result<()> {
    let mut csv = String::from("step,loss,grad_norm_before_clip,lr,label_tokens,tokens\n");
    for r in rows {
        csv += &format!(
            "{},{},{},{},{},{}\n",
            r.step, r.loss, r.grad_norm_before_clip, r.lr, r.label_tokens, r.tokens
        );
    }
    write_atomic(&out.join("loss.csv"), csv.as_bytes())?;
    let data_name = cfg
        .data
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let fig = shared::figures::Figure {
        title: format!("Training loss: {data_name}"),
        caption: format!(
            "Summed token cross-entropy of each optimizer step's batch / its label tokens; model {}, LoRA r {} alpha {}, lr {}, seed {}.",
            cfg.model.id, shape.r, shape.alpha, cfg.recipe.learning_rate, cfg.recipe.seed
        ),
        kind: shared::figures::FigureKind::Curve {
            x: rows.iter().map(|r| r.step as f64).collect(),
            y: rows.iter().map(|r| r.loss).collect(),
            x_label: "optimizer step".into(),
            y_label: "loss".into(),
        },
    };
    crate::cmd_analysis::write_figure_files(
        out,
        &fig,
        "loss",
        &crate::cmd_analysis::figure_render_options(),
    )
}

/// The host profile as folded stacks ("outer;…;inner count" per line, the input of
/// flamegraph tools), heaviest first.
#[cfg(feature = "host-profile")]
fn write_folded_stacks(report: &pprof::Report, path: &Path) -> Result<()> {
    let mut lines: Vec<(isize, String)> = report
        .data
        .iter()
        .map(|(frames, &count)| {
            let stack: Vec<String> = frames
                .frames
                .iter()
                .rev()
                .map(|f| f.iter().map(|s| s.name()).collect::<Vec<_>>().join(";"))
                .collect();
            (count, format!("{};{}", frames.thread_name, stack.join(";")))
        })
        .collect();
    lines.sort_by(|a, b| b.0.cmp(&a.0));
    let text: String = lines.iter().map(|(c, s)| format!("{s} {c}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
