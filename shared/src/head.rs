//! The study head: a small JSON file published beside a compact bundle (`compact` writes
//! `OUT.head.json`) with everything the page's first screen needs (what the study is and the
//! verdict it was published with) but none of the activations. The page fetches it beside the
//! bundle and shows the study and its published verdict while the bundle (tens of MB) is still
//! downloading; once the bundle is decoded, the head must describe exactly those bytes (length and
//! the payload CRC-32 of the bundle's header) and the same study, or the page says so and shows
//! the bundle's own.

use crate::bundle::{Bundle, BundleError, Checkpoint, Method, Persona, Provenance, Question, Role};
use serde::{Deserialize, Serialize};

/// The `format` field of every head this version writes.
pub const HEAD_FORMAT: &str = "persona-geometry study head v1";

/// A bundle `B`'s head is published as `B` + this suffix.
pub const HEAD_SUFFIX: &str = ".head.json";

/// Heads larger than this are refused unread (a real one is tens of kB: question texts and the
/// published rows).
pub const MAX_HEAD_BYTES: usize = 8 << 20;

/// What a page shows about a bundle before its payload arrives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StudyHead {
    pub format: String,
    /// Size of the bundle file this head was written for.
    pub bundle_bytes: u64,
    /// The CRC-32 of that bundle's payload, as its header stores it (bytes 12..16).
    pub bundle_payload_crc32: u32,
    /// The bundle's provenance as `analysis::head_provenance` reduces it (the published rows
    /// the verdict rests on, not every row; no per-persona outside energy).
    pub provenance: Provenance,
    pub personas: Vec<Persona>,
    pub questions: Vec<Question>,
    pub checkpoints: Vec<Checkpoint>,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    pub hidden_size: u32,
    /// Residual components kept per (method, layer) of the compact form (0 for a full bundle).
    pub components: u32,
}

/// The payload CRC-32 a bundle file's header stores (None if the bytes are too short to hold one).
pub fn header_payload_crc32(bundle_bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(
        bundle_bytes.get(12..16)?.try_into().ok()?,
    ))
}

impl StudyHead {
    /// The head of `bundle`, whose encoded file is `bytes`.
    pub fn of(bundle: &Bundle, bytes: &[u8]) -> StudyHead {
        StudyHead {
            format: HEAD_FORMAT.into(),
            bundle_bytes: bytes.len() as u64,
            bundle_payload_crc32: header_payload_crc32(bytes).unwrap_or(0),
            provenance: crate::analysis::head_provenance(
                &bundle.provenance,
                bundle
                    .checkpoints
                    .iter()
                    .find(|c| c.role == Role::Base)
                    .map(|c| c.name.as_str()),
            ),
            personas: bundle.personas.clone(),
            questions: bundle.questions.clone(),
            checkpoints: bundle.checkpoints.clone(),
            methods: bundle.methods.clone(),
            layers: bundle.layers.clone(),
            hidden_size: bundle.hidden_size,
            components: bundle.compact.as_ref().map(|c| c.components).unwrap_or(0),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a study head serialises")
    }

    /// Parses a head from outside; `name` (the file or URL) is named in errors.
    pub fn from_json(name: &str, text: &str) -> Result<StudyHead, BundleError> {
        let bad = |problem: String| BundleError::Inconsistent {
            field: format!("{name}: study head"),
            problem,
        };
        if text.len() > MAX_HEAD_BYTES {
            return Err(bad(format!(
                "{} bytes, more than a head can be ({MAX_HEAD_BYTES}); this is not a head file",
                text.len()
            )));
        }
        let head: StudyHead = serde_json::from_str(text)
            .map_err(|e| bad(format!("{e}; rewrite it with `persona-geometry compact`")))?;
        if head.format != HEAD_FORMAT {
            return Err(bad(format!(
                "format `{}`, this page reads `{HEAD_FORMAT}`",
                head.format
            )));
        }
        if head.personas.len() < 2
            || head.questions.is_empty()
            || head.checkpoints.is_empty()
            || head.methods.is_empty()
            || head.layers.is_empty()
        {
            return Err(bad(
                "needs at least 2 personas and one question, checkpoint, method and layer".into(),
            ));
        }
        Ok(head)
    }

    /// Why this head does not describe the bundle decoded from `bytes` (None when it does):
    /// same file (length and payload CRC-32) and the same study.
    pub fn mismatch(&self, bundle: &Bundle, bytes: &[u8]) -> Option<String> {
        let own = StudyHead::of(bundle, bytes);
        if self.bundle_bytes != own.bundle_bytes
            || self.bundle_payload_crc32 != own.bundle_payload_crc32
        {
            return Some(format!(
                "it was written for a bundle of {} bytes with payload CRC-32 {:08x}; this one has {} bytes and {:08x}",
                self.bundle_bytes, self.bundle_payload_crc32, own.bundle_bytes, own.bundle_payload_crc32
            ));
        }
        if *self != own {
            return Some("same file size and checksum but a different study description".into());
        }
        None
    }
}

/// Where the head of the bundle at `url` is published: `url` + ".head.json", before any query
/// string or fragment.
pub fn head_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    format!("{}{HEAD_SUFFIX}{}", &url[..cut], &url[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{synth_bundle, SynthSpec};

    fn bundle_and_bytes() -> (Bundle, Vec<u8>) {
        let b = synth_bundle(&SynthSpec {
            personas: 3,
            questions: 5,
            hidden: 8,
            layers: vec![1, 2],
            ..SynthSpec::default()
        });
        let bytes = b.encode().unwrap();
        (b, bytes)
    }

    #[test]
    fn head_round_trips_and_describes_its_bundle() {
        let (b, bytes) = bundle_and_bytes();
        let head = StudyHead::of(&b, &bytes);
        assert_eq!(head.bundle_bytes, bytes.len() as u64);
        assert_eq!(
            head.bundle_payload_crc32,
            crc32fast::hash(&bytes[24..]),
            "the header's CRC is the payload's"
        );
        let back = StudyHead::from_json("x.head.json", &head.to_json()).unwrap();
        assert_eq!(back, head);
        assert_eq!(back.mismatch(&b, &bytes), None);
    }

    #[test]
    fn head_of_another_bundle_is_named_as_such() {
        let (b, bytes) = bundle_and_bytes();
        let head = StudyHead::of(&b, &bytes);
        let mut other = b.clone();
        other.provenance.seed += 1;
        let other_bytes = other.encode().unwrap();
        let why = head.mismatch(&other, &other_bytes).unwrap();
        assert!(why.contains("payload CRC-32"), "{why}");
        // Same bytes, but a head edited by hand: the study differs.
        let mut edited = head.clone();
        edited.personas[0].name = "someone_else".into();
        let why = edited.mismatch(&b, &bytes).unwrap();
        assert!(why.contains("different study"), "{why}");
    }

    #[test]
    fn bad_heads_are_refused_with_the_file_named() {
        let (b, bytes) = bundle_and_bytes();
        let e = StudyHead::from_json("s/x.head.json", "{not json").unwrap_err();
        assert!(e.to_string().contains("s/x.head.json"), "{e}");
        let mut h = StudyHead::of(&b, &bytes);
        h.format = "something else".into();
        let e = StudyHead::from_json("x.head.json", &h.to_json()).unwrap_err();
        assert!(e.to_string().contains("format `something else`"), "{e}");
        let mut h = StudyHead::of(&b, &bytes);
        h.personas.truncate(1);
        assert!(StudyHead::from_json("x.head.json", &h.to_json()).is_err());
        let huge = " ".repeat(MAX_HEAD_BYTES + 1);
        assert!(StudyHead::from_json("x.head.json", &huge).is_err());
    }

    #[test]
    fn head_url_keeps_query_and_fragment() {
        assert_eq!(
            head_url("default.compact.pgb"),
            "default.compact.pgb.head.json"
        );
        assert_eq!(
            head_url("https://h/s/b.pgb?raw=1#x"),
            "https://h/s/b.pgb.head.json?raw=1#x"
        );
    }
}
