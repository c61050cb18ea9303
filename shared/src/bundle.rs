//! The bundle: one versioned binary file holding activations and their provenance.
//!
//! Layout on disk:
//! ```text
//! offset  size  field
//! 0       8     magic  b"PGBUNDLE"
//! 8       4     format version (u32 LE)
//! 12      4     CRC-32 of the payload (u32 LE)
//! 16      8     payload length in bytes (u64 LE)
//! 24      ..    payload: postcard encoding of [`Bundle`]
//! ```
//! Large arrays are little-endian byte blobs (`serde_bytes`), so decoding them is one copy.
//! Decoding checks magic, version, length and checksum before postcard sees a byte, then
//! [`Bundle::validate`] checks every shape; nothing from outside can make it panic or
//! allocate more than the file's own size.

use half::f16;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"PGBUNDLE";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a persona-geometry bundle (bad magic bytes {found:?}); expected a file written by `persona-geometry extract`, `synth`, `import` or `compact`")]
    BadMagic { found: Vec<u8> },
    #[error("bundle is truncated: {what} needs {needed} bytes but only {available} are present; the file was cut short (re-copy or re-run the command that wrote it)")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("bundle format version {found} is not supported by this tool (it reads version {supported}); use a matching persona-geometry release")]
    Version { found: u32, supported: u32 },
    #[error("bundle checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("bundle has {extra} trailing bytes after the payload: the file is corrupt or two files were concatenated")]
    Trailing { extra: u64 },
    #[error("bundle payload could not be decoded ({0}); the file is corrupt or was written by an incompatible tool")]
    Decode(String),
    #[error("bundle is inconsistent: field `{field}`: {problem}")]
    Inconsistent { field: String, problem: String },
    #[error("bundle could not be encoded: {0}")]
    Encode(String),
}

fn inconsistent(field: impl Into<String>, problem: impl Into<String>) -> BundleError {
    BundleError::Inconsistent {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Copy)]
pub enum Method {
    /// Last token of the chat-templated prompt including the generation prompt.
    A,
    /// Mean over the greedily generated response tokens.
    B,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::A => "A",
            Method::B => "B",
        }
    }
    pub fn parse(s: &str) -> Option<Method> {
        match s.trim().to_ascii_uppercase().as_str() {
            "A" | "METHOD_A" => Some(Method::A),
            "B" | "METHOD_B" => Some(Method::B),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Base,
    Em,
    Benign,
    Other(String),
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s.trim().to_ascii_lowercase().as_str() {
            "base" => Role::Base,
            "em" => Role::Em,
            "benign" => Role::Benign,
            other => Role::Other(other.to_string()),
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Role::Base => "base",
            Role::Em => "em",
            Role::Benign => "benign",
            Role::Other(s) => s,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Persona {
    pub name: String,
    pub system_prompt: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Question {
    pub id: u32,
    pub text: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub name: String,
    pub role: Role,
    pub label: String,
    /// Free-form provenance of how this checkpoint was made (adapter path, hashes, rank,
    /// alpha, base-model check, steering vector...), in insertion order.
    pub provenance: Vec<(String, String)>,
}

impl Checkpoint {
    /// The training arm this checkpoint is one seed of: its `arm` provenance entry (set by the
    /// study's `arm` field), else its role's name.
    pub fn arm(&self) -> String {
        self.provenance
            .iter()
            .find(|(k, _)| k == "arm")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.role.name().to_string())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Provenance {
    pub tool: String,
    pub tool_version: String,
    pub created: String,
    pub seed: u64,
    pub model_id: String,
    pub model_revision: String,
    pub layer_convention: String,
    /// Everything else (model hashes, generation settings, study file, import sources).
    pub extra: Vec<(String, String)>,
}

impl Provenance {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
}

/// A little-endian array stored as bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Blob {
    pub dtype: DType,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn from_f32(v: &[f32]) -> Blob {
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        Blob {
            dtype: DType::F32,
            bytes,
        }
    }
    pub fn from_f32_as_f16(v: &[f32]) -> Blob {
        let mut bytes = Vec::with_capacity(v.len() * 2);
        for x in v {
            bytes.extend_from_slice(&f16::from_f32(*x).to_le_bytes());
        }
        Blob {
            dtype: DType::F16,
            bytes,
        }
    }
    pub fn len(&self) -> usize {
        match self.dtype {
            DType::F32 => self.bytes.len() / 4,
            DType::F16 => self.bytes.len() / 2,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn byte_width(&self) -> usize {
        match self.dtype {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// Activations of one (checkpoint, method, layer).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Cell {
    pub checkpoint: u32,
    pub method: Method,
    pub layer: u32,
    /// personas x dim, f32: the mean of the valid per-question activations.
    pub centroids: Blob,
    /// personas x questions x dim (full bundles), or personas x questions x k residual
    /// coordinates (compact bundles, f16; see [`CompactInfo`]).
    pub per_question: Blob,
    /// personas x questions: false where the activation is missing (e.g. empty response).
    pub valid: Vec<bool>,
}

/// Method-B responses of one checkpoint (personas x questions, row-major).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Responses {
    pub checkpoint: u32,
    pub texts: Vec<String>,
    pub token_counts: Vec<u32>,
}

/// Present in compact bundles: how coordinates relate to the model's hidden space.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompactInfo {
    /// Requested number of residual principal components.
    pub components: u32,
    pub per_method_layer: Vec<CompactBasisInfo>,
    pub texts_kept: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompactBasisInfo {
    pub method: Method,
    pub layer: u32,
    /// Basis size: the first `k` columns are the top-k within-persona residual PCs, the rest
    /// complete the span of every centroid of every checkpoint.
    pub dim: u32,
    pub k: u32,
    /// Sum of squared within-persona residuals (all checkpoints, valid questions).
    pub residual_ss_total: f64,
    /// The part of it that the k stored components keep.
    pub residual_ss_retained: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Bundle {
    pub provenance: Provenance,
    pub personas: Vec<Persona>,
    pub questions: Vec<Question>,
    pub checkpoints: Vec<Checkpoint>,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    /// Hidden size of the model.
    pub hidden_size: u32,
    /// One per (checkpoint, method, layer), in that nesting order.
    pub cells: Vec<Cell>,
    pub responses: Vec<Responses>,
    pub compact: Option<CompactInfo>,
}

/// Plausibility bounds for sizes read from outside.
const MAX_DIM: usize = 1 << 17;
const MAX_ITEMS: usize = 1 << 20;

impl Bundle {
    pub fn n_personas(&self) -> usize {
        self.personas.len()
    }
    pub fn n_questions(&self) -> usize {
        self.questions.len()
    }

    pub fn cell_index(&self, checkpoint: usize, method: Method, layer: u32) -> Option<usize> {
        let mi = self.methods.iter().position(|&m| m == method)?;
        let li = self.layers.iter().position(|&l| l == layer)?;
        Some((checkpoint * self.methods.len() + mi) * self.layers.len() + li)
    }

    pub fn cell(&self, checkpoint: usize, method: Method, layer: u32) -> Option<&Cell> {
        self.cell_index(checkpoint, method, layer)
            .map(|i| &self.cells[i])
    }

    /// The compact basis of (method, layer), if this bundle is compact.
    pub fn basis_info(&self, method: Method, layer: u32) -> Option<&CompactBasisInfo> {
        self.compact
            .as_ref()?
            .per_method_layer
            .iter()
            .find(|b| b.method == method && b.layer == layer)
    }

    /// Width of the stored centroid vectors: the hidden size, or the basis size when compact.
    pub fn centroid_dim(&self, method: Method, layer: u32) -> usize {
        match &self.compact {
            None => self.hidden_size as usize,
            Some(_) => self
                .basis_info(method, layer)
                .map(|b| b.dim as usize)
                .unwrap_or(0),
        }
    }

    /// Width of the stored per-question vectors: the hidden size, or k residual PCs when compact.
    pub fn per_question_dim(&self, method: Method, layer: u32) -> usize {
        match &self.compact {
            None => self.hidden_size as usize,
            Some(_) => self
                .basis_info(method, layer)
                .map(|b| b.k as usize)
                .unwrap_or(0),
        }
    }

    pub fn checkpoint_by_role(&self, role: &Role) -> Vec<usize> {
        (0..self.checkpoints.len())
            .filter(|&i| &self.checkpoints[i].role == role)
            .collect()
    }

    /// Checks every shape and reference. Called by [`Bundle::decode`]; writers call it too so
    /// that a bad bundle is never written.
    pub fn validate(&self) -> Result<(), BundleError> {
        let p = self.personas.len();
        let q = self.questions.len();
        if p < 2 || p > MAX_ITEMS {
            return Err(inconsistent(
                "personas",
                format!("{p} personas; need at least 2"),
            ));
        }
        if q < 1 || q > MAX_ITEMS {
            return Err(inconsistent(
                "questions",
                format!("{q} questions; need at least 1"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for persona in &self.personas {
            if !names.insert(persona.name.as_str()) {
                return Err(inconsistent(
                    "personas",
                    format!("duplicate persona `{}`", persona.name),
                ));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for question in &self.questions {
            if !ids.insert(question.id) {
                return Err(inconsistent(
                    "questions",
                    format!("duplicate question id {}", question.id),
                ));
            }
        }
        if self.checkpoints.is_empty() {
            return Err(inconsistent("checkpoints", "no checkpoints"));
        }
        let mut cnames = std::collections::BTreeSet::new();
        for c in &self.checkpoints {
            if !cnames.insert(c.name.as_str()) {
                return Err(inconsistent(
                    "checkpoints",
                    format!("duplicate checkpoint `{}`", c.name),
                ));
            }
        }
        if self.methods.is_empty() || self.layers.is_empty() {
            return Err(inconsistent("methods/layers", "no methods or no layers"));
        }
        let h = self.hidden_size as usize;
        if h == 0 || h > MAX_DIM {
            return Err(inconsistent(
                "hidden_size",
                format!("{h} is not a plausible hidden size"),
            ));
        }
        let expected_cells = self.checkpoints.len() * self.methods.len() * self.layers.len();
        if self.cells.len() != expected_cells {
            return Err(inconsistent(
                "cells",
                format!(
                    "{} cells, expected checkpoints x methods x layers = {expected_cells}",
                    self.cells.len()
                ),
            ));
        }
        if self.compact.is_some() {
            for m in &self.methods {
                for l in &self.layers {
                    let info = self.basis_info(*m, *l);
                    match info {
                        None => {
                            return Err(inconsistent(
                                "compact.per_method_layer",
                                format!("missing basis for method {} layer {l}", m.name()),
                            ))
                        }
                        Some(b) if b.k > b.dim || b.dim as usize > MAX_DIM || b.dim == 0 => {
                            return Err(inconsistent(
                                "compact.per_method_layer",
                                format!(
                                    "basis for method {} layer {l} has k={} dim={}",
                                    m.name(),
                                    b.k,
                                    b.dim
                                ),
                            ))
                        }
                        _ => {}
                    }
                }
            }
        }
        for ci in 0..self.checkpoints.len() {
            for &m in &self.methods {
                for &l in &self.layers {
                    let idx = self.cell_index(ci, m, l).expect("method and layer listed");
                    let cell = &self.cells[idx];
                    let field = format!("cells[{idx}]");
                    if cell.checkpoint as usize != ci || cell.method != m || cell.layer != l {
                        return Err(inconsistent(
                            field,
                            format!(
                                "holds (checkpoint {}, method {}, layer {}) where (checkpoint {ci}, method {}, layer {l}) belongs",
                                cell.checkpoint,
                                cell.method.name(),
                                cell.layer,
                                m.name()
                            ),
                        ));
                    }
                    let cd = self.centroid_dim(m, l);
                    let qd = self.per_question_dim(m, l);
                    for (name, blob, want) in [
                        ("centroids", &cell.centroids, p * cd),
                        ("per_question", &cell.per_question, p * q * qd),
                    ] {
                        if blob.bytes.len() % blob.byte_width() != 0 || blob.len() != want {
                            return Err(inconsistent(
                                format!("{field}.{name}"),
                                format!("{} values, expected {want}", blob.len()),
                            ));
                        }
                    }
                    if cell.centroids.dtype != DType::F32 {
                        return Err(inconsistent(format!("{field}.centroids"), "must be f32"));
                    }
                    if cell.valid.len() != p * q {
                        return Err(inconsistent(
                            format!("{field}.valid"),
                            format!(
                                "{} flags, expected personas x questions = {}",
                                cell.valid.len(),
                                p * q
                            ),
                        ));
                    }
                    for pi in 0..p {
                        if !cell.valid[pi * q..(pi + 1) * q].iter().any(|&v| v) {
                            return Err(inconsistent(
                                format!("{field}.valid"),
                                format!(
                                    "persona `{}` has no valid question for checkpoint `{}` method {} layer {l}",
                                    self.personas[pi].name,
                                    self.checkpoints[ci].name,
                                    m.name()
                                ),
                            ));
                        }
                    }
                    if cell.centroids.to_f32().iter().any(|x| !x.is_finite()) {
                        return Err(inconsistent(
                            format!("{field}.centroids"),
                            "contains NaN or Inf",
                        ));
                    }
                }
            }
        }
        for r in &self.responses {
            if r.checkpoint as usize >= self.checkpoints.len()
                || r.texts.len() != p * q
                || r.token_counts.len() != p * q
            {
                return Err(inconsistent(
                    "responses",
                    format!(
                        "response set for checkpoint {} does not have personas x questions entries",
                        r.checkpoint
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The same bundle restricted to the named personas, in the bundle's order (the page's
    /// persona subset). Coordinates of compact bundles stay valid: the stored basis spans every
    /// persona's centroid, so cosines and norms of the kept ones are unchanged.
    pub fn select_personas(&self, names: &[String]) -> Result<Bundle, BundleError> {
        for n in names {
            if !self.personas.iter().any(|p| &p.name == n) {
                return Err(inconsistent(
                    "personas",
                    format!("no persona named `{n}` in this bundle"),
                ));
            }
        }
        let keep: Vec<usize> = (0..self.personas.len())
            .filter(|&i| names.contains(&self.personas[i].name))
            .collect();
        if keep.len() < 2 {
            return Err(inconsistent(
                "personas",
                "select at least two personas (geometry and LDA compare personas)",
            ));
        }
        let q = self.n_questions();
        let rows = |blob: &Blob, width: usize| -> Blob {
            let w = width * blob.byte_width();
            let mut bytes = Vec::with_capacity(keep.len() * w);
            for &i in &keep {
                bytes.extend_from_slice(&blob.bytes[i * w..(i + 1) * w]);
            }
            Blob {
                dtype: blob.dtype,
                bytes,
            }
        };
        let mut out = self.clone();
        out.personas = keep.iter().map(|&i| self.personas[i].clone()).collect();
        for cell in out.cells.iter_mut() {
            let cd = self.centroid_dim(cell.method, cell.layer);
            let qd = self.per_question_dim(cell.method, cell.layer);
            cell.centroids = rows(&cell.centroids, cd);
            cell.per_question = rows(&cell.per_question, q * qd);
            cell.valid = keep
                .iter()
                .flat_map(|&i| cell.valid[i * q..(i + 1) * q].iter().copied())
                .collect();
        }
        for r in out.responses.iter_mut() {
            if r.texts.len() == self.personas.len() * q {
                r.texts = keep
                    .iter()
                    .flat_map(|&i| r.texts[i * q..(i + 1) * q].iter().cloned())
                    .collect();
            }
            if r.token_counts.len() == self.personas.len() * q {
                r.token_counts = keep
                    .iter()
                    .flat_map(|&i| r.token_counts[i * q..(i + 1) * q].iter().copied())
                    .collect();
            }
        }
        out.validate()?;
        Ok(out)
    }

    /// Serialises to the on-disk format. Validates first: an inconsistent bundle is never written.
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        self.validate()?;
        let payload =
            postcard::to_allocvec(self).map_err(|e| BundleError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parses and validates bytes from outside. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() < 8 {
            return Err(BundleError::Truncated {
                what: "magic",
                needed: 8,
                available: bytes.len() as u64,
            });
        }
        if &bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic {
                found: bytes[..8].to_vec(),
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                available: bytes.len() as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(BundleError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored_crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let available = (bytes.len() - HEADER_LEN) as u64;
        if len > available {
            return Err(BundleError::Truncated {
                what: "payload",
                needed: len,
                available,
            });
        }
        if len < available {
            return Err(BundleError::Trailing {
                extra: available - len,
            });
        }
        let payload = &bytes[HEADER_LEN..];
        let computed = crc32fast::hash(payload);
        if computed != stored_crc {
            return Err(BundleError::Checksum {
                stored: stored_crc,
                computed,
            });
        }
        let (bundle, rest): (Bundle, &[u8]) =
            postcard::take_from_bytes(payload).map_err(|e| BundleError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BundleError::Trailing {
                extra: rest.len() as u64,
            });
        }
        bundle.validate()?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{synth_bundle, SynthSpec};

    fn small() -> Bundle {
        synth_bundle(&SynthSpec {
            personas: 3,
            questions: 5,
            hidden: 8,
            layers: vec![1, 2],
            ..SynthSpec::default()
        })
    }

    #[test]
    fn round_trip_is_identical() {
        let b = small();
        let bytes = b.encode().unwrap();
        let back = Bundle::decode(&bytes).unwrap();
        assert_eq!(b, back);
        assert_eq!(bytes, back.encode().unwrap());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small().encode().unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            let err = Bundle::decode(&bytes[..cut]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("truncated") || msg.contains("magic"),
                "cut {cut}: {msg}"
            );
        }
    }

    #[test]
    fn flipped_bytes_are_caught_by_the_checksum() {
        let mut bytes = small().encode().unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x40;
        assert!(matches!(
            Bundle::decode(&bytes),
            Err(BundleError::Checksum { .. })
        ));
    }

    #[test]
    fn hostile_payload_with_valid_checksum_is_rejected_cleanly() {
        // Random payloads and huge length prefixes with a correct CRC: decode must fail, not panic
        // or allocate gigabytes.
        let mut rng = crate::rng::Rng::new(11);
        for trial in 0..300 {
            let len = 1 + rng.below(200);
            let mut payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if trial % 3 == 0 {
                payload.splice(0..0, [0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
            let mut bytes = Vec::new();
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&payload);
            assert!(Bundle::decode(&bytes).is_err());
        }
    }

    #[test]
    fn wrong_version_is_named() {
        let mut bytes = small().encode().unwrap();
        bytes[8] = 9;
        let msg = Bundle::decode(&bytes).unwrap_err().to_string();
        assert!(msg.contains("version 9"), "{msg}");
    }

    #[test]
    fn inconsistent_shapes_are_refused_with_the_field() {
        let mut b = small();
        b.cells[1].valid.pop();
        let msg = b.encode().unwrap_err().to_string();
        assert!(msg.contains("cells[1].valid"), "{msg}");
        let mut b = small();
        b.cells[0].centroids.bytes[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let msg = b.encode().unwrap_err().to_string();
        assert!(msg.contains("NaN"), "{msg}");
    }
}
