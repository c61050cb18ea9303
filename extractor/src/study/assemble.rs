//! The bundle of a finished run, assembled from its units: cells (centroids over valid
//! questions, per-question activations), responses, provenance. A whole-study run and `merge`
//! of shard parts go through the same [`assemble_bundle`] with the same [`BundleHeader`], which
//! is what makes a merged bundle byte-identical to a single run's.

use super::units::{read_units, UnitLocator};
use super::*;

/// Everything of a bundle that does not come from the units or one checkpoint's model: computed
/// from the study and the base model by every process of a run, stored in each shard's part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(super) struct BundleHeader {
    /// The run's provenance; `created` is set at assembly (a merge takes the earliest part's).
    pub provenance: Provenance,
    pub personas: Vec<Persona>,
    pub questions: Vec<Question>,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    pub hidden_size: u32,
    pub config_hash: String,
}

pub(super) fn bundle_header(run: &super::checkpoint::RunInputs) -> BundleHeader {
    let (rs, loaded, dtype) = (run.rs, run.loaded, run.dtype);
    let st = &rs.study;
    let n_layers = loaded.cfg.num_layers;
    let config_hash = run.config_hash.to_string();
    let mut extra = vec![
        ("model.source".into(), loaded.source.clone()),
        ("model.architecture".into(), format!("{:?}", loaded.cfg.arch)),
        ("model.num_layers".into(), n_layers.to_string()),
        ("model.files_sha256".into(), loaded.files.iter().map(|(f, h)| format!("{f}={h}")).collect::<Vec<_>>().join(", ")),
        ("compute.dtype".into(), format!("{dtype:?}")),
        ("compute.device".into(), st.model.device.clone().unwrap_or_else(|| "cpu".into())),
        ("method_a".into(), "hidden state at the last token of the chat-templated prompt with the generation prompt".into()),
        ("method_b".into(), format!("mean over response tokens ({} span), greedy, max_new_tokens {}, stop ids {:?} excluded", st.generation.span, st.generation.max_new_tokens, loaded.stop_ids)),
        ("chat_template_sha256".into(), sha256_hex(loaded.chat_template.as_deref().unwrap_or_default().as_bytes())),
        ("batch_size".into(), st.batch_size.describe()),
        ("config_sha256".into(), config_hash.clone()),
        ("study.toml".into(), rs.source_text.clone()),
    ];
    extra.retain(|(_, v)| !v.is_empty());
    BundleHeader {
        provenance: Provenance {
            tool: "persona-geometry extract".into(),
            tool_version: shared::TOOL_VERSION.into(),
            created: String::new(),
            seed: st.seed,
            model_id: st.model.id.clone(),
            model_revision: st.model.revision.clone().unwrap_or_default(),
            layer_convention: shared::LAYER_CONVENTION.into(),
            extra,
        },
        personas: rs.personas.clone(),
        questions: rs.questions.clone(),
        methods: rs.methods.clone(),
        layers: st.layers.iter().map(|&l| l as u32).collect(),
        hidden_size: loaded.cfg.hidden_size as u32,
        config_hash,
    }
}

/// The bundle from its header, one entry per checkpoint and the units `locate` finds.
pub(super) fn assemble_bundle(
    header: &BundleHeader,
    checkpoints: Vec<Checkpoint>,
    created: String,
    locate: UnitLocator,
) -> Result<Bundle> {
    let (p, q, nl) = (
        header.personas.len(),
        header.questions.len(),
        header.layers.len(),
    );
    let h = header.hidden_size as usize;
    let config_hash = &header.config_hash;
    let mut cells = Vec::new();
    let mut responses = Vec::new();
    for ck in 0..checkpoints.len() {
        let by_method = read_units(locate, ck, &header.methods, p, config_hash, q * nl * h, q)?;
        for (mi, &m) in header.methods.iter().enumerate() {
            for (li, &l) in header.layers.iter().enumerate() {
                let mut per_q = vec![0f32; p * q * h];
                let mut cents = vec![0f32; p * h];
                let mut valid = vec![false; p * q];
                for pi in 0..p {
                    let u = &by_method[mi][pi];
                    let mut acc = vec![0f64; h];
                    let mut n = 0usize;
                    for qi in 0..q {
                        valid[pi * q + qi] = u.valid[qi];
                        if !u.valid[qi] {
                            continue;
                        }
                        let src = &u.per_question[(qi * nl + li) * h..(qi * nl + li + 1) * h];
                        per_q[(pi * q + qi) * h..(pi * q + qi + 1) * h].copy_from_slice(src);
                        for (a, &x) in acc.iter_mut().zip(src) {
                            *a += x as f64;
                        }
                        n += 1;
                    }
                    if n == 0 {
                        bail!(
                            "checkpoint `{}`, method {}: persona `{}` produced an empty response to every question; Method B has nothing to average (raise max_new_tokens or check the chat template)",
                            checkpoints[ck].name,
                            m.name(),
                            header.personas[pi].name
                        );
                    }
                    for j in 0..h {
                        cents[pi * h + j] = (acc[j] / n as f64) as f32;
                    }
                }
                cells.push(Cell {
                    checkpoint: ck as u32,
                    method: m,
                    layer: l,
                    centroids: Blob::from_f32(&cents),
                    per_question: Blob::from_f32(&per_q),
                    valid,
                });
            }
            if m == Method::B {
                responses.push(Responses {
                    checkpoint: ck as u32,
                    texts: by_method[mi]
                        .iter()
                        .flat_map(|u| u.texts.iter().cloned())
                        .collect(),
                    token_counts: by_method[mi]
                        .iter()
                        .flat_map(|u| u.token_counts.iter().copied())
                        .collect(),
                });
            }
        }
    }
    let mut provenance = header.provenance.clone();
    provenance.created = created;
    Ok(Bundle {
        provenance,
        personas: header.personas.clone(),
        questions: header.questions.clone(),
        checkpoints,
        methods: header.methods.clone(),
        layers: header.layers.clone(),
        hidden_size: header.hidden_size,
        cells,
        responses,
        compact: None,
    })
}
