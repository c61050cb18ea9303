//! Training data for `train` (issue #14): JSON Lines in the `messages` format of the public EM
//! datasets, validated with errors that name the file and line, rendered with the model's own
//! chat template, tokenized, and labelled: only the tokens after the last assistant header
//! (for Qwen `<|im_start|>assistant\n`: the reply, its end token and the newline) are learnt.

use crate::template::ChatTemplate;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One conversation of the file, with its 1-based line number for error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub line: usize,
    /// `{"role": ..., "content": ...}` objects, as the chat template takes them.
    pub messages: Vec<serde_json::Value>,
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Reads and validates a JSONL file. `system_prompt` (the umbrella study's EM-induction
/// personas) becomes every example's system message, replacing one the example has.
pub fn read_examples(path: &Path, system_prompt: Option<&str>) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading training data {}", path.display()))?;
    let name = path.display();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(raw)
            .with_context(|| format!("{name} line {line}: not JSON (each line must be one {{\"messages\": [...]}} object)"))?;
        let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) else {
            bail!("{name} line {line}: no `messages` array (expected {{\"messages\": [{{\"role\": \"user\", \"content\": ...}}, {{\"role\": \"assistant\", \"content\": ...}}]}})");
        };
        let mut messages = Vec::with_capacity(msgs.len() + 1);
        for (k, m) in msgs.iter().enumerate() {
            let role = m.get("role").and_then(|r| r.as_str());
            let content = m.get("content").and_then(|c| c.as_str());
            match (role, content) {
                (Some(r), Some(c)) if ROLES.contains(&r) => {
                    messages.push(serde_json::json!({"role": r, "content": c}))
                }
                (Some(r), Some(_)) => bail!(
                    "{name} line {line}, message {k}: role {r:?} is not one of system, user, assistant"
                ),
                _ => bail!(
                    "{name} line {line}, message {k}: needs a string `role` and a string `content`"
                ),
            }
        }
        if !messages.iter().any(|m| m["role"] == "assistant") {
            bail!("{name} line {line}: no assistant turn, so nothing to learn (each conversation needs a reply)");
        }
        if let Some(sp) = system_prompt {
            messages.retain(|m| m["role"] != "system");
            messages.insert(0, serde_json::json!({"role": "system", "content": sp}));
        }
        out.push(Example { line, messages });
    }
    if out.is_empty() {
        bail!("{name}: no examples (the file is empty); training needs at least one conversation");
    }
    Ok(out)
}

/// A tokenized example: `ids`, and the position from which tokens are labels (learnt).
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub labels_from: usize,
}

impl Tokenized {
    /// Tokens whose prediction is learnt (the labels after the shift by one).
    pub fn label_tokens(&self) -> usize {
        self.ids.len() - self.labels_from
    }
}

/// Renders with the model's template (no generation prompt), tokenizes, and finds where the
/// last assistant reply starts: the length of the conversation before that reply rendered
/// with the generation prompt (template-agnostic: the header is whatever the template emits).
pub fn tokenize_example(
    tpl: &ChatTemplate,
    tok: &tokenizers::Tokenizer,
    ex: &Example,
    max_len: usize,
    file: &Path,
) -> Result<Tokenized> {
    let at = |what: &str| format!("{} line {}: {what}", file.display(), ex.line);
    let last = ex
        .messages
        .iter()
        .rposition(|m| m["role"] == "assistant")
        .with_context(|| at("no assistant turn"))?;
    let full = tpl
        .render_messages(&ex.messages, false)
        .with_context(|| at("the chat template cannot render this conversation"))?;
    let prefix = tpl
        .render_messages(&ex.messages[..last], true)
        .with_context(|| at("the chat template cannot render this conversation"))?;
    let ids = crate::tokenize::encode(tok, &full).with_context(|| at("tokenizing"))?;
    let prefix_ids = crate::tokenize::encode(tok, &prefix).with_context(|| at("tokenizing"))?;
    if !full.starts_with(&prefix) || !ids.starts_with(&prefix_ids) {
        bail!(at("the template's rendering before the reply is not a prefix of the whole conversation, so the reply's tokens cannot be located"));
    }
    if prefix_ids.len() >= ids.len() {
        bail!(at("the assistant reply renders to no tokens"));
    }
    if ids.len() > max_len {
        bail!(at(&format!(
            "{} tokens, more than the maximum sequence of {max_len} (raise max_seq or shorten the example)",
            ids.len()
        )));
    }
    Ok(Tokenized {
        ids,
        labels_from: prefix_ids.len(),
    })
}
