//! Running a study: the configuration hash, the run directory (resume), each checkpoint's
//! extraction (`checkpoint`), the bundle (`assemble`); a shard's share of it (`shard`).

use super::assemble::{assemble_bundle, bundle_header};
use super::checkpoint::{checkpoint_model, extract_checkpoint, RunInputs};
use super::shard::{run_shard, ShardSpec};
use super::units::{open_parts, parts_dir, unit_path};
use super::*;

/// How `extract` runs a study.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Bundle to write instead of the study's `output` (a shard's part directory is named after
    /// it).
    pub output_override: Option<PathBuf>,
    /// Continue an interrupted run (or shard) of the same study.
    pub resume: bool,
    /// Run only this shard's units into its part directory; `merge` makes the bundle.
    pub shard: Option<ShardSpec>,
    /// CUDA ordinal for a study on `device = "cuda"` (one worker per GPU). Not part of the
    /// study's identity: the configuration hash and the bundle do not depend on it.
    pub cuda_ordinal: Option<usize>,
}

/// A study read, its model loaded and its configuration hashed: what every process of a run
/// (whole, shard or worker) starts from.
pub(super) struct Prepared {
    pub rs: ResolvedStudy,
    pub loaded: LoadedModel,
    pub template: ChatTemplate,
    pub device: Device,
    pub dtype: DType,
    pub config_hash: String,
    /// Each persona's prompts, per question: the chat template with the generation prompt,
    /// tokenised once per run (every checkpoint, the steering centroids and the shard costs
    /// read them; the checkpoints share the base model's tokenizer and template).
    pub prompt_ids: Vec<Vec<Vec<u32>>>,
    /// What the hash is of (model files, adapters, personas, questions, ...): stored in each
    /// shard's part so that `merge` can name what differs between parts of different studies.
    pub config: serde_json::Value,
}

impl Prepared {
    pub fn inputs<'a>(&'a self, parts: &'a Path) -> RunInputs<'a> {
        RunInputs {
            rs: &self.rs,
            loaded: &self.loaded,
            template: &self.template,
            device: &self.device,
            dtype: self.dtype,
            config_hash: &self.config_hash,
            prompt_ids: &self.prompt_ids,
            parts,
        }
    }
}

pub fn run_study(path: &Path, output_override: Option<&Path>, resume: bool) -> Result<PathBuf> {
    run_study_with(
        path,
        &ExtractOptions {
            output_override: output_override.map(Path::to_path_buf),
            resume,
            ..Default::default()
        },
    )
}

/// Runs the whole study into its bundle, or with `opts.shard` one shard into its part
/// directory (returned).
pub fn run_study_with(path: &Path, opts: &ExtractOptions) -> Result<PathBuf> {
    let pr = prepare(path, opts)?;
    match opts.shard {
        Some(shard) => run_shard(&pr, shard, opts.resume),
        None => run_whole(&pr, opts.resume),
    }
}

fn prepare(path: &Path, opts: &ExtractOptions) -> Result<Prepared> {
    let rs = read_study(path, opts.output_override.as_deref())?;
    let st = &rs.study;
    let device_spec = match (st.model.device.as_deref(), opts.cuda_ordinal) {
        (Some(d), Some(k)) if d.starts_with("cuda") => Some(format!("cuda:{k}")),
        (d, _) => d.map(str::to_string),
    };
    let device = device_from(device_spec.as_deref())?;
    let dtype = dtype_from(st.model.dtype.as_deref(), &device)?;
    let model_path = resolve_model_path(
        &st.model.id,
        st.model.path.as_deref(),
        st.model.revision.as_deref(),
    )?;
    eprintln!("loading {} from {}", st.model.id, model_path.display());
    let mut loaded = load(&model_path)?;
    use_chat_template_of(&mut loaded, &st.model, path)?;
    let n_layers = loaded.cfg.num_layers;
    for &l in &st.layers {
        if l >= n_layers {
            bail!(
                "{}: layer {l} does not exist: the model has {n_layers} blocks (layers 0..{})",
                path.display(),
                n_layers - 1
            );
        }
    }
    let template = loaded.chat_template()?;

    // Everything that determines the result goes into the configuration hash.
    let mut adapter_hashes = Vec::new();
    for c in &st.checkpoints {
        if let Some(a) = &c.adapter {
            let w = a.join("adapter_model.safetensors");
            let cfgp = a.join("adapter_config.json");
            adapter_hashes.push((
                c.name.clone(),
                crate::io_util::sha256_file(&cfgp)?,
                crate::io_util::sha256_file(&w).unwrap_or_default(),
            ));
        }
    }
    let config = serde_json::json!({
        "tool": shared::TOOL_VERSION,
        "model": {"id": st.model.id, "revision": st.model.revision, "files": loaded.files, "dtype": format!("{dtype:?}"), "device": st.model.device},
        "checkpoints": st.checkpoints.iter().map(|c| serde_json::json!({"name": c.name, "role": c.role, "label": c.label, "steer": c.steer, "allow_base_mismatch": c.allow_base_mismatch, "arm": c.arm})).collect::<Vec<_>>(),
        "adapters": adapter_hashes,
        "personas": rs.personas,
        "questions": rs.questions,
        "layers": st.layers,
        "methods": rs.methods,
        "generation": st.generation,
        "batch_size": st.batch_size.describe(),
        "seed": st.seed,
    });
    let config_hash = sha256_hex(serde_json::to_string(&config)?.as_bytes());
    let prompt_ids = rs
        .personas
        .iter()
        .map(|p| {
            rs.questions
                .iter()
                .map(|q| {
                    crate::extract::prompt_ids(
                        &loaded.tokenizer,
                        &template,
                        &p.system_prompt,
                        &q.text,
                    )
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        rs,
        loaded,
        template,
        device,
        dtype,
        config_hash,
        prompt_ids,
        config,
    })
}

fn run_whole(pr: &Prepared, resume: bool) -> Result<PathBuf> {
    let rs = &pr.rs;
    let parts = parts_dir(&rs.output);
    let created = open_parts(&parts, &pr.config_hash, None, resume)?;
    let run = pr.inputs(&parts);
    let every_persona: Vec<usize> = (0..rs.personas.len()).collect();
    let mut units_written = 0usize;
    let mut checkpoints = Vec::new();
    for ck in 0..rs.study.checkpoints.len() {
        let (model, checkpoint) = checkpoint_model(&run, ck)?;
        checkpoints.push(checkpoint);
        extract_checkpoint(&run, ck, &every_persona, &model, &mut units_written)?;
    }
    let header = bundle_header(&run);
    let locate = |ck: usize, m: Method, p: usize| unit_path(&parts, ck, m, p);
    let n = runtime::phases::time("assemble and write the bundle", || -> Result<usize> {
        let bundle = assemble_bundle(&header, checkpoints, created, &locate)?;
        write_bundle(&rs.output, &bundle)
    })?;
    std::fs::remove_dir_all(&parts).with_context(|| format!("removing {}", parts.display()))?;
    eprintln!("wrote {} ({:.2} MB)", rs.output.display(), n as f64 / 1e6);
    eprintln!(
        "time per phase (wall clock, summed):\n{}",
        runtime::phases::table()
    );
    Ok(rs.output.clone())
}
