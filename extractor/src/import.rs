//! `persona-geometry import`: bundles from activations that other tools wrote.
//!
//! Sources:
//! - an `export` file (.npz or .safetensors) or a directory of .npy files in the same layout
//!   (`{checkpoint}/{method}/L{layer}/{centroids,per_question,valid}` + `meta.json`): rebuilt
//!   exactly, so export -> import gives back identical bundle bytes;
//! - a directory tree of PyTorch `.pt` files in the research team's cache layout
//!   (`<checkpoint dir>/method_{a,b}/{persona}_perquestion_L{L}.pt` ...), with a TOML mapping
//!   that names checkpoints, roles and directories.

use crate::io_util::sha256_file;
use crate::npy::{decode_npy, read_npz, NpyArray, NpyData};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use shared::bundle::{
    Blob, Bundle, Cell, Checkpoint, Method, Persona, Provenance, Question, Responses, Role,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnMismatch {
    /// Refuse when a persona's question set differs between checkpoints.
    Refuse,
    /// Keep only the questions every checkpoint has (per persona and method) and report.
    Intersect,
}

/// Where the arrays of an export-layout source come from.
enum Store {
    Map(BTreeMap<String, NpyArray>),
    NpyDir(PathBuf),
}

impl Store {
    fn take(&mut self, name: &str) -> Result<NpyArray> {
        match self {
            Store::Map(m) => m
                .remove(name)
                .with_context(|| format!("array `{name}` is missing")),
            Store::NpyDir(d) => {
                let p = d.join(format!("{name}.npy"));
                let b = std::fs::read(&p)
                    .with_context(|| format!("array `{name}`: reading {}", p.display()))?;
                decode_npy(&b, &p.display().to_string())
            }
        }
    }
}

fn f32_of(a: NpyArray, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    if a.shape != shape {
        bail!(
            "array `{name}` has shape {:?}, expected {:?}",
            a.shape,
            shape
        );
    }
    match a.data {
        NpyData::F32(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!("array `{name}` holds NaN/Inf at flat index {i}");
            }
            Ok(v)
        }
        _ => bail!("array `{name}` must be floating point"),
    }
}

fn bool_of(a: NpyArray, name: &str, shape: &[usize]) -> Result<Vec<bool>> {
    if a.shape != shape {
        bail!(
            "array `{name}` has shape {:?}, expected {:?}",
            a.shape,
            shape
        );
    }
    match a.data {
        NpyData::Bool(v) => Ok(v),
        _ => bail!("array `{name}` must be boolean"),
    }
}

#[derive(Deserialize)]
struct ExportCheckpoint {
    name: String,
    role: String,
    label: String,
    #[serde(default)]
    provenance: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct ExportMeta {
    format: String,
    provenance: Provenance,
    personas: Vec<Persona>,
    questions: Vec<Question>,
    checkpoints: Vec<ExportCheckpoint>,
    methods: Vec<String>,
    layers: Vec<u32>,
    hidden_size: u32,
    #[serde(default)]
    responses: Vec<Responses>,
}

fn bundle_from_export(meta_json: &[u8], mut store: Store, what: &str) -> Result<Bundle> {
    let meta: ExportMeta = serde_json::from_slice(meta_json)
        .with_context(|| format!("{what}: meta.json is not a persona-geometry export"))?;
    if meta.format != "persona-geometry export v1" {
        bail!(
            "{what}: meta.json format `{}` is not `persona-geometry export v1`",
            meta.format
        );
    }
    let methods: Vec<Method> = meta
        .methods
        .iter()
        .map(|m| Method::parse(m).with_context(|| format!("{what}: unknown method `{m}`")))
        .collect::<Result<_>>()?;
    let (p, q, h) = (
        meta.personas.len(),
        meta.questions.len(),
        meta.hidden_size as usize,
    );
    let mut cells = Vec::new();
    for (ck, c) in meta.checkpoints.iter().enumerate() {
        for &m in &methods {
            for &l in &meta.layers {
                let prefix = format!("{}/{}/L{l}", c.name, m.name());
                let cname = format!("{prefix}/centroids");
                let centroids = f32_of(
                    store.take(&cname).with_context(|| what.to_string())?,
                    &cname,
                    &[p, h],
                )?;
                let qname = format!("{prefix}/per_question");
                let per_q = f32_of(
                    store.take(&qname).with_context(|| what.to_string())?,
                    &qname,
                    &[p, q, h],
                )?;
                let vname = format!("{prefix}/valid");
                let valid = bool_of(
                    store.take(&vname).with_context(|| what.to_string())?,
                    &vname,
                    &[p, q],
                )?;
                cells.push(Cell {
                    checkpoint: ck as u32,
                    method: m,
                    layer: l,
                    centroids: Blob::from_f32(&centroids),
                    per_question: Blob::from_f32(&per_q),
                    valid,
                });
            }
        }
    }
    let bundle = Bundle {
        provenance: meta.provenance,
        personas: meta.personas,
        questions: meta.questions,
        checkpoints: meta
            .checkpoints
            .into_iter()
            .map(|c| Checkpoint {
                name: c.name,
                role: Role::parse(&c.role),
                label: c.label,
                provenance: c.provenance,
            })
            .collect(),
        methods,
        layers: meta.layers,
        hidden_size: meta.hidden_size,
        cells,
        responses: meta.responses,
        compact: None,
    };
    bundle.validate().with_context(|| what.to_string())?;
    Ok(bundle)
}

/// Reads a safetensors export: arrays as tensors (F32 or BOOL), meta.json in `__metadata__`.
fn read_safetensors(path: &Path) -> Result<(BTreeMap<String, NpyArray>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let meta = header.metadata().as_ref().and_then(|m| m.get("meta.json")).with_context(|| format!("{}: no meta.json in the safetensors metadata (write it with `export --format safetensors`)", path.display()))?.as_bytes().to_vec();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut arrays = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = match view.dtype() {
            safetensors::Dtype::F32 => NpyData::F32(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            safetensors::Dtype::BOOL => {
                NpyData::Bool(view.data().iter().map(|&b| b != 0).collect())
            }
            d => bail!(
                "{}: tensor `{name}` has dtype {d:?} (F32 or BOOL expected)",
                path.display()
            ),
        };
        arrays.insert(
            name,
            NpyArray {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((arrays, meta))
}

/// Writes arrays + meta.json as one safetensors file (the `export --format safetensors` output).
pub fn write_safetensors(arrays: &BTreeMap<String, NpyArray>, meta: &[u8]) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, a) in arrays {
        let (dt, bytes) = match &a.data {
            NpyData::F32(v) => (
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            NpyData::Bool(v) => (
                safetensors::Dtype::BOOL,
                v.iter().map(|&b| b as u8).collect(),
            ),
            NpyData::I64(v) => (
                safetensors::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        };
        owned.push((name.clone(), dt, a.shape.clone(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, dt, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b)
                    .map_err(|e| anyhow::anyhow!("{n}: {e}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut md = std::collections::HashMap::new();
    md.insert("meta.json".to_string(), String::from_utf8(meta.to_vec())?);
    safetensors::serialize(views, Some(md))
        .map_err(|e| anyhow::anyhow!("serialising safetensors: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Model identity (default: the caches' metadata.json `model`).
    pub model: Option<String>,
    /// Persona order (default: metadata `roles`).
    pub personas: Option<Vec<String>>,
    /// eval_personas.json-style file for the system prompts (optional).
    pub persona_prompts_file: Option<PathBuf>,
    /// JSONL {"question", "id"} in cache order (optional; else ids 0..n-1 without text).
    pub questions_file: Option<PathBuf>,
    /// Method name -> directory name inside each checkpoint directory.
    #[serde(default = "default_method_dirs")]
    pub methods: BTreeMap<String, String>,
    pub checkpoints: Vec<MappingCheckpoint>,
}

fn default_method_dirs() -> BTreeMap<String, String> {
    [
        ("A".to_string(), "method_a".to_string()),
        ("B".to_string(), "method_b".to_string()),
    ]
    .into_iter()
    .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingCheckpoint {
    pub name: String,
    pub role: String,
    pub label: Option<String>,
    /// Directory (relative to the tree root) holding method_a/, method_b/.
    pub dir: PathBuf,
}

/// Reads a .pt file holding one tensor (`torch.save(tensor)`), via candle's pickle reader.
pub fn read_pt_tensor(path: &Path) -> Result<candle_core::Tensor> {
    use candle_core::pickle::{Object, Stack};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| {
        format!(
            "{}: not a PyTorch zip archive (torch.save >= 1.6)",
            path.display()
        )
    })?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(|s| s.to_string())
        .with_context(|| format!("{}: no data.pkl inside", path.display()))?;
    let dir_name = PathBuf::from(pkl.strip_suffix(".pkl").expect("ends with .pkl"));
    let obj = {
        let reader = zip.by_name(&pkl)?;
        let mut reader = std::io::BufReader::new(reader);
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .with_context(|| format!("{}: unreadable pickle", path.display()))?;
        stack.finalize()?
    };
    let info = obj
        .into_tensor_info(Object::Unicode("tensor".into()), &dir_name)
        .with_context(|| format!("{}: the pickle is not a single tensor", path.display()))?
        .with_context(|| format!("{}: the pickle is not a single tensor", path.display()))?;
    if !info.layout.is_contiguous() {
        bail!(
            "{}: non-contiguous tensor; save it with .contiguous()",
            path.display()
        );
    }
    let mut reader = zip
        .by_name(&info.path)
        .with_context(|| format!("{}: tensor data {} missing", path.display(), info.path))?;
    let offset = info.layout.start_offset() * info.dtype.size_in_bytes();
    if offset > 0 {
        std::io::copy(
            &mut std::io::Read::take(&mut reader, offset as u64),
            &mut std::io::sink(),
        )?;
    }
    let shape = info.layout.shape().clone();
    let mut buf = vec![0u8; shape.elem_count() * info.dtype.size_in_bytes()];
    std::io::Read::read_exact(&mut reader, &mut buf)
        .with_context(|| format!("{}: tensor data is truncated", path.display()))?;
    Ok(candle_core::Tensor::from_raw_buffer(
        &buf,
        info.dtype,
        shape.dims(),
        &candle_core::Device::Cpu,
    )?)
}

struct PtStack {
    indices: Vec<usize>,
    /// layer -> (n_kept x hidden)
    per_layer: Vec<Vec<f32>>,
    centroids: Vec<f32>,
}

fn read_pt_tree(root: &Path, map: &Mapping, on_mismatch: OnMismatch) -> Result<Bundle> {
    let mut files: Vec<(String, String)> = Vec::new();
    let mut hash = |p: &Path| -> Result<()> {
        files.push((
            p.strip_prefix(root).unwrap_or(p).display().to_string(),
            sha256_file(p)?,
        ));
        Ok(())
    };
    let method_list: Vec<(Method, String)> = map
        .methods
        .iter()
        .map(|(m, d)| {
            Ok((
                Method::parse(m).with_context(|| format!("mapping: unknown method `{m}`"))?,
                d.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    // Metadata of the first checkpoint/method fixes layers, personas and question count.
    let first = root
        .join(
            &map.checkpoints
                .first()
                .context("mapping lists no checkpoints")?
                .dir,
        )
        .join(&method_list.first().context("mapping lists no methods")?.1)
        .join("metadata.json");
    let md: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&first).with_context(|| format!("reading {}", first.display()))?,
    )
    .with_context(|| format!("parsing {}", first.display()))?;
    let layers: Vec<u32> = md
        .get("layers")
        .and_then(|l| l.as_array())
        .with_context(|| format!("{}: no `layers`", first.display()))?
        .iter()
        .filter_map(|x| x.as_u64())
        .map(|x| x as u32)
        .collect();
    let persona_names: Vec<String> = match &map.personas {
        Some(p) => p.clone(),
        None => md
            .get("roles")
            .and_then(|r| r.as_array())
            .with_context(|| {
                format!(
                    "{}: no `roles`; list personas in the mapping",
                    first.display()
                )
            })?
            .iter()
            .filter_map(|x| x.as_str().map(|s| s.to_string()))
            .collect(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for n in &persona_names {
        if !seen.insert(n) {
            bail!("persona `{n}` is listed twice (mapping `personas` or metadata `roles`)");
        }
    }
    let n_questions =
        md.get("n_questions")
            .and_then(|x| x.as_u64())
            .with_context(|| format!("{}: no `n_questions`", first.display()))? as usize;
    let model_id = map
        .model
        .clone()
        .or_else(|| {
            md.get("model")
                .and_then(|m| m.as_str())
                .map(|s| s.to_string())
        })
        .unwrap_or_default();
    let prompts: BTreeMap<String, String> = match &map.persona_prompts_file {
        Some(f) => crate::study::parse_personas(
            &std::fs::read_to_string(root.join(f))
                .with_context(|| format!("reading {}", f.display()))?,
            &f.display().to_string(),
        )?
        .into_iter()
        .map(|p| (p.name, p.system_prompt))
        .collect(),
        None => BTreeMap::new(),
    };
    let questions: Vec<Question> = match &map.questions_file {
        Some(f) => {
            let qs = crate::study::parse_questions(
                &std::fs::read_to_string(root.join(f))
                    .with_context(|| format!("reading {}", f.display()))?,
                &f.display().to_string(),
            )?;
            if qs.len() < n_questions {
                bail!(
                    "{}: {} questions, but the cache has {n_questions}",
                    f.display(),
                    qs.len()
                );
            }
            qs.into_iter().take(n_questions).collect()
        }
        None => (0..n_questions)
            .map(|i| Question {
                id: i as u32,
                text: String::new(),
            })
            .collect(),
    };
    let (p, q) = (persona_names.len(), n_questions);
    // stacks[ck][method][persona]
    let mut stacks: Vec<Vec<Vec<PtStack>>> = Vec::new();
    let mut hidden: Option<(usize, PathBuf)> = None;
    for c in &map.checkpoints {
        let mut per_method = Vec::new();
        for (m, mdir) in &method_list {
            let dir = root.join(&c.dir).join(mdir);
            if !dir.is_dir() {
                bail!(
                    "checkpoint `{}` method {}: directory {} does not exist",
                    c.name,
                    m.name(),
                    dir.display()
                );
            }
            let mut per_persona = Vec::new();
            for name in &persona_names {
                let ip = dir.join(format!("{name}_question_indices.pt"));
                let it = read_pt_tensor(&ip)?;
                hash(&ip)?;
                let indices: Vec<usize> = it
                    .to_dtype(candle_core::DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?
                    .into_iter()
                    .map(|x| x as usize)
                    .collect();
                if let Some(&bad) = indices.iter().find(|&&i| i >= q) {
                    bail!(
                        "{}: question index {bad} is out of range (n_questions = {q})",
                        ip.display()
                    );
                }
                let mut per_layer = Vec::new();
                for &l in &layers {
                    let fp = dir.join(format!("{name}_perquestion_L{l}.pt"));
                    if !fp.exists() {
                        bail!("persona `{name}` lacks layer {l} for checkpoint `{}` method {}: {} is missing", c.name, m.name(), fp.display());
                    }
                    let t = read_pt_tensor(&fp)?.to_dtype(candle_core::DType::F32)?;
                    hash(&fp)?;
                    let (n, hd) = t.dims2().with_context(|| {
                        format!("{}: expected a (n_questions, hidden) matrix", fp.display())
                    })?;
                    match &hidden {
                        None => hidden = Some((hd, fp.clone())),
                        Some((h0, f0)) if *h0 != hd => bail!(
                            "hidden size mismatch: {} has {hd}, {} has {h0}",
                            fp.display(),
                            f0.display()
                        ),
                        _ => {}
                    }
                    if n != indices.len() {
                        bail!(
                            "{}: {n} rows but {} lists {} question indices",
                            fp.display(),
                            ip.display(),
                            indices.len()
                        );
                    }
                    let v = t.flatten_all()?.to_vec1::<f32>()?;
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        bail!(
                            "{}: NaN/Inf at row {}, column {}",
                            fp.display(),
                            i / hd,
                            i % hd
                        );
                    }
                    per_layer.push(v);
                }
                let cp = dir.join(format!("{name}.pt"));
                let ct = read_pt_tensor(&cp)?.to_dtype(candle_core::DType::F32)?;
                hash(&cp)?;
                let centroids = ct.flatten_all()?.to_vec1::<f32>()?;
                per_persona.push(PtStack {
                    indices,
                    per_layer,
                    centroids,
                });
            }
            per_method.push(per_persona);
        }
        stacks.push(per_method);
    }
    let h = hidden
        .map(|x| x.0)
        .context("no per-question tensors found")?;
    // Question sets must agree across checkpoints (the analysis pairs questions).
    let mut notes = Vec::new();
    for (mi, (m, _)) in method_list.iter().enumerate() {
        for (pi, name) in persona_names.iter().enumerate() {
            let sets: Vec<std::collections::BTreeSet<usize>> = stacks
                .iter()
                .map(|s| s[mi][pi].indices.iter().copied().collect())
                .collect();
            if sets.windows(2).all(|w| w[0] == w[1]) {
                continue;
            }
            let common: std::collections::BTreeSet<usize> = sets
                .iter()
                .skip(1)
                .fold(sets[0].clone(), |a, b| a.intersection(b).copied().collect());
            let detail = map
                .checkpoints
                .iter()
                .zip(&sets)
                .map(|(c, s)| format!("{}: {:?}", c.name, s))
                .collect::<Vec<_>>()
                .join("; ");
            match on_mismatch {
                OnMismatch::Refuse => bail!(
                    "persona `{name}` method {}: question indices differ across checkpoints ({detail}); the paired analysis needs the same questions. Pass --on-mismatch intersect to keep only the {} common ones",
                    m.name(),
                    common.len()
                ),
                OnMismatch::Intersect => {
                    notes.push(format!("persona {name} method {}: kept {} common questions ({detail})", m.name(), common.len()));
                    for s in stacks.iter_mut() {
                        let st = &mut s[mi][pi];
                        let keep: Vec<usize> = (0..st.indices.len()).filter(|&r| common.contains(&st.indices[r])).collect();
                        st.indices = keep.iter().map(|&r| st.indices[r]).collect();
                        for v in st.per_layer.iter_mut() {
                            *v = keep.iter().flat_map(|&r| v[r * h..(r + 1) * h].to_vec()).collect();
                        }
                        st.centroids.clear(); // recomputed below from the kept rows
                    }
                }
            }
        }
    }
    let mut cells = Vec::new();
    for (ck, _) in map.checkpoints.iter().enumerate() {
        for (mi, (m, _)) in method_list.iter().enumerate() {
            for (li, &l) in layers.iter().enumerate() {
                let mut per_q = vec![0f32; p * q * h];
                let mut valid = vec![false; p * q];
                let mut cents = vec![0f32; p * h];
                for pi in 0..p {
                    let st = &stacks[ck][mi][pi];
                    for (r, &qi) in st.indices.iter().enumerate() {
                        valid[pi * q + qi] = true;
                        per_q[(pi * q + qi) * h..(pi * q + qi + 1) * h]
                            .copy_from_slice(&st.per_layer[li][r * h..(r + 1) * h]);
                    }
                    if st.centroids.len() == layers.len() * h {
                        cents[pi * h..(pi + 1) * h]
                            .copy_from_slice(&st.centroids[li * h..(li + 1) * h]);
                    } else {
                        let n = st.indices.len().max(1) as f64;
                        for j in 0..h {
                            cents[pi * h + j] = ((0..st.indices.len())
                                .map(|r| st.per_layer[li][r * h + j] as f64)
                                .sum::<f64>()
                                / n) as f32;
                        }
                    }
                }
                cells.push(Cell {
                    checkpoint: ck as u32,
                    method: *m,
                    layer: l,
                    centroids: Blob::from_f32(&cents),
                    per_question: Blob::from_f32(&per_q),
                    valid,
                });
            }
        }
    }
    let mut extra = vec![
        ("imported_from".into(), root.display().to_string()),
        (
            "import.format".into(),
            "PyTorch .pt activation cache (extract_persona_vectors.py layout)".into(),
        ),
        (
            "import.files_sha256".into(),
            files
                .iter()
                .map(|(f, h)| format!("{f}={h}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    if !notes.is_empty() {
        extra.push(("import.question_intersection".into(), notes.join("\n")));
    }
    let bundle = Bundle {
        provenance: Provenance {
            tool: "persona-geometry import".into(),
            tool_version: shared::TOOL_VERSION.into(),
            created: "unknown (imported)".into(),
            seed: md.get("seed").and_then(|s| s.as_u64()).unwrap_or(0),
            model_id,
            model_revision: String::new(),
            layer_convention: format!(
                "as recorded by the source cache (this tool's convention: {})",
                shared::LAYER_CONVENTION
            ),
            extra,
        },
        personas: persona_names
            .iter()
            .map(|n| Persona {
                name: n.clone(),
                system_prompt: prompts.get(n).cloned().unwrap_or_default(),
            })
            .collect(),
        questions,
        checkpoints: map
            .checkpoints
            .iter()
            .map(|c| Checkpoint {
                name: c.name.clone(),
                role: Role::parse(&c.role),
                label: c.label.clone().unwrap_or_else(|| c.name.clone()),
                provenance: vec![("import.dir".into(), c.dir.display().to_string())],
            })
            .collect(),
        methods: method_list.iter().map(|(m, _)| *m).collect(),
        layers,
        hidden_size: h as u32,
        cells,
        responses: vec![],
        compact: None,
    };
    bundle
        .validate()
        .context("the imported data do not form a consistent bundle")?;
    Ok(bundle)
}

pub fn import(source: &Path, mapping: Option<&Path>, on_mismatch: OnMismatch) -> Result<Bundle> {
    let what = source.display().to_string();
    let ext = source.extension().and_then(|e| e.to_str()).unwrap_or("");
    if source.is_file() && ext == "npz" {
        let bytes = std::fs::read(source).with_context(|| format!("reading {what}"))?;
        let (arrays, raw) = read_npz(&bytes, &what)?;
        let meta = raw
            .get("meta.json")
            .with_context(|| {
                format!(
                    "{what}: no meta.json member (an .npz from `persona-geometry export` has one)"
                )
            })?
            .clone();
        return bundle_from_export(&meta, Store::Map(arrays), &what);
    }
    if source.is_file() && ext == "safetensors" {
        let (arrays, meta) = read_safetensors(source)?;
        return bundle_from_export(&meta, Store::Map(arrays), &what);
    }
    if source.is_dir() {
        if source.join("meta.json").exists() {
            let meta = std::fs::read(source.join("meta.json"))?;
            return bundle_from_export(&meta, Store::NpyDir(source.to_path_buf()), &what);
        }
        let mp = mapping.with_context(|| format!("{what} is a directory without meta.json: a PyTorch cache needs --mapping MAP.toml (see README)"))?;
        let text =
            std::fs::read_to_string(mp).with_context(|| format!("reading {}", mp.display()))?;
        let map: Mapping =
            toml::from_str(&text).with_context(|| format!("mapping {}", mp.display()))?;
        return read_pt_tree(source, &map, on_mismatch);
    }
    bail!("{what}: not an .npz, .safetensors, or directory")
}
