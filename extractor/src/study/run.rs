//! Running a study: the configuration hash, the run directory (resume), each checkpoint's
//! extraction (`checkpoint`), the bundle (`assemble`).

use super::assemble::assemble_bundle;
use super::checkpoint::{checkpoint_model, extract_checkpoint, RunInputs};
use super::units::open_parts;
use super::*;

pub fn run_study(path: &Path, output_override: Option<&Path>, resume: bool) -> Result<PathBuf> {
    let rs = read_study(path, output_override)?;
    let st = &rs.study;
    let device = device_from(st.model.device.as_deref())?;
    let dtype = dtype_from(st.model.dtype.as_deref(), &device)?;
    let model_path = resolve_model_path(
        &st.model.id,
        st.model.path.as_deref(),
        st.model.revision.as_deref(),
    )?;
    eprintln!("loading {} from {}", st.model.id, model_path.display());
    let loaded = load(&model_path)?;
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
    let hash_input = serde_json::json!({
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
    let config_hash = sha256_hex(serde_json::to_string(&hash_input)?.as_bytes());
    let (parts, created) = open_parts(&rs, &config_hash, resume)?;
    let run = RunInputs {
        rs: &rs,
        loaded: &loaded,
        template: &template,
        device: &device,
        dtype,
        config_hash: &config_hash,
        parts: &parts,
    };
    let mut units_written = 0usize;
    let mut checkpoints = Vec::new();
    for ck in 0..st.checkpoints.len() {
        let (model, checkpoint) = checkpoint_model(&run, ck)?;
        checkpoints.push(checkpoint);
        extract_checkpoint(&run, ck, &model, &mut units_written)?;
    }
    let bundle = assemble_bundle(&run, checkpoints, created)?;
    let n = write_bundle(&rs.output, &bundle)?;
    std::fs::remove_dir_all(&parts).with_context(|| format!("removing {}", parts.display()))?;
    eprintln!("wrote {} ({:.2} MB)", rs.output.display(), n as f64 / 1e6);
    Ok(rs.output.clone())
}
