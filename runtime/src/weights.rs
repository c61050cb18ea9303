//! Loading a model: a local Hugging Face directory, the HF cache by repo id, or a GGUF file.
//! Everything is returned with Hugging Face tensor names, on the CPU, in the stored dtype.

use crate::hash::sha256_file;
use crate::model::{Arch, Config};
use crate::template::ChatTemplate;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub cfg: Config,
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat_template: Option<String>,
    /// Token ids that end a turn (generation stops on any).
    pub stop_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// (file, sha256) of everything read, for provenance.
    pub files: Vec<(String, String)>,
    pub source: String,
}

impl LoadedModel {
    /// The model of these weights as loaded (no adapter) on `device` in `dtype`.
    pub fn model(&self, device: &Device, dtype: candle_core::DType) -> Result<crate::model::Model> {
        crate::model::Model::new(self.cfg.clone(), self.weights.clone(), device, dtype)
    }

    /// The model's own chat template, ready to render; a clear error when the model has none
    /// (persona prompts need one).
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        ready_template(
            self.chat_template.as_deref(),
            &self.bos_token,
            &self.eos_token,
            &self.source,
        )
    }
}

/// A chat template's source ready to render, or the error that names `source` and where a
/// template is looked for (persona prompts need one).
fn ready_template(
    template: Option<&str>,
    bos: &Option<String>,
    eos: &Option<String>,
    source: &str,
) -> Result<ChatTemplate> {
    let src = template.with_context(|| {
        format!(
            "{source}: the model has no chat template (tokenizer_config.json `chat_template`, chat_template.jinja or GGUF tokenizer.chat_template); persona prompts need one"
        )
    })?;
    ChatTemplate::new(src, bos.clone(), eos.clone())
}

impl TokenizerFiles {
    /// The directory's chat template, ready to render (`dir` names it in the error).
    pub fn chat_template(&self, dir: &Path) -> Result<ChatTemplate> {
        ready_template(
            self.chat_template.as_deref(),
            &self.bos_token,
            &self.eos_token,
            &dir.display().to_string(),
        )
    }
}

/// Where a model comes from: an explicit path (directory or .gguf), or the HF cache by repo id.
pub fn resolve_model_path(
    id: &str,
    path: Option<&Path>,
    revision: Option<&str>,
) -> Result<PathBuf> {
    if let Some(p) = path {
        if !p.exists() {
            bail!("model path {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })
        .context("cannot locate the Hugging Face cache: set HF_HOME or give the model a `path`")?;
    let repo_dir = hub.join(format!("models--{}", id.replace('/', "--")));
    let rev = match revision {
        Some(r) => r.to_string(),
        None => std::fs::read_to_string(repo_dir.join("refs/main")).map(|s| s.trim().to_string()).with_context(|| {
            format!(
                "model `{id}` is not in the Hugging Face cache ({}); this tool never downloads silently: run `huggingface-cli download {id}` where the network allows, or set `path` in the study file",
                repo_dir.display()
            )
        })?,
    };
    let snap = repo_dir.join("snapshots").join(&rev);
    if !snap.is_dir() {
        bail!("revision `{rev}` of `{id}` is not in the Hugging Face cache ({}); download it first or set `path`", snap.display());
    }
    Ok(snap)
}

pub fn load(path: &Path) -> Result<LoadedModel> {
    if path.is_file() && path.extension().map(|e| e == "gguf").unwrap_or(false) {
        load_gguf(path)
    } else if path.is_dir() {
        load_hf_dir(path)
    } else {
        bail!(
            "{}: expected a Hugging Face model directory or a .gguf file",
            path.display()
        )
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(|s| s.to_string()),
        _ => None,
    }
}

pub fn load_hf_dir(dir: &Path) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let cfg_json = read_json(&cfg_path)?;
    let cfg = Config::from_hf_json(&cfg_json, &cfg_path.display().to_string())?;
    let mut files = vec![("config.json".to_string(), sha256_file(&cfg_path)?)];
    let index = dir.join("model.safetensors.index.json");
    let shards: Vec<PathBuf> = if index.exists() {
        let idx = read_json(&index)?;
        let map = idx
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(|s| s.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        bail!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        );
    };
    // Shards are hashed (provenance) on threads of their own while they are read: for a 7B
    // model, reading and hashing one after the other took 8.6 + 12.6 s on the GPU host.
    let (weights, hashes) = std::thread::scope(|scope| -> Result<_> {
        let hashers: Vec<_> = shards
            .iter()
            .map(|shard| scope.spawn(move || sha256_file(shard)))
            .collect();
        let mut weights = HashMap::new();
        for shard in &shards {
            let w = crate::phases::time("read model weights", || {
                candle_core::safetensors::load(shard, &Device::Cpu)
            })
            .with_context(|| format!("reading weights {}", shard.display()))?;
            weights.extend(w);
        }
        // What hashing adds after the reading is done.
        let hashes = crate::phases::time("hash model files (after reading)", || {
            hashers
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("hashing thread panicked")))
                })
                .collect::<Result<Vec<String>>>()
        })?;
        Ok((weights, hashes))
    })?;
    for (shard, hash) in shards.iter().zip(hashes) {
        files.push((
            shard
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string(),
            hash,
        ));
    }
    let TokenizerFiles {
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        files: tokenizer_files,
    } = tokenizer_files(dir)?;
    files.extend(tokenizer_files);
    // Stop ids: generation_config.json eos_token_id (int or list), else config's, else eos_token.
    let mut stop_ids: Vec<u32> = Vec::new();
    let mut add_ids = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => stop_ids.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            stop_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    };
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        add_ids(read_json(&gen_path)?.get("eos_token_id"));
    }
    add_ids(cfg_json.get("eos_token_id"));
    if let Some(e) = &eos_token {
        if let Some(id) = tokenizer.token_to_id(e) {
            stop_ids.push(id);
        }
    }
    stop_ids.sort();
    stop_ids.dedup();
    Ok(LoadedModel {
        cfg,
        weights,
        tokenizer,
        chat_template,
        stop_ids,
        bos_token,
        eos_token,
        files,
        source: dir.display().to_string(),
    })
}

/// A model directory's tokenizer (tokenizer.json) and chat template (tokenizer_config.json's
/// `chat_template`, else chat_template.jinja) with its special tokens, and the (file, sha256)
/// of what was read. Needs no weights (`bench-workload --study-prompts` reads just these).
pub struct TokenizerFiles {
    pub tokenizer: tokenizers::Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub files: Vec<(String, String)>,
}

pub fn tokenizer_files(dir: &Path) -> Result<TokenizerFiles> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
    let mut files = vec![("tokenizer.json".to_string(), sha256_file(&tok_path)?)];
    let tc_path = dir.join("tokenizer_config.json");
    let (chat_template, bos_token, eos_token) = if tc_path.exists() {
        let tc = read_json(&tc_path)?;
        files.push(("tokenizer_config.json".into(), sha256_file(&tc_path)?));
        let tpl = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| {
                    t.get("template")
                        .and_then(|x| x.as_str())
                        .map(|s| s.to_string())
                }),
            _ => None,
        };
        let tpl = tpl.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        (
            tpl,
            token_string(tc.get("bos_token")),
            token_string(tc.get("eos_token")),
        )
    } else {
        (
            std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
            None,
            None,
        )
    };
    Ok(TokenizerFiles {
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        files,
    })
}

/// llama.cpp stores Llama's q/k rows permuted for its interleaved RoPE; undo it so the
/// Hugging Face rotate-half RoPE applies (Qwen2 GGUFs are not permuted).
fn unpermute_qk(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = t.dims2()?;
    let hd = out / n_head;
    Ok(t.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

pub fn load_gguf(path: &Path) -> Result<LoadedModel> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let md = &content.metadata;
    let arch_name = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let model_type = match arch_name.as_str() {
        "llama" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "gemma2" => "gemma2",
        "gemma3" => "gemma3_text",
        a => bail!(
            "{}: GGUF architecture `{a}` is not supported (llama, qwen2, qwen3, gemma2, gemma3)",
            path.display()
        ),
    };
    let u = |k: &str| -> Result<usize> {
        md.get(&format!("{arch_name}.{k}"))
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .map(|x| x as usize)
                    .or_else(|| v.to_u64().ok().map(|x| x as usize))
            })
            .with_context(|| format!("{}: GGUF metadata lacks {arch_name}.{k}", path.display()))
    };
    let fl = |k: &str| -> Option<f64> {
        md.get(&format!("{arch_name}.{k}"))
            .and_then(|v| v.to_f32().ok())
            .map(|x| x as f64)
    };
    let hidden = u("embedding_length")?;
    let n_head = u("attention.head_count")?;
    let n_kv = u("attention.head_count_kv").unwrap_or(n_head);
    let tokens: Vec<String> = md
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .context("GGUF lacks tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned().unwrap_or_default())
        .collect();
    let has_output = content.tensor_infos.contains_key("output.weight");
    let num_layers = u("block_count")?;
    let head_dim = u("attention.key_length").unwrap_or(hidden / n_head);
    let rope_theta = fl("rope.freq_base").unwrap_or(10000.0);
    if let Some(t) = md
        .get(&format!("{arch_name}.rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
    {
        if t != "none" {
            bail!(
                "{}: RoPE scaling `{t}` in a GGUF is not supported yet; use the model's Hugging Face directory",
                path.display()
            );
        }
    }
    // The GGUF's metadata as the Hugging Face config.json it came from, so that one reader
    // (Config::from_hf_json) decides every family's block. Values llama.cpp does not store are
    // the ones llama.cpp itself assumes (its llama-model.cpp): Gemma 2 slides on even layers,
    // Gemma 3 on five of every six with RoPE base 10,000; the score scale is 1/sqrt(head_dim)
    // except for the 27B models (1/sqrt(hidden / heads)).
    let mut hf = serde_json::json!({
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": num_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "vocab_size": tokens.len(),
        "rms_norm_eps": fl("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": rope_theta,
        "tie_word_embeddings": !has_output,
        "attention_bias": arch_name == "qwen2",
    });
    if arch_name.starts_with("gemma") {
        let big = (arch_name == "gemma2" && num_layers == 46)
            || (arch_name == "gemma3" && num_layers == 62);
        let window = u("attention.sliding_window")?;
        let types: Vec<&str> = (0..num_layers)
            .map(|l| {
                let sliding = if arch_name == "gemma2" {
                    l % 2 == 0
                } else {
                    (l + 1) % 6 != 0
                };
                if sliding {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        let m = hf.as_object_mut().context("config")?;
        m.insert("sliding_window".into(), window.into());
        m.insert("layer_types".into(), serde_json::json!(types));
        m.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
        m.insert(
            "query_pre_attn_scalar".into(),
            (if big { hidden / n_head } else { head_dim }).into(),
        );
        m.insert(
            "attn_logit_softcapping".into(),
            fl("attn_logit_softcapping").into(),
        );
        m.insert(
            "final_logit_softcapping".into(),
            fl("final_logit_softcapping").into(),
        );
        if arch_name == "gemma3" {
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"full_attention": {"rope_theta": rope_theta, "rope_type": "default"},
                                   "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}),
            );
        }
    }
    let cfg = Config::from_hf_json(&hf, &path.display().to_string())?;
    let arch = cfg.arch.clone();
    let gemma = cfg.family.norm_plus_one;
    let mut weights = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let qt = content
            .tensor(&mut f, &name, &Device::Cpu)
            .with_context(|| format!("{}: reading tensor {name}", path.display()))?;
        let mut t = qt.dequantize(&Device::Cpu)?;
        let hf = gguf_to_hf_name(&name, gemma);
        // llama.cpp stores Gemma's (1 + w) norm weights with the 1 added; the model adds it.
        if gemma && name.ends_with("norm.weight") {
            t = t.affine(1.0, -1.0)?;
        }
        if arch == Arch::Llama
            && (name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight"))
        {
            let heads = if name.ends_with("attn_q.weight") {
                n_head
            } else {
                n_kv
            };
            t = unpermute_qk(&t, heads)?;
        }
        weights.insert(hf, t);
    }
    let tokenizer = crate::tokenize::tokenizer_from_gguf(&content, &tokens).with_context(|| {
        format!(
            "{}: building the tokenizer from GGUF metadata",
            path.display()
        )
    })?;
    let chat_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let id_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let bos = id_of("tokenizer.ggml.bos_token_id");
    let eos = id_of("tokenizer.ggml.eos_token_id");
    let mut stop_ids: Vec<u32> = eos.into_iter().collect();
    // Chat models end a turn with <|im_end|>, <|eot_id|> or (Gemma) <end_of_turn>, whatever eos
    // names.
    for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
        if let Some(id) = tokens.iter().position(|x| x == t) {
            stop_ids.push(id as u32);
        }
    }
    stop_ids.sort();
    stop_ids.dedup();
    Ok(LoadedModel {
        cfg,
        weights,
        tokenizer,
        chat_template,
        stop_ids,
        bos_token: bos.and_then(|i| tokens.get(i as usize).cloned()),
        eos_token: eos.and_then(|i| tokens.get(i as usize).cloned()),
        files: vec![(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string(),
            sha256_file(path)?,
        )],
        source: path.display().to_string(),
    })
}

/// The Hugging Face name of a GGUF tensor. `gemma`: `ffn_norm` is Gemma's
/// pre_feedforward_layernorm (its post_attention_layernorm is `post_attention_norm`).
fn gguf_to_hf_name(name: &str, gemma: bool) -> String {
    let map = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    for (g, h) in map {
        if name == g {
            return h.to_string();
        }
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((layer, part)) = rest.split_once('.') {
            let hf = match part {
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_q.bias" => "self_attn.q_proj.bias",
                "attn_k.bias" => "self_attn.k_proj.bias",
                "attn_v.bias" => "self_attn.v_proj.bias",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" if gemma => "pre_feedforward_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "post_attention_norm.weight" => "post_attention_layernorm.weight",
                "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
                "attn_q_norm.weight" => "self_attn.q_norm.weight",
                "attn_k_norm.weight" => "self_attn.k_norm.weight",
                other => return format!("gguf.{layer}.{other}"),
            };
            return format!("model.layers.{layer}.{hf}");
        }
    }
    format!("gguf.{name}")
}
