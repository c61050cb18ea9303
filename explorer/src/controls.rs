//! The page's state that the views share (through Leptos context): the controls, the
//! permalink they read and write, and how they fit a newly loaded bundle. No DOM here, so the
//! orchestration is tested in tests/web.rs.

use leptos::prelude::*;
use shared::analysis::ALL_METRICS;
use shared::bundle::Method;
use shared::head::StudyHead;
use shared::Bundle;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    pub personas: Vec<String>,
    pub permutations: usize,
    pub seed: u64,
}

/// What the page shows about the loaded bundle (cheap to clone, Send).
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub source: String,
    pub size_bytes: usize,
    pub personas: Vec<(String, String)>,
    pub checkpoints: Vec<(String, String, String, Vec<(String, String)>)>,
    pub methods: Vec<Method>,
    pub layers: Vec<u32>,
    pub questions: Vec<(u32, String)>,
    pub provenance: shared::bundle::Provenance,
    pub components: u32,
    /// The verdict and rows the bundle was published with (`compact --reference`), if any.
    pub published: Option<shared::analysis::Published>,
}

impl Meta {
    /// What the page shows about `bundle`, loaded from `name` (`size_bytes` long).
    pub fn of(name: &str, size_bytes: usize, bundle: &Bundle) -> Meta {
        let mut head = StudyHead::of(bundle, &[]);
        head.bundle_bytes = size_bytes as u64;
        Meta::of_head(name, &head)
    }

    /// What the page shows from a study head (published beside the bundle), before the
    /// bundle itself has arrived; the same as `of` on the bundle it describes.
    pub fn of_head(name: &str, head: &StudyHead) -> Meta {
        Meta {
            source: name.to_string(),
            size_bytes: head.bundle_bytes as usize,
            personas: head
                .personas
                .iter()
                .map(|p| (p.name.clone(), p.system_prompt.clone()))
                .collect(),
            checkpoints: head
                .checkpoints
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        c.role.name().to_string(),
                        c.label.clone(),
                        c.provenance.clone(),
                    )
                })
                .collect(),
            methods: head.methods.clone(),
            layers: head.layers.clone(),
            questions: head
                .questions
                .iter()
                .map(|q| (q.id, q.text.clone()))
                .collect(),
            provenance: head.provenance.clone(),
            components: head.components,
            published: shared::analysis::provenance_published(&head.provenance),
        }
    }
}

#[derive(Clone, Copy)]
pub struct Ctl {
    pub method: RwSignal<Method>,
    pub layer: RwSignal<u32>,
    pub treated: RwSignal<String>,
    pub centred: RwSignal<bool>,
    pub personas: RwSignal<Vec<String>>,
    /// None = p-only.
    pub threshold: RwSignal<Option<f64>>,
    pub alpha: RwSignal<f64>,
    pub permutations: RwSignal<usize>,
    pub seed: RwSignal<u64>,
    pub metric: RwSignal<String>,
    pub source: RwSignal<Option<String>>,
    pub meta: RwSignal<Option<Meta>>,
    /// The bundle itself is decoded and analysed (until then `meta` may come from its study
    /// head only: the study summary and published verdict show, the figures wait).
    pub bundle_ready: RwSignal<bool>,
    pub status: RwSignal<String>,
    pub error: RwSignal<Option<String>>,
    pub progress: RwSignal<(usize, usize)>,
    pub computing: RwSignal<bool>,
    pub version: RwSignal<u64>,
    /// Query parameters that were ignored or corrected, in words (shown at the top).
    pub url_notices: RwSignal<Vec<String>>,
}

impl Ctl {
    pub fn new() -> Ctl {
        Ctl {
            method: RwSignal::new(Method::A),
            layer: RwSignal::new(0),
            treated: RwSignal::new(String::new()),
            centred: RwSignal::new(false),
            personas: RwSignal::new(vec![]),
            threshold: RwSignal::new(Some(shared::analysis::defaults::PRIMARY_THRESHOLD)),
            alpha: RwSignal::new(shared::analysis::defaults::ALPHA),
            permutations: RwSignal::new(shared::analysis::defaults::PERMUTATIONS),
            seed: RwSignal::new(shared::analysis::defaults::SEED),
            metric: RwSignal::new("M1_raw".into()),
            source: RwSignal::new(None),
            meta: RwSignal::new(None),
            bundle_ready: RwSignal::new(false),
            status: RwSignal::new(String::new()),
            error: RwSignal::new(None),
            progress: RwSignal::new((0, 0)),
            computing: RwSignal::new(false),
            version: RwSignal::new(0),
            url_notices: RwSignal::new(vec![]),
        }
    }

    /// Controls from the query string's pairs (the permalink). Every parameter that cannot be
    /// used as given is named in `url_notices` with what was done instead: never a silent
    /// rewrite.
    pub fn apply_query(&self, pairs: Vec<(String, String)>) {
        let mut notes = Vec::new();
        let mut ignored = |k: &str, v: &str, why: &str| {
            notes.push(format!("URL parameter {k}={v} ignored: {why}"));
        };
        for (k, v) in pairs {
            match k.as_str() {
                "bundle" => self.source.set(Some(v)),
                "method" => match Method::parse(&v) {
                    Some(m) => self.method.set(m),
                    None => ignored(&k, &v, "methods are A or B"),
                },
                "layer" => match v.parse() {
                    Ok(l) => self.layer.set(l),
                    Err(_) => ignored(&k, &v, "not a layer number"),
                },
                "treated" => self.treated.set(v),
                "centre" => match v.as_str() {
                    "centred" | "raw" => self.centred.set(v == "centred"),
                    _ => ignored(&k, &v, "use centred or raw"),
                },
                "personas" => self.personas.set(
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                ),
                "threshold" => match parse_threshold(&v) {
                    Some(t) => self.threshold.set(t),
                    None => ignored(
                        &k,
                        &v,
                        "use a ratio (2, 1.5, 3x) or p for p-only; the 2x criterion is shown",
                    ),
                },
                "alpha" => match v.parse::<f64>() {
                    Ok(a) if a > 0.0 && a < 1.0 => self.alpha.set(a),
                    _ => ignored(&k, &v, "alpha must lie strictly between 0 and 1"),
                },
                "n" => match v.parse::<usize>() {
                    Ok(n) if (1..=100_000).contains(&n) => self.permutations.set(n),
                    Ok(n) => {
                        let c = n.clamp(1, 100_000);
                        self.permutations.set(c);
                        ignored(
                            &k,
                            &v,
                            &format!("N = {c} is used instead (allowed: 1 to 100,000)"),
                        );
                    }
                    Err(_) => ignored(&k, &v, "N must be a whole number"),
                },
                "seed" => match v.parse() {
                    Ok(s) => self.seed.set(s),
                    Err(_) => ignored(&k, &v, "the seed must be a whole number"),
                },
                "metric" if ALL_METRICS.contains(&v.as_str()) => self.metric.set(v),
                "metric" => ignored(&k, &v, "not a metric of this page"),
                _ => ignored(&k, &v, "unknown parameter"),
            }
        }
        self.url_notices.set(notes);
    }

    /// The query string of the view on screen (what `apply_query` reads back).
    pub fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(s) = self.source.get() {
            if !s.starts_with("file:") {
                q.push(("bundle".into(), s));
            }
        }
        q.push(("method".into(), self.method.get().name().into()));
        q.push(("layer".into(), self.layer.get().to_string()));
        q.push(("treated".into(), self.treated.get()));
        q.push((
            "centre".into(),
            if self.centred.get() { "centred" } else { "raw" }.into(),
        ));
        let all = self
            .meta
            .with(|m| m.as_ref().map(|m| m.personas.len()).unwrap_or(0));
        let sel = self.personas.get();
        if !sel.is_empty() && sel.len() != all {
            q.push(("personas".into(), sel.join(",")));
        }
        q.push((
            "threshold".into(),
            self.threshold
                .get()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "p".into()),
        ));
        q.push(("alpha".into(), self.alpha.get().to_string()));
        q.push(("n".into(), self.permutations.get().to_string()));
        q.push(("seed".into(), self.seed.get().to_string()));
        q.push(("metric".into(), self.metric.get()));
        q
    }

    /// What identifies an analysis: a change of these restarts the workers.
    pub fn key(&self) -> Key {
        Key {
            personas: self.personas.get_untracked(),
            permutations: self.permutations.get_untracked(),
            seed: self.seed.get_untracked(),
        }
    }

    /// Tells the views that results changed.
    pub fn bump(&self) {
        self.version.update(|v| *v += 1);
    }
}

impl Default for Ctl {
    fn default() -> Self {
        Ctl::new()
    }
}

impl Ctl {
    /// After a bundle is loaded: keeps the URL-given controls that fit it (method, layer,
    /// treated checkpoint, persona subset of at least two), else the defaults (first method,
    /// middle layer, the first EM checkpoint or else the first non-base one, every persona).
    pub fn fit_to(&self, meta: &Meta) {
        if !meta.methods.contains(&self.method.get_untracked()) {
            self.method.set(meta.methods[0]);
        }
        if !meta.layers.contains(&self.layer.get_untracked()) {
            self.layer.set(meta.layers[meta.layers.len() / 2]);
        }
        let treated = self.treated.get_untracked();
        let treated_ok = meta
            .checkpoints
            .iter()
            .any(|c| c.0 == treated && c.1 != "base");
        if !treated_ok {
            let first = meta
                .checkpoints
                .iter()
                .position(|c| c.1 == "em")
                .or_else(|| meta.checkpoints.iter().position(|c| c.1 != "base"))
                .unwrap_or(0);
            self.treated.set(meta.checkpoints[first].0.clone());
        }
        let names: Vec<String> = meta.personas.iter().map(|p| p.0.clone()).collect();
        let sel: Vec<String> = self
            .personas
            .get_untracked()
            .into_iter()
            .filter(|p| names.contains(p))
            .collect();
        self.personas.set(if sel.len() >= 2 {
            names.iter().filter(|n| sel.contains(n)).cloned().collect()
        } else {
            names
        });
    }
}

/// A threshold from the URL: a ratio ("2", "1.5", "3x") or p-only ("p", "p-only"); Some(None)
/// is p-only, None is unusable.
pub fn parse_threshold(v: &str) -> Option<Option<f64>> {
    let v = v.trim();
    if v == "p" || v == "p-only" {
        return Some(None);
    }
    let t: f64 = v.strip_suffix('x').unwrap_or(v).parse().ok()?;
    (t.is_finite() && t > 0.0).then_some(Some(t))
}
