//! `persona-geometry generate`: answer conversations with a model's own greedy replies.
//!
//! Input: JSON Lines of `{"messages": [...]}` (the training format). A trailing assistant turn
//! is dropped; the conversation up to its last user turn is rendered with the model's chat
//! template and the generation prompt, and the greedy reply becomes the new assistant turn.
//! The default study's null finetune (issue #15) is trained on the base model's replies to the
//! EM prompts: self-distillation, a finetune of the same recipe that should change little.
//!
//! Same inputs, batch size and device: same bytes out. The output is written atomically with a
//! provenance sidecar (`OUT.provenance.json`: tool version, model files, adapter hashes, input
//! SHA-256, settings, replies cut at the token limit).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::extract::run_batch_with;
use crate::io_util::write_atomic;
use crate::lora::merge_adapter;
use crate::model::Model;
use crate::study::{device_from, dtype_from};
use crate::tokenize::{decode, encode};
use crate::weights::{load, resolve_model_path};
use runtime::hash::sha256_file;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Conversations: JSON Lines of {"messages": [...]} (a trailing assistant turn is replaced).
    #[arg(long)]
    pub data: PathBuf,
    /// Output JSON Lines (same order; OUT.provenance.json beside it).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Model identity (a Hugging Face repo id).
    #[arg(long)]
    pub model_id: String,
    /// Local HF directory or .gguf file (without it the HF cache is searched for --model-id).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// PEFT adapter merged into the model before generating.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// System prompt put before every conversation (replacing its own).
    #[arg(long)]
    pub system_prompt: Option<String>,
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// Prompts per batch (left-padded; sorted by length so padding stays small).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// cpu (default), cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32 (CPU default) or bf16 (CUDA default).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// The conversation to answer: every turn up to the last user turn (a system prompt replaced
/// when one is given). Errors name the line.
pub fn prompt_messages(
    line: &str,
    lineno: usize,
    path: &Path,
    system_prompt: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
        format!(
            "{}:{lineno}: not JSON (expected {{\"messages\": [...]}})",
            path.display()
        )
    })?;
    let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) else {
        bail!("{}:{lineno}: no `messages` array", path.display());
    };
    let role = |m: &serde_json::Value| m.get("role").and_then(|r| r.as_str()).map(str::to_owned);
    let mut turns: Vec<serde_json::Value> = msgs.clone();
    while turns.last().and_then(role).as_deref() == Some("assistant") {
        turns.pop();
    }
    if turns.last().and_then(role).as_deref() != Some("user") {
        bail!(
            "{}:{lineno}: the conversation has no user turn to answer (roles: {:?})",
            path.display(),
            msgs.iter().map(role).collect::<Vec<_>>()
        );
    }
    if let Some(sp) = system_prompt {
        turns.retain(|m| role(m).as_deref() != Some("system"));
        turns.insert(0, serde_json::json!({"role": "system", "content": sp}));
    }
    Ok(turns)
}

pub fn run_generate(a: &GenerateArgs) -> Result<()> {
    if a.batch == 0 || a.max_new_tokens == 0 {
        bail!("generate: --batch and --max-new-tokens must be at least 1");
    }
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let mut conversations = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        conversations.push(prompt_messages(
            line,
            i + 1,
            &a.data,
            a.system_prompt.as_deref(),
        )?);
    }
    if conversations.is_empty() {
        bail!("{}: no conversations", a.data.display());
    }
    let device = device_from(a.device.as_deref())?;
    let dtype = dtype_from(a.dtype.as_deref(), &device)?;
    let model_path = resolve_model_path(&a.model_id, a.model_path.as_deref(), None)?;
    eprintln!("loading {} from {}", a.model_id, model_path.display());
    let loaded = load(&model_path)?;
    let template = loaded.chat_template()?;
    let mut weights = loaded.weights.clone();
    let mut adapter_prov = Vec::new();
    if let Some(dir) = &a.adapter {
        adapter_prov = merge_adapter(dir, &mut weights, &a.model_id, false, &device)?.provenance;
    }
    let model = Model::new(loaded.cfg.clone(), weights, &device, dtype)?;
    let prompts: Vec<Vec<u32>> = conversations
        .iter()
        .map(|c| encode(&loaded.tokenizer, &template.render_messages(c, true)?))
        .collect::<Result<_>>()?;
    // Longest first: the first batch shows at once whether memory suffices.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(prompts[i].len()), i));
    let mut replies = vec![String::new(); prompts.len()];
    let mut cut_at_limit = 0usize;
    let clock = std::time::Instant::now();
    let mut new_tokens = 0usize;
    for (bi, chunk) in order.chunks(a.batch).enumerate() {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let out = run_batch_with(
            &model,
            &loaded.stop_ids,
            &[],
            &batch,
            a.max_new_tokens,
            true,
        )?;
        for (&i, r) in chunk.iter().zip(&out) {
            if r.generated.len() == r.response.len() && r.response.len() >= a.max_new_tokens {
                cut_at_limit += 1;
            }
            new_tokens += r.response.len();
            replies[i] = decode(&loaded.tokenizer, &r.response)?;
        }
        eprintln!(
            "generate: {}/{} prompts, {:.0} tokens/s",
            ((bi + 1) * a.batch).min(prompts.len()),
            prompts.len(),
            new_tokens as f64 / clock.elapsed().as_secs_f64()
        );
    }
    let mut out = String::new();
    for (c, reply) in conversations.iter().zip(&replies) {
        let mut msgs = c.clone();
        msgs.push(serde_json::json!({"role": "assistant", "content": reply}));
        out.push_str(&serde_json::to_string(
            &serde_json::json!({ "messages": msgs }),
        )?);
        out.push('\n');
    }
    let prov = serde_json::json!({
        "tool": "persona-geometry generate",
        "tool_version": shared::TOOL_VERSION,
        "model_id": a.model_id,
        "model_files": loaded.files,
        "adapter": a.adapter.as_ref().map(|p| p.display().to_string()),
        "adapter_provenance": adapter_prov,
        "input": a.data.display().to_string(),
        "input_sha256": sha256_file(&a.data)?,
        "output_sha256": runtime::hash::sha256_hex(out.as_bytes()),
        "system_prompt": a.system_prompt,
        "decoding": "greedy",
        "max_new_tokens": a.max_new_tokens,
        "batch": a.batch,
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}"),
        "stop_ids": loaded.stop_ids,
        "conversations": conversations.len(),
        "replies_cut_at_max_new_tokens": cut_at_limit,
    });
    write_atomic(&a.out, out.as_bytes())?;
    let mut prov_path = a.out.clone().into_os_string();
    prov_path.push(".provenance.json");
    write_atomic(
        Path::new(&prov_path),
        serde_json::to_string_pretty(&prov)?.as_bytes(),
    )?;
    eprintln!(
        "wrote {} ({} replies, {cut_at_limit} cut at {} tokens) and {}",
        a.out.display(),
        replies.len(),
        a.max_new_tokens,
        Path::new(&prov_path).display()
    );
    Ok(())
}
