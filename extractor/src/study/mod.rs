//! `persona-geometry extract STUDY.toml`: runs a study into a bundle, resumably.
//! This module: the study file (schema, personas and questions, paths, device and dtype);
//! `run`: units, the parts manifest, extraction and assembly of the bundle.
//!
//! Work is split into units (checkpoint x method x persona). Each finished unit is written
//! atomically to `<output>.parts/`; a rerun with `--resume` skips finished units and, because the
//! configuration hash and the start date are kept in the parts manifest, produces the same bundle
//! bytes as an uninterrupted run. A changed configuration is refused, never mixed in.
//! `shard`: the same units split over processes (`--shard I/N`, SLURM arrays, Kubernetes
//! Indexed Jobs, `--devices`), each into a part directory, and `merge` of the parts.

use crate::extract::Extractor;
use crate::io_util::{sha256_hex, write_atomic, write_bundle};
use crate::lora::merge_adapter;
use crate::model::{Model, Steering};
use crate::template::ChatTemplate;
use crate::weights::{load, resolve_model_path, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use shared::bundle::{
    Blob, Bundle, Cell, Checkpoint, Method, Persona, Provenance, Question, Responses, Role,
};
use std::path::{Path, PathBuf};

mod assemble;
mod checkpoint;
mod run;
mod shard;
mod units;
pub use run::{run_study, run_study_with, ExtractOptions};
pub use shard::{assign, merge_parts, resolve_shard, run_on_devices, ShardSpec};

pub const DEFAULT_PERSONAS: &str = include_str!("../../../data/eval_personas.json");
pub const DEFAULT_QUESTIONS: &str = include_str!("../../../data/extraction_questions.jsonl");

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Identity (a Hugging Face repo id); adapters must declare it as their base.
    pub id: String,
    /// Local HF directory or .gguf file; without it the HF cache is searched for `id`.
    pub path: Option<PathBuf>,
    pub revision: Option<String>,
    /// f32 (default on CPU), bf16 or f16.
    pub dtype: Option<String>,
    /// cpu (default) or cuda / cuda:N (needs a build with `--features cuda`).
    pub device: Option<String>,
    /// A Jinja chat template file that replaces the model's own (for a model without one, e.g.
    /// a GGUF converted without `tokenizer.chat_template`; data/templates/ has Gemma 3's). Its
    /// SHA-256 joins the model files in the provenance and the configuration hash.
    pub chat_template: Option<PathBuf>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SteerSpec {
    /// Block whose output receives the vector (layer convention as everywhere).
    pub layer: usize,
    /// Norm of the added vector.
    pub alpha: f64,
    /// Direction = unit(centroid(towards) - centroid(away_from)), Method A on the base model.
    pub towards: Option<String>,
    pub away_from: Option<String>,
    /// Instead: a random unit direction drawn with this seed (a negative control).
    pub random_seed: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    pub name: String,
    /// base | em | benign | any other word.
    pub role: String,
    pub label: Option<String>,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    pub adapter: Option<PathBuf>,
    /// Merge even if the adapter declares another base model (recorded in the bundle).
    #[serde(default)]
    pub allow_base_mismatch: bool,
    /// Activation steering (a controlled intervention, e.g. the default study's controls).
    pub steer: Option<SteerSpec>,
    /// Training arm this checkpoint is one seed of (e.g. `null`): checkpoints of one role but
    /// different arms are separate arms in the training-seed test. Default: the role.
    pub arm: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// `generated` (mean over generated tokens, pooled while decoding) or `templated`
    /// (the upstream scripts' decode + re-template span).
    #[serde(default = "default_span")]
    pub span: String,
}

fn default_max_new() -> usize {
    200
}
fn default_span() -> String {
    "generated".into()
}
fn default_layers() -> Vec<usize> {
    vec![7, 14, 20, 21, 27]
}
fn default_methods() -> Vec<String> {
    vec!["A".into(), "B".into()]
}
fn default_batch() -> BatchSize {
    BatchSize::Fixed(8)
}

/// `batch_size = N` or `batch_size = "auto"` (from the device's free memory, see
/// [`crate::extract::auto_batch_size`]; on the CPU 16).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum BatchSize {
    Fixed(usize),
    Named(String),
}

impl BatchSize {
    /// The batch for prompts of at most `max_prompt` tokens and `max_new` new tokens.
    pub fn resolve(
        &self,
        model: &crate::model::Model,
        max_prompt: usize,
        max_new: usize,
        n_prompts: usize,
    ) -> Result<usize> {
        Ok(match self {
            BatchSize::Fixed(n) => *n,
            BatchSize::Named(_) => {
                crate::extract::auto_batch_size(model, max_prompt, max_new)?.min(n_prompts.max(1))
            }
        })
    }
    pub fn describe(&self) -> String {
        match self {
            BatchSize::Fixed(n) => n.to_string(),
            BatchSize::Named(s) => s.clone(),
        }
    }
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            max_new_tokens: default_max_new(),
            span: default_span(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Study {
    pub output: Option<PathBuf>,
    pub model: ModelSpec,
    pub checkpoints: Vec<CheckpointSpec>,
    /// JSON with `eval_persona_order` and `eval_personas` (the data/ format); default: the 12
    /// study personas embedded in the binary.
    pub personas_file: Option<PathBuf>,
    /// Keep only these personas (in this order).
    pub personas: Option<Vec<String>>,
    /// JSONL with {"question", "id"} per line; default: the 240 embedded questions.
    pub questions_file: Option<PathBuf>,
    /// Use only the first N questions.
    pub question_limit: Option<usize>,
    #[serde(default = "default_layers")]
    pub layers: Vec<usize>,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub generation: Generation,
    #[serde(default = "default_batch")]
    pub batch_size: BatchSize,
    #[serde(default)]
    pub seed: u64,
}

/// The embedded default personas (data/eval_personas.json).
pub fn default_personas() -> Result<Vec<Persona>> {
    parse_personas(DEFAULT_PERSONAS, "embedded data/eval_personas.json")
}

/// The embedded default questions (data/extraction_questions.jsonl).
pub fn default_questions() -> Result<Vec<Question>> {
    parse_questions(
        DEFAULT_QUESTIONS,
        "embedded data/extraction_questions.jsonl",
    )
}

pub fn parse_personas(json: &str, what: &str) -> Result<Vec<Persona>> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("parsing {what}"))?;
    let order = v
        .get("eval_persona_order")
        .and_then(|o| o.as_array())
        .with_context(|| format!("{what}: no `eval_persona_order` list"))?;
    let prompts = v
        .get("eval_personas")
        .and_then(|o| o.as_object())
        .with_context(|| format!("{what}: no `eval_personas` object"))?;
    order
        .iter()
        .map(|n| {
            let name = n
                .as_str()
                .with_context(|| format!("{what}: persona names must be strings"))?;
            let prompt = prompts
                .get(name)
                .and_then(|p| p.as_str())
                .with_context(|| {
                    format!("{what}: persona `{name}` has no prompt in `eval_personas`")
                })?;
            Ok(Persona {
                name: name.to_string(),
                system_prompt: prompt.to_string(),
            })
        })
        .collect()
}

pub fn parse_questions(jsonl: &str, what: &str) -> Result<Vec<Question>> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{what}: line {} is not JSON", i + 1))?;
            Ok(Question {
                id: v
                    .get("id")
                    .and_then(|x| x.as_u64())
                    .with_context(|| format!("{what}: line {} lacks an integer `id`", i + 1))?
                    as u32,
                text: v
                    .get("question")
                    .and_then(|x| x.as_str())
                    .with_context(|| format!("{what}: line {} lacks `question`", i + 1))?
                    .to_string(),
            })
        })
        .collect()
}

/// A study with every default applied and every path resolved.
pub struct ResolvedStudy {
    pub study: Study,
    pub source_text: String,
    pub personas: Vec<Persona>,
    pub questions: Vec<Question>,
    pub methods: Vec<Method>,
    pub output: PathBuf,
}

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub fn read_study(path: &Path, output_override: Option<&Path>) -> Result<ResolvedStudy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading study file {}", path.display()))?;
    let mut study: Study =
        toml::from_str(&text).with_context(|| format!("study file {}", path.display()))?;
    let base_dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let mut personas = match &study.personas_file {
        Some(f) => {
            let p = resolve_path(&base_dir, f);
            parse_personas(
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
                &p.display().to_string(),
            )?
        }
        None => default_personas()?,
    };
    if let Some(keep) = &study.personas {
        personas = keep
            .iter()
            .map(|n| {
                personas
                    .iter()
                    .find(|p| &p.name == n)
                    .cloned()
                    .with_context(|| {
                        format!(
                            "{}: `personas` names `{n}`, which the persona file lacks",
                            path.display()
                        )
                    })
            })
            .collect::<Result<_>>()?;
    }
    let mut questions = match &study.questions_file {
        Some(f) => {
            let p = resolve_path(&base_dir, f);
            parse_questions(
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
                &p.display().to_string(),
            )?
        }
        None => default_questions()?,
    };
    if let Some(n) = study.question_limit {
        questions.truncate(n);
    }
    let methods = study
        .methods
        .iter()
        .map(|m| {
            Method::parse(m)
                .with_context(|| format!("{}: method `{m}` is not A or B", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    if study
        .checkpoints
        .iter()
        .filter(|c| c.role == "base")
        .count()
        != 1
    {
        bail!(
            "{}: exactly one checkpoint must have role = \"base\"",
            path.display()
        );
    }
    if !["generated", "templated"].contains(&study.generation.span.as_str()) {
        bail!(
            "{}: generation.span must be `generated` or `templated`",
            path.display()
        );
    }
    match &study.batch_size {
        BatchSize::Fixed(0) => bail!("{}: batch_size must be >= 1 or \"auto\"", path.display()),
        BatchSize::Named(s) if s != "auto" => bail!(
            "{}: batch_size = {s:?} is not understood: give a number or \"auto\"",
            path.display()
        ),
        _ => {}
    }
    if let Some(p) = &study.model.path {
        study.model.path = Some(resolve_path(&base_dir, p));
    }
    if let Some(p) = &study.model.chat_template {
        study.model.chat_template = Some(resolve_path(&base_dir, p));
    }
    for c in study.checkpoints.iter_mut() {
        if let Some(a) = &c.adapter {
            c.adapter = Some(resolve_path(&base_dir, a));
        }
    }
    let output = match output_override {
        Some(o) => o.to_path_buf(),
        None => resolve_path(
            &base_dir,
            study
                .output
                .as_deref()
                .context("no output: give `output` in the study file or -o")?,
        ),
    };
    Ok(ResolvedStudy {
        study,
        source_text: text,
        personas,
        questions,
        methods,
        output,
    })
}

/// Applies `model.chat_template` (a study's or a training file's): the file replaces the
/// model's own template and its SHA-256 joins the model files (provenance, configuration hash).
pub fn use_chat_template_of(loaded: &mut LoadedModel, spec: &ModelSpec, file: &Path) -> Result<()> {
    let Some(t) = &spec.chat_template else {
        return Ok(());
    };
    let text = std::fs::read_to_string(t)
        .with_context(|| format!("{}: model.chat_template {}", file.display(), t.display()))?;
    if loaded.chat_template.is_some() {
        eprintln!(
            "note: the chat template {} replaces the model's own",
            t.display()
        );
    }
    loaded.files.push((
        format!(
            "chat_template:{}",
            t.file_name().unwrap_or_default().to_string_lossy()
        ),
        sha256_hex(text.as_bytes()),
    ));
    loaded.chat_template = Some(text);
    Ok(())
}

pub fn device_from(spec: Option<&str>) -> Result<Device> {
    match spec.unwrap_or("cpu") {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda") => {
            let idx: usize = s
                .strip_prefix("cuda")
                .and_then(|r| r.strip_prefix(':'))
                .map(|r| r.parse())
                .transpose()
                .context("device must be cuda or cuda:N")?
                .unwrap_or(0);
            if !cfg!(feature = "cuda") {
                bail!("device `{s}`: this binary was built without CUDA; build with `--features cuda` (see README, GPU section)");
            }
            let device = Device::new_cuda(idx)?;
            crate::cuda_ops::tune_device(&device)?;
            Ok(device)
        }
        s => bail!("unknown device `{s}` (cpu, cuda, cuda:N)"),
    }
}

pub fn dtype_from(spec: Option<&str>, device: &Device) -> Result<DType> {
    Ok(match spec {
        None => {
            if device.is_cuda() {
                DType::BF16
            } else {
                DType::F32
            }
        }
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(o) => bail!("dtype `{o}` is not one of f32, bf16, f16"),
    })
}

#[cfg(test)]
mod tests {
    use super::BatchSize;

    #[derive(serde::Deserialize)]
    struct S {
        batch_size: BatchSize,
    }

    #[test]
    fn batch_size_is_a_number_or_auto() {
        let n: S = toml::from_str("batch_size = 24").unwrap();
        assert_eq!(n.batch_size, BatchSize::Fixed(24));
        let a: S = toml::from_str("batch_size = \"auto\"").unwrap();
        assert_eq!(a.batch_size, BatchSize::Named("auto".into()));
        assert_eq!(a.batch_size.describe(), "auto");
    }
}
