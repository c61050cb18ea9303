//! The explorer page (Leptos, client-side rendered). Loads a compact bundle, recomputes every
//! figure and test with `shared` (permutations in Web Workers), and keeps the whole view state
//! in the URL.

use explorer::pool::Pool;
use explorer::{decode_for_page, page_config, subset, web, InitMessage};
use leptos::prelude::*;
use plotters::prelude::IntoDrawingArea;
use plotters_canvas::CanvasBackend;
use shared::analysis::{
    sensitivity_and_verdicts, CellResult, Plan, Report, SensitivityRow, Task, TaskOutput, Verdict,
    ALL_METRICS,
};
use shared::bundle::{Method, Role};
use shared::figures::{
    cosine_heatmaps, fmt, hero_figure, persona_figures, Figure, FigureKind, HitBox,
};
use shared::Bundle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;

mod components;
mod run;
mod summary;
use components::*;
use run::*;
use summary::*;

const DEFAULT_BUNDLE: &str = "default.compact.pgb";
/// The analysis defaults live in `shared::analysis::defaults` (the CLI reads the same).
const PRESET_THRESHOLDS: [f64; 3] = shared::analysis::defaults::THRESHOLDS;

// ---------------------------------------------------------------------------------------------
// Non-reactive state: the bundle, the analysis in progress and finished cells. Signals below
// only carry versions and control values.

struct Loaded {
    bytes: Rc<Vec<u8>>,
    bundle: Bundle,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    personas: Vec<String>,
    permutations: usize,
    seed: u64,
}

struct Analysis {
    key: Key,
    bundle: Bundle,
    plan: Plan,
    outputs: HashMap<usize, Vec<(Task, TaskOutput)>>,
    remaining: HashMap<usize, usize>,
    cells: Vec<Option<CellResult>>,
    previews: HashMap<usize, Arc<Report>>,
    report: Option<Arc<Report>>,
    pool: Option<Pool>,
    started_ms: f64,
    total: usize,
    done: usize,
}

impl Analysis {
    /// Every (method, layer) cell is computed: the report and its verdicts are final.
    fn every_cell_computed(&self) -> bool {
        self.cells.iter().all(|c| c.is_some())
    }
}

#[derive(Default)]
struct State {
    loaded: Option<Loaded>,
    analysis: Option<Analysis>,
    cache: HashMap<Key, Vec<Option<CellResult>>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// What the page shows about the loaded bundle (cheap to clone, Send).
#[derive(Clone, Debug, PartialEq)]
struct Meta {
    source: String,
    size_bytes: usize,
    personas: Vec<(String, String)>,
    checkpoints: Vec<(String, String, String, Vec<(String, String)>)>,
    methods: Vec<Method>,
    layers: Vec<u32>,
    questions: Vec<(u32, String)>,
    provenance: shared::bundle::Provenance,
    components: u32,
    /// The verdict and rows the bundle was published with (`compact --reference`), if any.
    published: Option<shared::analysis::Published>,
}

#[derive(Clone, Copy)]
struct Ctl {
    method: RwSignal<Method>,
    layer: RwSignal<u32>,
    treated: RwSignal<String>,
    centred: RwSignal<bool>,
    personas: RwSignal<Vec<String>>,
    /// None = p-only.
    threshold: RwSignal<Option<f64>>,
    alpha: RwSignal<f64>,
    permutations: RwSignal<usize>,
    seed: RwSignal<u64>,
    metric: RwSignal<String>,
    source: RwSignal<Option<String>>,
    meta: RwSignal<Option<Meta>>,
    status: RwSignal<String>,
    error: RwSignal<Option<String>>,
    progress: RwSignal<(usize, usize)>,
    computing: RwSignal<bool>,
    version: RwSignal<u64>,
    /// Query parameters that were ignored or corrected, in words (shown at the top).
    url_notices: RwSignal<Vec<String>>,
}

impl Ctl {
    fn new() -> Ctl {
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
            status: RwSignal::new(String::new()),
            error: RwSignal::new(None),
            progress: RwSignal::new((0, 0)),
            computing: RwSignal::new(false),
            version: RwSignal::new(0),
            url_notices: RwSignal::new(vec![]),
        }
    }

    /// Controls from the query string (the permalink). Every parameter that cannot be used as
    /// given is named in `url_notices` with what was done instead: never a silent rewrite.
    fn read_query(&self) {
        let mut notes = Vec::new();
        let mut ignored = |k: &str, v: &str, why: &str| {
            notes.push(format!("URL parameter {k}={v} ignored: {why}"));
        };
        for (k, v) in web::query_pairs() {
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

    fn query(&self) -> Vec<(String, String)> {
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

    fn key(&self) -> Key {
        Key {
            personas: self.personas.get_untracked(),
            permutations: self.permutations.get_untracked(),
            seed: self.seed.get_untracked(),
        }
    }

    fn bump(&self) {
        self.version.update(|v| *v += 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

async fn load_url(ctl: Ctl, url: String) {
    ctl.error.set(None);
    ctl.status.set(format!("downloading {url} ..."));
    let status = ctl.status;
    let u = url.clone();
    let bytes = web::fetch_bytes(&url, move |n, total| {
        status.set(match total {
            Some(t) => format!(
                "downloading {u}: {:.1} of {:.1} MB ({:.0}%)",
                n as f64 / 1e6,
                t as f64 / 1e6,
                100.0 * n as f64 / t.max(1) as f64
            ),
            None => format!("downloading {u}: {:.1} MB", n as f64 / 1e6),
        })
    })
    .await;
    match bytes {
        Ok(b) => load_bytes(ctl, url, b).await,
        Err(e) => {
            ctl.status.set(String::new());
            ctl.error.set(Some(e));
        }
    }
}

async fn load_file(ctl: Ctl, file: web_sys::File) {
    ctl.error.set(None);
    ctl.status.set(format!("reading {} ...", file.name()));
    match web::file_bytes(&file).await {
        Ok(b) => load_bytes(ctl, format!("file:{}", file.name()), b).await,
        Err(e) => ctl.error.set(Some(e)),
    }
}

async fn load_bytes(ctl: Ctl, source: String, bytes: Vec<u8>) {
    let name = source.trim_start_matches("file:").to_string();
    ctl.status.set(format!(
        "decoding {name} ({:.1} MB) ...",
        bytes.len() as f64 / 1e6
    ));
    web::yield_now().await;
    let bundle = match decode_for_page(&name, &bytes) {
        Ok(b) => b,
        Err(e) => {
            // A bad file never replaces what is on screen.
            ctl.status.set(String::new());
            ctl.error.set(Some(e));
            return;
        }
    };
    let meta = Meta {
        source: name.clone(),
        size_bytes: bytes.len(),
        personas: bundle
            .personas
            .iter()
            .map(|p| (p.name.clone(), p.system_prompt.clone()))
            .collect(),
        checkpoints: bundle
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
        methods: bundle.methods.clone(),
        layers: bundle.layers.clone(),
        questions: bundle
            .questions
            .iter()
            .map(|q| (q.id, q.text.clone()))
            .collect(),
        provenance: bundle.provenance.clone(),
        components: bundle.compact.as_ref().map(|c| c.components).unwrap_or(0),
        published: shared::analysis::bundle_published(&bundle),
    };
    // Keep URL-given controls that fit this bundle; otherwise defaults.
    if !meta.methods.contains(&ctl.method.get_untracked()) {
        ctl.method.set(meta.methods[0]);
    }
    if !meta.layers.contains(&ctl.layer.get_untracked()) {
        ctl.layer.set(meta.layers[meta.layers.len() / 2]);
    }
    let treated_ok = bundle
        .checkpoints
        .iter()
        .any(|c| c.name == ctl.treated.get_untracked() && c.role != Role::Base);
    if !treated_ok {
        let first = bundle
            .checkpoint_by_role(&Role::Em)
            .first()
            .copied()
            .or_else(|| bundle.checkpoints.iter().position(|c| c.role != Role::Base))
            .unwrap_or(0);
        ctl.treated.set(bundle.checkpoints[first].name.clone());
    }
    let names: Vec<String> = bundle.personas.iter().map(|p| p.name.clone()).collect();
    let sel: Vec<String> = ctl
        .personas
        .get_untracked()
        .into_iter()
        .filter(|p| names.contains(p))
        .collect();
    ctl.personas.set(if sel.len() >= 2 {
        names.iter().filter(|n| sel.contains(n)).cloned().collect()
    } else {
        names
    });
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.analysis = None;
        s.cache.clear();
        s.loaded = Some(Loaded {
            bytes: Rc::new(bytes),
            bundle,
        });
    });
    ctl.source.set(Some(source));
    ctl.meta.set(Some(meta));
    ctl.status.set(String::new());
    start_analysis(ctl);
}

/// A threshold from the URL: a ratio ("2", "1.5", "3x") or p-only ("p", "p-only"); Some(None)
/// is p-only, None is unusable.
fn parse_threshold(v: &str) -> Option<Option<f64>> {
    let v = v.trim();
    if v == "p" || v == "p-only" {
        return Some(None);
    }
    let t: f64 = v.strip_suffix('x').unwrap_or(v).parse().ok()?;
    (t.is_finite() && t > 0.0).then_some(Some(t))
}

#[component]
fn App() -> impl IntoView {
    let ctl = Ctl::new();
    ctl.read_query();
    // Permalink: every control change rewrites the address bar.
    Effect::new(move |_| {
        if ctl.meta.with(|m| m.is_some()) {
            web::set_query(&ctl.query());
        }
    });
    // The view on screen goes first in the workers' queue.
    Effect::new(move |_| {
        let (m, l) = (ctl.method.get(), ctl.layer.get());
        STATE.with(|s| {
            let s = s.borrow();
            if let Some(a) = s.analysis.as_ref() {
                if let (Some(ml), Some(pool)) = (ml_of(&a.plan, m, l), a.pool.as_ref()) {
                    pool.prioritize(ml);
                }
            }
        });
    });
    let source = ctl
        .source
        .get_untracked()
        .unwrap_or_else(|| DEFAULT_BUNDLE.to_string());
    leptos::task::spawn_local(load_url(ctl, source));

    let hero = Signal::derive(move || {
        let metric = ctl.metric.get();
        full_report(ctl).map(|r| hero_figure(&r, &metric))
    });
    let heat = move |i: usize| {
        Signal::derive(move || {
            let (m, l, t, c) = (
                ctl.method.get(),
                ctl.layer.get(),
                ctl.treated.get(),
                ctl.centred.get(),
            );
            view_report(ctl)
                .and_then(|(r, _)| cosine_heatmaps(&r, m, l, &t, c))
                .map(|f| f[i].clone())
        })
    };
    let persona = move |i: usize| {
        Signal::derive(move || {
            let (m, l, t) = (ctl.method.get(), ctl.layer.get(), ctl.treated.get());
            view_report(ctl)
                .and_then(|(r, _)| persona_figures(&r, m, l, &t))
                .map(|f| f[i].clone())
        })
    };
    let nulls = Memo::new(move |_| null_figures(ctl));
    let null_fig = move |i: usize| Signal::derive(move || nulls.with(|n| n.get(i).cloned()));
    let on_drop = move |ev: web_sys::DragEvent| {
        ev.prevent_default();
        if let Some(f) = ev
            .data_transfer()
            .and_then(|d| d.files())
            .and_then(|l| l.get(0))
        {
            leptos::task::spawn_local(load_file(ctl, f));
        }
    };
    view! {
        <main on:dragover=move |ev: web_sys::DragEvent| ev.prevent_default() on:drop=on_drop>
            <header>
                <h1>"persona-geometry explorer"</h1>
                <p class="sub">"What does EM finetuning do to the geometry of persona vectors? Every number below is recomputed in this browser from the bundle with the same code as "<code>"persona-geometry analyze"</code>". Layer l = output of decoder block l (0-based, a forward hook on model.layers[l]); the last block is taken before the final norm."</p>
            </header>
            <Show when=move || ctl.url_notices.with(|n| !n.is_empty())>
                <ul class="notices" id="url-notices" role="status">
                    {move || ctl.url_notices.get().into_iter().map(|n| view! { <li>{n}</li> }).collect_view()}
                </ul>
            </Show>
            <Show when=move || ctl.source.with(|s| s.as_deref().is_some_and(|s| s.starts_with("file:")))>
                <p class="notices" id="permalink-notice" role="status">{move || format!(
                    "This page's address cannot carry the local file {}: a link copied now keeps the view settings but opens the default study. To share this view, publish the bundle at a URL and open it with ?bundle=URL.",
                    ctl.source.get().unwrap_or_default().trim_start_matches("file:"))}</p>
            </Show>
            <Loader ctl=ctl/>
            <Show when=move || ctl.meta.with(|m| m.is_some())>
                <StudySummary ctl=ctl/>
                <Controls ctl=ctl/>
                <section id="hero">
                    <h2>"Hero figure"</h2>
                    <FigureView figure=hero/>
                </section>
                <section id="verdict-section">
                    <h2>"Benign-vs-EM sensitivity and verdict"</h2>
                    <SensitivityView ctl=ctl/>
                </section>
                <section id="heatmaps">
                    <h2>"Inter-persona cosines: pre, post, Δ"</h2>
                    <div class="row">
                        <FigureView figure=heat(0)/>
                        <FigureView figure=heat(1)/>
                        <FigureView figure=heat(2)/>
                    </div>
                </section>
                <section id="personas-section">
                    <h2>"Norms and EM-axis projections per persona"</h2>
                    <div class="row">
                        <FigureView figure=persona(0)/>
                        <FigureView figure=persona(1)/>
                    </div>
                </section>
                <section id="tests">
                    <h2>"Tests of this view (all comparisons)"</h2>
                    <p class="note" id="approx-note">"M1/M2 p-values and intervals computed from a compact bundle are approximate (\"draws\" column): its k stored residual components miss the within-persona variation outside them. Run persona-geometry analyze on the full bundle for the exact values. Point estimates of M1_raw, M1_centred and M2 are exact (functions of the stored centroids); M1_separation (its within-persona spread from the f16 residuals) and M3 (fitted on the stored components, on full activations in analyze) are approximate too."</p>
                    <RowsTable ctl=ctl/>
                </section>
                <section id="lda-section">
                    <h2>"Separability (M3): held-out shrinkage LDA"</h2>
                    <LdaTable ctl=ctl/>
                </section>
                <section id="nulls">
                    <h2>"Permutation nulls (treated vs base)"</h2>
                    <div class="row">
                        {(0..5).map(|i| view! { <FigureView figure=null_fig(i)/> }).collect_view()}
                    </div>
                </section>
                <Provenance ctl=ctl/>
            </Show>
        </main>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
