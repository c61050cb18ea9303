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
        }
    }

    /// Controls from the query string (the permalink).
    fn read_query(&self) {
        for (k, v) in web::query_pairs() {
            match k.as_str() {
                "bundle" => self.source.set(Some(v)),
                "method" => {
                    if let Some(m) = Method::parse(&v) {
                        self.method.set(m)
                    }
                }
                "layer" => {
                    if let Ok(l) = v.parse() {
                        self.layer.set(l)
                    }
                }
                "treated" => self.treated.set(v),
                "centre" => self.centred.set(v == "centred"),
                "personas" => self.personas.set(
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                ),
                "threshold" => self.threshold.set(v.parse().ok()),
                "alpha" => {
                    if let Ok(a) = v.parse::<f64>() {
                        if a > 0.0 && a < 1.0 {
                            self.alpha.set(a)
                        }
                    }
                }
                "n" => {
                    if let Ok(n) = v.parse::<usize>() {
                        self.permutations.set(n.clamp(1, 100_000))
                    }
                }
                "seed" => {
                    if let Ok(s) = v.parse() {
                        self.seed.set(s)
                    }
                }
                "metric" if ALL_METRICS.contains(&v.as_str()) => self.metric.set(v),
                _ => {}
            }
        }
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

// ---------------------------------------------------------------------------------------------
// Analysis

fn ml_of(plan: &Plan, method: Method, layer: u32) -> Option<usize> {
    plan.coords
        .iter()
        .position(|c| c.method == method && c.layer == layer)
}

/// (Re)starts the analysis for the current persona subset, N and seed. Finished cells are
/// reused from the cache; the view on screen is computed first.
fn start_analysis(ctl: Ctl) {
    let key = ctl.key();
    let same = STATE.with(|s| {
        s.borrow()
            .analysis
            .as_ref()
            .map(|a| a.key == key)
            .unwrap_or(false)
    });
    if same {
        return;
    }
    let prepared = STATE.with(|s| -> Result<(Bundle, Rc<Vec<u8>>), String> {
        let s = s.borrow();
        let loaded = s.loaded.as_ref().ok_or("no bundle loaded")?;
        let sub = subset(&loaded.bundle, Some(&key.personas))?;
        Ok((sub, loaded.bytes.clone()))
    });
    let (bundle, bytes) = match prepared {
        Ok(x) => x,
        Err(e) => {
            ctl.error.set(Some(e));
            return;
        }
    };
    let cfg = page_config(key.permutations, key.seed);
    let plan = match Plan::new(&bundle, &cfg) {
        Ok(p) => p,
        Err(e) => {
            ctl.error.set(Some(e.to_string()));
            return;
        }
    };
    ctl.error.set(None);
    let n_ml = plan.coords.len();
    let selected = ml_of(&plan, ctl.method.get_untracked(), ctl.layer.get_untracked()).unwrap_or(0);
    // Stop the old workers before anything else (cancel).
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(old) = s.analysis.take() {
            let cells = old.cells;
            s.cache.insert(old.key, cells);
        }
    });
    let cells = STATE
        .with(|s| s.borrow().cache.get(&key).cloned())
        .unwrap_or_else(|| vec![None; n_ml]);
    // Chunks small enough for smooth progress and balance, large enough to amortise messages.
    let chunk = (key.permutations / 8).clamp(250, 2_500);
    let mut order: Vec<usize> = (0..n_ml).filter(|&ml| cells[ml].is_none()).collect();
    order.sort_by_key(|&ml| ml != selected);
    let mut tasks = Vec::new();
    let mut remaining = HashMap::new();
    for &ml in &order {
        let t = plan.tasks(ml, chunk);
        remaining.insert(ml, t.len());
        tasks.extend(t);
    }
    let total = tasks.len();
    let report = if cells.iter().any(|c| c.is_some()) {
        Some(Arc::new(plan.report(&bundle, &cells)))
    } else {
        None
    };
    let mut analysis = Analysis {
        key: key.clone(),
        bundle,
        plan,
        outputs: HashMap::new(),
        remaining,
        cells,
        previews: HashMap::new(),
        report,
        pool: None,
        started_ms: web::now_ms(),
        total,
        done: 0,
    };
    if analysis
        .cells
        .get(selected)
        .map(|c| c.is_none())
        .unwrap_or(false)
    {
        add_preview(&mut analysis, selected);
    }
    if total > 0 {
        let init = serde_json::to_string(&InitMessage {
            personas: Some(key.personas.clone()),
            config: cfg,
        })
        .expect("init message serialises");
        let workers = web::hardware_concurrency().min(total);
        match Pool::new(
            workers,
            bytes,
            init,
            move |t, o| on_result(ctl, t, o),
            move |e| {
                ctl.error.set(Some(e));
                ctl.computing.set(false);
            },
        ) {
            Ok(pool) => {
                pool.push(tasks);
                analysis.pool = Some(pool);
                ctl.computing.set(true);
            }
            Err(e) => ctl.error.set(Some(e)),
        }
    } else {
        ctl.computing.set(false);
    }
    web::mark(
        "workers",
        JsValue::from_f64(analysis.pool.as_ref().map(|p| p.workers()).unwrap_or(0) as f64),
    );
    ctl.progress.set((0, total));
    STATE.with(|s| s.borrow_mut().analysis = Some(analysis));
    ctl.bump();
}

/// Descriptive numbers (cosines, norms, projections, LDA accuracy) of one view before its
/// permutations finish, computed on the page's thread. Its p-values are not shown.
fn add_preview(a: &mut Analysis, ml: usize) {
    if a.previews.contains_key(&ml) {
        return;
    }
    let outs: Vec<(Task, TaskOutput)> = (0..a.plan.n_checkpoints)
        .map(|checkpoint| {
            let t = Task::LdaObserved { ml, checkpoint };
            let o = a.plan.run_task(&t);
            (t, o)
        })
        .collect();
    let mut cells = vec![None; a.plan.coords.len()];
    cells[ml] = Some(a.plan.cell_result(ml, &outs));
    a.previews
        .insert(ml, Arc::new(a.plan.report(&a.bundle, &cells)));
}

fn on_result(ctl: Ctl, task: Task, out: TaskOutput) {
    let ml = task.method_layer();
    let selected = (ctl.method.get_untracked(), ctl.layer.get_untracked());
    let finished = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(a) = s.analysis.as_mut() else {
            return None;
        };
        a.done += 1;
        a.outputs.entry(ml).or_default().push((task, out));
        let left = a.remaining.entry(ml).or_insert(1);
        *left -= 1;
        let mut cell_done = false;
        if *left == 0 {
            let outs = a.outputs.remove(&ml).unwrap_or_default();
            a.cells[ml] = Some(a.plan.cell_result(ml, &outs));
            a.report = Some(Arc::new(a.plan.report(&a.bundle, &a.cells)));
            cell_done = true;
            let c = &a.plan.coords[ml];
            if (c.method, c.layer) == selected {
                web::mark("view_ms", JsValue::from_f64(web::now_ms() - a.started_ms));
            }
        }
        let all = a.done == a.total;
        if all {
            a.pool = None;
            web::mark("all_ms", JsValue::from_f64(web::now_ms() - a.started_ms));
        }
        Some((a.done, a.total, cell_done, all))
    });
    if let Some((done, total, cell_done, all)) = finished {
        ctl.progress.set((done, total));
        if all {
            ctl.computing.set(false);
        }
        if cell_done {
            ctl.bump();
        }
    }
}

fn cancel(ctl: Ctl) {
    STATE.with(|s| {
        if let Some(a) = s.borrow_mut().analysis.as_mut() {
            a.pool = None;
        }
    });
    ctl.computing.set(false);
    ctl.status
        .set("cancelled: finished views are kept; press \"compute\" to continue".into());
}

fn resume(ctl: Ctl) {
    // Forget the in-progress analysis (its finished cells go to the cache) and start again.
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(old) = s.analysis.take() {
            s.cache.insert(old.key, old.cells);
        }
    });
    ctl.status.set(String::new());
    start_analysis(ctl);
}

/// The report for the (method, layer) on screen: the finished one, else the preview.
fn view_report(ctl: Ctl) -> Option<(Arc<Report>, bool)> {
    let (m, l) = (ctl.method.get(), ctl.layer.get());
    ctl.version.get();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let a = s.analysis.as_mut()?;
        let ml = ml_of(&a.plan, m, l)?;
        if a.cells[ml].is_some() {
            return a.report.clone().map(|r| (r, true));
        }
        add_preview(a, ml);
        a.previews.get(&ml).cloned().map(|r| (r, false))
    })
}

fn full_report(ctl: Ctl) -> Option<Arc<Report>> {
    ctl.version.get();
    STATE.with(|s| s.borrow().analysis.as_ref().and_then(|a| a.report.clone()))
}

/// Sensitivity rows and verdicts under the chosen α and threshold (plus the presets).
fn verdicts(ctl: Ctl) -> Option<(Vec<SensitivityRow>, Vec<Verdict>, String, bool)> {
    let alpha = ctl.alpha.get();
    let thr = ctl.threshold.get();
    let report = full_report(ctl)?;
    STATE.with(|s| {
        let s = s.borrow();
        let a = s.analysis.as_ref()?;
        let mut thresholds: Vec<f64> = PRESET_THRESHOLDS.to_vec();
        if let Some(t) = thr {
            if !thresholds.iter().any(|x| (x - t).abs() < 1e-12) {
                thresholds.push(t);
            }
        }
        let cfg = shared::analysis::AnalysisConfig {
            alpha,
            thresholds,
            ..a.plan.cfg.clone()
        };
        let (sens, v) =
            sensitivity_and_verdicts(&a.bundle, &report.rows, &report.ratio_draws, &cfg);
        let chosen = thr
            .map(shared::analysis::criterion_name)
            .unwrap_or_else(|| "p-only".into());
        let complete = a.cells.iter().all(|c| c.is_some());
        Some((sens, v, chosen, complete))
    })
}

/// Permutation nulls of the view on screen (treated vs base).
fn null_figures(ctl: Ctl) -> Vec<Figure> {
    let (m, l, treated, centred) = (
        ctl.method.get(),
        ctl.layer.get(),
        ctl.treated.get(),
        ctl.centred.get(),
    );
    ctl.version.get();
    STATE.with(|s| {
        let s = s.borrow();
        let Some(a) = s.analysis.as_ref() else {
            return vec![];
        };
        let Some(ml) = ml_of(&a.plan, m, l) else {
            return vec![];
        };
        let Some(cell) = a.cells[ml].as_ref() else {
            return vec![];
        };
        let Some(tck) = a.bundle.checkpoints.iter().position(|c| c.name == treated) else {
            return vec![];
        };
        let Some(ci) = a
            .plan
            .comparisons
            .iter()
            .position(|c| c.pre == a.plan.base && c.post == tck)
        else {
            return vec![];
        };
        let cfg = &a.plan.cfg;
        let base = &a.bundle.checkpoints[a.plan.base].name;
        let floor = shared::stats::p_floor(cfg.permutations);
        let g = &cell.geometry[ci];
        let caption = |what: &str, n: usize, nq: usize| {
            format!(
                "{what}. Method {}, layer {l} (output of block {l}, 0-based; last block before the final norm). n = {nq} paired questions, N = {n} permutations, seed {}, p floor {floor:.2e}.",
                m.name(),
                cfg.seed
            )
        };
        let mut out = Vec::new();
        let m1 = if centred { 1 } else { 0 };
        // M1 (raw or centred) and M2 (EM axis): indices into GEOMETRY_METRICS.
        for s in [m1, 3] {
            let name = shared::geometry::GEOMETRY_METRICS[s];
            out.push(Figure {
                title: format!("null of Δ {name} ({treated} − {base}), p = {:.4}", g.p[s]),
                caption: caption("Paired question-level swap permutations", g.n_permutations, g.n_questions_paired_min),
                kind: FigureKind::NullHistogram {
                    null: cell.geometry_null[ci].iter().map(|x| x[s]).collect(),
                    observed: g.delta[s],
                    x_label: format!("Δ {name}"),
                },
            });
        }
        let m3 = &cell.m3[ci];
        for (s, name) in shared::analysis::M3_METRICS.iter().enumerate() {
            out.push(Figure {
                title: format!("null of Δ {name} ({treated} − {base}), p = {:.4}", m3.p[s]),
                caption: caption("Paired sign-flip permutations of per-question held-out scores", m3.n_permutations, m3.n_questions),
                kind: FigureKind::NullHistogram {
                    null: m3.null.iter().map(|x| x[s]).collect(),
                    observed: m3.delta[s],
                    x_label: format!("Δ {name}"),
                },
            });
        }
        let ln = &cell.lda_null[tck];
        let acc = cell.lda[tck].accuracy;
        let p = shared::stats::permutation_p_greater(acc, &ln.iter().map(|x| x[0]).collect::<Vec<_>>(), shared::geometry::tie_tolerance(false, acc));
        out.push(Figure {
            title: format!("held-out LDA accuracy of {treated} vs label-permutation null, p = {p:.4}"),
            caption: format!(
                "Within-question persona-label permutations (M3 above chance), one-sided. Method {}, layer {l}. N = {} permutations, seed {}, p floor {:.2e}; chance = 1/{} personas.",
                m.name(),
                ln.len(),
                cfg.seed,
                shared::stats::p_floor(ln.len()),
                a.bundle.n_personas()
            ),
            kind: FigureKind::NullHistogram {
                null: ln.iter().map(|x| x[0]).collect(),
                observed: acc,
                x_label: "held-out accuracy".into(),
            },
        });
        out
    })
}

// ---------------------------------------------------------------------------------------------
// Components

#[component]
fn FigureView(#[prop(into)] figure: Signal<Option<Figure>>) -> impl IntoView {
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let hits = StoredValue::new(Vec::<HitBox>::new());
    let tip = RwSignal::new(String::new());
    Effect::new(move |_| {
        let fig = figure.get();
        let Some(canvas) = canvas_ref.get() else {
            return;
        };
        let Some(fig) = fig else {
            return;
        };
        // The figure's own size (the same as `analyze --figures`), set before drawing because
        // resizing a canvas clears it.
        let (w, h) = fig.size();
        canvas.set_width(w);
        canvas.set_height(h);
        if let Some(backend) = CanvasBackend::with_canvas_object(canvas.clone()) {
            let root = backend.into_drawing_area();
            match fig.draw(&root) {
                Ok(h) => hits.set_value(h),
                Err(e) => tip.set(e),
            }
            web::mark("figures_drawn", JsValue::TRUE);
            first_figure_mark();
        }
    });
    let on_move = move |ev: web_sys::MouseEvent| {
        let Some(canvas) = canvas_ref.get_untracked() else {
            return;
        };
        let sx = canvas.width() as f64 / canvas.client_width().max(1) as f64;
        let sy = canvas.height() as f64 / canvas.client_height().max(1) as f64;
        let (x, y) = (
            (ev.offset_x() as f64 * sx) as i32,
            (ev.offset_y() as f64 * sy) as i32,
        );
        let text = hits.with_value(|h| {
            h.iter()
                .find(|b| b.contains(x, y))
                .map(|b| b.text.clone())
                .unwrap_or_default()
        });
        tip.set(text);
    };
    let name = move || figure.with(|f| f.as_ref().map(|f| f.file_stem()).unwrap_or_default());
    let export_svg = move |_| {
        if let Some(f) = figure.get_untracked() {
            let (width, height) = f.size();
            match f.to_svg(width, height) {
                Ok(svg) => web::download_text(&format!("{}.svg", name()), "image/svg+xml", &svg),
                Err(e) => tip.set(e),
            }
        }
    };
    let export_png = move |_| {
        if let Some(c) = canvas_ref.get_untracked() {
            if let Ok(url) = c.to_data_url() {
                web::download_url(&format!("{}.png", name()), &url);
            }
        }
    };
    let export_csv = move |_| {
        if let Some(f) = figure.get_untracked() {
            web::download_text(&format!("{}.csv", name()), "text/csv", &f.to_csv());
        }
    };
    let export_json = move |_| {
        if let Some(f) = figure.get_untracked() {
            let j = serde_json::to_string_pretty(&f).unwrap_or_default();
            web::download_text(&format!("{}.json", name()), "application/json", &j);
        }
    };
    view! {
        <figure class="fig" data-figure=name>
            <canvas node_ref=canvas_ref width="300" height="150"
                on:mousemove=on_move on:mouseleave=move |_| tip.set(String::new())></canvas>
            <div class="tip" data-role="tip">{move || tip.get()}</div>
            <figcaption>{move || figure.with(|f| f.as_ref().map(|f| f.caption.clone()))}</figcaption>
            <div class="export">
                <button data-export="svg" on:click=export_svg>"SVG"</button>
                <button data-export="png" on:click=export_png>"PNG"</button>
                <button data-export="csv" on:click=export_csv>"CSV"</button>
                <button data-export="json" on:click=export_json>"JSON"</button>
            </div>
        </figure>
    }
}

fn first_figure_mark() {
    thread_local!(static DONE: RefCell<bool> = const { RefCell::new(false) });
    DONE.with(|d| {
        if !*d.borrow() {
            *d.borrow_mut() = true;
            web::mark("first_figure_ms", JsValue::from_f64(web::now_ms()));
        }
    });
}

#[component]
fn Loader(ctl: Ctl) -> impl IntoView {
    let on_file = move |ev: web_sys::Event| {
        let input: web_sys::HtmlInputElement = ev.target().expect("target").unchecked_into();
        if let Some(f) = input.files().and_then(|l| l.get(0)) {
            leptos::task::spawn_local(load_file(ctl, f));
        }
    };
    let url_input = RwSignal::new(String::new());
    view! {
        <div class="loader">
            <label>"Open a compact bundle: "
                <input type="file" id="file-input" accept=".pgb" on:change=on_file/>
            </label>
            <span class="or">" or drop a .pgb file anywhere, or load a URL: "</span>
            <input type="text" id="url-input" placeholder="https://.../study.compact.pgb"
                on:input=move |ev| url_input.set(event_target_value(&ev))/>
            <button on:click=move |_| {
                let u = url_input.get_untracked();
                if !u.is_empty() { leptos::task::spawn_local(load_url(ctl, u)); }
            }>"load"</button>
            <div class="status" id="status">{move || ctl.status.get()}</div>
            <Show when=move || ctl.error.with(|e| e.is_some())>
                <pre class="error" id="error" role="alert">{move || ctl.error.get().unwrap_or_default()}</pre>
            </Show>
        </div>
    }
}

#[component]
fn Controls(ctl: Ctl) -> impl IntoView {
    let meta = ctl.meta;
    let layers = move || meta.with(|m| m.as_ref().map(|m| m.layers.clone()).unwrap_or_default());
    let layer_idx = move || {
        let l = ctl.layer.get();
        layers().iter().position(|&x| x == l).unwrap_or(0)
    };
    let treated_options = move || {
        meta.with(|m| {
            m.as_ref()
                .map(|m| {
                    m.checkpoints
                        .iter()
                        .filter(|c| c.1 != "base")
                        .map(|c| (c.0.clone(), c.1.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    };
    let set_perms = move |ev| {
        if let Ok(n) = event_target_value(&ev).parse::<usize>() {
            if n >= 1 {
                ctl.permutations.set(n.min(100_000));
                start_analysis(ctl);
            }
        }
    };
    view! {
        <div class="controls">
            <label>"method "
                <select id="method" on:change=move |ev| {
                    if let Some(m) = Method::parse(&event_target_value(&ev)) { ctl.method.set(m) }
                }>
                    {move || meta.with(|m| m.as_ref().map(|m| m.methods.clone()).unwrap_or_default())
                        .into_iter()
                        .map(|m| view! {
                            <option value=m.name() selected=move || ctl.method.get() == m>
                                {format!("{} ({})", m.name(), if m == Method::A { "last prompt token" } else { "mean over response" })}
                            </option>
                        })
                        .collect_view()}
                </select>
            </label>
            <label>"layer "
                <input type="range" id="layer" min="0"
                    max=move || layers().len().saturating_sub(1).to_string()
                    step="1"
                    prop:value=move || layer_idx().to_string()
                    on:input=move |ev| {
                        if let Ok(i) = event_target_value(&ev).parse::<usize>() {
                            if let Some(&l) = layers().get(i) { ctl.layer.set(l) }
                        }
                    }/>
                <span id="layer-value">{move || format!("{} (output of block {}, 0-based)", ctl.layer.get(), ctl.layer.get())}</span>
            </label>
            <label>"treated "
                <select id="treated" on:change=move |ev| ctl.treated.set(event_target_value(&ev))>
                    {move || treated_options().into_iter().map(|(n, r)| {
                        let n2 = n.clone();
                        view! { <option value=n.clone() selected=move || ctl.treated.get() == n2>{format!("{n} ({r})")}</option> }
                    }).collect_view()}
                </select>
            </label>
            <label>"cosines "
                <select id="centre" on:change=move |ev| ctl.centred.set(event_target_value(&ev) == "centred")>
                    <option value="raw" selected=move || !ctl.centred.get()>"raw"</option>
                    <option value="centred" selected=move || ctl.centred.get()>"mean-centred"</option>
                </select>
            </label>
            <label>"hero metric "
                <select id="metric" on:change=move |ev| ctl.metric.set(event_target_value(&ev))>
                    {ALL_METRICS.iter().map(|&m| view! {
                        <option value=m selected=move || ctl.metric.get() == m>{m}</option>
                    }).collect_view()}
                </select>
            </label>
            <div class="threshold">
                "benign-vs-EM threshold: "
                <input type="range" id="threshold" min="1" max="5" step="0.1"
                    prop:value=move || ctl.threshold.get().unwrap_or(2.0).to_string()
                    on:input=move |ev| {
                        if let Ok(t) = event_target_value(&ev).parse::<f64>() { ctl.threshold.set(Some(t)) }
                    }/>
                <span id="threshold-value">{move || ctl.threshold.get().map(|t| format!("{t}x")).unwrap_or_else(|| "p-only".into())}</span>
                {PRESET_THRESHOLDS.iter().map(|&t| view! {
                    <button data-preset=t.to_string() on:click=move |_| ctl.threshold.set(Some(t))>{format!("{t}x")}</button>
                }).collect_view()}
                <button data-preset="p" on:click=move |_| ctl.threshold.set(None)>"p-only"</button>
            </div>
            <label>"α (BH) "
                <input type="number" id="alpha" min="0.0001" max="0.5" step="0.001"
                    prop:value=move || ctl.alpha.get().to_string()
                    on:change=move |ev| {
                        if let Ok(a) = event_target_value(&ev).parse::<f64>() {
                            if a > 0.0 && a < 1.0 { ctl.alpha.set(a) }
                        }
                    }/>
            </label>
            <label>"permutations N "
                <input type="number" id="permutations" min="1" max="100000" step="1"
                    prop:value=move || ctl.permutations.get().to_string()
                    on:change=set_perms/>
            </label>
            <div class="personas">
                "personas: "
                {move || meta.with(|m| m.as_ref().map(|m| m.personas.clone()).unwrap_or_default())
                    .into_iter()
                    .map(|(name, prompt)| {
                        let n1 = name.clone();
                        let n2 = name.clone();
                        let is_axis = name == "assistant";
                        view! {
                            <label class="persona" title=prompt>
                                <input type="checkbox" data-persona=name.clone()
                                    disabled=is_axis
                                    prop:checked=move || ctl.personas.with(|p| p.contains(&n1))
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        let all: Vec<String> = ctl.meta.with_untracked(|m| m.as_ref().map(|m| m.personas.iter().map(|p| p.0.clone()).collect()).unwrap_or_default());
                                        let mut sel = ctl.personas.get_untracked();
                                        if on { sel.push(n2.clone()) } else { sel.retain(|x| x != &n2) }
                                        let sel: Vec<String> = all.into_iter().filter(|x| sel.contains(x)).collect();
                                        if sel.len() >= 2 {
                                            ctl.personas.set(sel);
                                            start_analysis(ctl);
                                        }
                                    }/>
                                {name.clone()}
                            </label>
                        }
                    })
                    .collect_view()}
                <span class="note">" (the EM axis is the assistant's shift, so it stays selected)"</span>
            </div>
            <div class="progress" id="progress">
                {move || {
                    let (d, t) = ctl.progress.get();
                    if t == 0 { String::from("all views computed") }
                    else if ctl.computing.get() { format!("permutation tests in Web Workers: {d} / {t} tasks") }
                    else if d == t { format!("all views computed ({t} tasks)") }
                    else { format!("stopped at {d} / {t} tasks") }
                }}
                <progress max=move || ctl.progress.get().1.max(1).to_string() value=move || ctl.progress.get().0.to_string()></progress>
                <Show when=move || ctl.computing.get()
                    fallback=move || view! { <button id="resume" on:click=move |_| resume(ctl)>"compute"</button> }>
                    <button id="cancel" on:click=move |_| cancel(ctl)>"cancel"</button>
                </Show>
            </div>
        </div>
    }
}

#[component]
fn RowsTable(ctl: Ctl) -> impl IntoView {
    let rows = move || {
        let (m, l) = (ctl.method.get(), ctl.layer.get());
        view_report(ctl)
            .map(|(r, done)| {
                let rows: Vec<_> = r
                    .rows
                    .iter()
                    .filter(|x| x.method == m && x.layer == l)
                    .cloned()
                    .collect();
                (rows, done)
            })
            .unwrap_or_default()
    };
    view! {
        <table class="rows" id="rows">
            <thead><tr>
                <th>"family"</th><th>"pre → post"</th><th>"metric"</th><th>"pre"</th><th>"post"</th>
                <th>"Δ"</th><th>"95% CI (Δ)"</th><th>"p"</th><th>"p BH"</th><th>"p Holm"</th>
                <th>"n"</th><th>"N"</th><th>"draws"</th>
            </tr></thead>
            <tbody>
            {move || {
                let (rows, done) = rows();
                rows.into_iter().map(|r| {
                    let pend = !done;
                    let ci = r.ci95.map(|[a, b]| format!("[{}, {}]", fmt(a), fmt(b))).unwrap_or_else(|| "–".into());
                    let p = |x: Option<f64>| if pend { "computing…".to_string() } else { x.map(fmt).unwrap_or_else(|| "–".into()) };
                    view! {
                        <tr data-family=r.family.name() data-post=r.post.clone() data-metric=r.metric.clone()
                            data-delta=format!("{:e}", r.delta) data-pre-value=format!("{:e}", r.pre_value)
                            data-post-value=format!("{:e}", r.post_value)
                            data-p=if pend { String::new() } else { format!("{:e}", r.p) }
                            data-p-bh=if pend { String::new() } else { r.p_bh.map(|x| format!("{x:e}")).unwrap_or_default() }>
                            <td>{r.family.name()}</td><td>{format!("{} → {}", r.pre, r.post)}</td><td>{r.metric.clone()}</td>
                            <td>{fmt(r.pre_value)}</td><td>{fmt(r.post_value)}</td><td>{fmt(r.delta)}</td>
                            <td>{if pend { "computing…".to_string() } else { ci }}</td>
                            <td>{p(Some(r.p))}</td><td>{p(r.p_bh)}</td><td>{p(r.p_holm)}</td>
                            <td>{r.n_questions}</td><td>{if pend { 0 } else { r.n_permutations }}</td>
                            <td title="exact: full-dimensional draws (as analyze on the full bundle); approximate: the compact bundle's k residual components">{if r.exact { "exact" } else { "approximate" }}</td>
                        </tr>
                    }
                }).collect_view()
            }}
            </tbody>
        </table>
    }
}

#[component]
fn SensitivityView(ctl: Ctl) -> impl IntoView {
    view! {
        {move || match verdicts(ctl) {
            None => view! { <p class="pending">"The verdict needs every (method, layer) view; computing…"</p> }.into_any(),
            Some((sens, verdicts, chosen, complete)) => {
                let treated = ctl.treated.get();
                let em_names: Vec<String> = verdicts.iter().map(|v| v.em.clone()).collect::<Vec<_>>();
                let em = if em_names.contains(&treated) { treated } else { em_names.first().cloned().unwrap_or_default() };
                let ci = sens.iter().find(|s| s.em == em).map(|s| s.passes.iter().position(|p| p.0 == chosen).unwrap_or(0)).unwrap_or(0);
                let head = verdicts.iter().filter(|v| v.em == em && v.criterion == chosen).map(|v| {
                    let cls = format!("verdict verdict-{}", v.verdict);
                    let support = v.supporting.iter().map(|(m, ls)| format!("{m} at layers {ls:?}")).collect::<Vec<_>>().join("; ");
                    view! {
                        <div class=cls id="verdict" data-verdict=v.verdict.clone() data-criterion=v.criterion.clone()>
                            <strong>{format!("{}: {} under {}", v.em, v.verdict, v.criterion)}</strong>
                            {if complete { String::new() } else { " (provisional: not every view is computed yet)".to_string() }}
                            <div>{v.explanation.clone()}</div>
                            <div>{support}</div>
                        </div>
                    }
                }).collect_view();
                let others = verdicts.iter().filter(|v| v.em == em).map(|v| view! {
                    <span class="crit" data-criterion=v.criterion.clone() data-verdict=v.verdict.clone()>{format!("{}: {}  ", v.criterion, v.verdict)}</span>
                }).collect_view();
                let rows = sens.into_iter().filter(|s| s.em == em).map(|s| {
                    let pass = s.passes.get(ci).map(|p| p.1).unwrap_or(false);
                    view! {
                        <tr class=if pass { "pass" } else { "" } data-metric=s.metric.clone() data-method=s.method.name() data-layer=s.layer.to_string() data-pass=pass.to_string()>
                            <td>{s.metric.clone()}</td><td>{s.method.name()}</td><td>{s.layer}</td>
                            <td>{fmt(s.delta_em)}</td><td>{fmt(s.delta_benign)}</td><td>{fmt(s.ratio)}</td>
                            <td>{fmt(s.p_bh_em)}</td><td>{if pass { "yes" } else { "no" }}</td>
                        </tr>
                    }
                }).collect_view();
                view! {
                    <div>
                        {head}
                        <div class="crits">"all criteria: " {others}</div>
                        <table class="sensitivity" id="sensitivity">
                            <thead><tr><th>"metric"</th><th>"method"</th><th>"layer"</th><th>"Δ EM"</th><th>"Δ benign"</th><th>"ratio"</th><th>"p BH (EM)"</th>
                                <th>{format!("passes {chosen}")}</th></tr></thead>
                            <tbody>{rows}</tbody>
                        </table>
                    </div>
                }.into_any()
            }
        }}
    }
}

#[component]
fn LdaTable(ctl: Ctl) -> impl IntoView {
    view! {
        <table class="lda" id="lda">
            <thead><tr><th>"checkpoint"</th><th>"held-out accuracy"</th><th>"mean log posterior"</th><th>"chance (null mean)"</th><th>"p above chance"</th><th>"N (labels)"</th><th>"Ledoit-Wolf shrinkage (mean over folds)"</th></tr></thead>
            <tbody>
            {move || {
                let (m, l) = (ctl.method.get(), ctl.layer.get());
                let treated = ctl.treated.get();
                let Some((r, done)) = view_report(ctl) else { return vec![] };
                let base = r.checkpoints.iter().find(|c| c.1 == "base").map(|c| c.0.clone()).unwrap_or_default();
                r.checkpoint_views.iter().filter(|v| v.method == m && v.layer == l && (v.checkpoint == base || v.checkpoint == treated)).map(|v| {
                    let sh = v.m3_shrinkage.iter().sum::<f64>() / v.m3_shrinkage.len().max(1) as f64;
                    view! {
                        <tr data-checkpoint=v.checkpoint.clone() data-accuracy=format!("{:e}", v.m3_accuracy)>
                            <td>{v.checkpoint.clone()}</td><td>{fmt(v.m3_accuracy)}</td><td>{fmt(v.m3_log_posterior)}</td>
                            <td>{if done { fmt(v.m3_null_mean_accuracy) } else { "computing…".into() }}</td>
                            <td>{if done { fmt(v.m3_p_above_chance_accuracy) } else { "computing…".into() }}</td>
                            <td>{if done { v.m3_n_label_permutations } else { 0 }}</td><td>{fmt(sh)}</td>
                        </tr>
                    }
                }).collect::<Vec<_>>()
            }}
            </tbody>
        </table>
    }
}

#[component]
fn Provenance(ctl: Ctl) -> impl IntoView {
    view! {
        <section id="provenance">
            <h2>"Provenance"</h2>
            {move || ctl.meta.get().map(|m| {
                let p = m.provenance.clone();
                view! {
                    <table class="prov">
                        <tr><th>"bundle"</th><td id="prov-source">{format!("{} ({:.1} MB, compact, {} residual components)", m.source, m.size_bytes as f64 / 1e6, m.components)}</td></tr>
                        <tr><th>"model"</th><td id="prov-model">{format!("{} (revision {})", p.model_id, p.model_revision)}</td></tr>
                        <tr><th>"tool"</th><td>{format!("{} {} (page: persona-geometry explorer {})", p.tool, p.tool_version, shared::TOOL_VERSION)}</td></tr>
                        <tr><th>"created"</th><td>{p.created.clone()}</td></tr>
                        <tr><th>"seed"</th><td>{p.seed}</td></tr>
                        <tr><th>"layer convention"</th><td>{p.layer_convention.clone()}</td></tr>
                        <tr><th>"methods"</th><td>"A = last token of the chat-templated prompt with the generation prompt; B = mean over the greedily generated response tokens"</td></tr>
                        {p.extra.iter().map(|(k, v)| view! { <tr><th>{k.clone()}</th><td class="mono">{v.clone()}</td></tr> }).collect_view()}
                    </table>
                    <h3>"Checkpoints"</h3>
                    {m.checkpoints.iter().map(|(n, r, l, prov)| view! {
                        <details class="ck"><summary>{format!("{n} — role {r} — {l}")}</summary>
                            <table class="prov">{prov.iter().map(|(k, v)| view! { <tr><th>{k.clone()}</th><td class="mono">{v.clone()}</td></tr> }).collect_view()}</table>
                        </details>
                    }).collect_view()}
                    <details><summary>{format!("{} persona system prompts", m.personas.len())}</summary>
                        <table class="prov">{m.personas.iter().map(|(n, s)| view! { <tr><th>{n.clone()}</th><td>{s.clone()}</td></tr> }).collect_view()}</table>
                    </details>
                    <details><summary>{format!("{} questions", m.questions.len())}</summary>
                        <ol start="0">{m.questions.iter().map(|(i, q)| view! { <li value=i.to_string()>{q.clone()}</li> }).collect_view()}</ol>
                    </details>
                }
            })}
        </section>
    }
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
            <Loader ctl=ctl/>
            <Show when=move || ctl.meta.with(|m| m.is_some())>
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
                    <p class="note" id="approx-note">"M1/M2 p-values and intervals computed from a compact bundle are approximate (\"draws\" column): its k stored residual components miss the within-persona variation outside them. Run persona-geometry analyze on the full bundle for the exact values; M3 and every point estimate are the same."</p>
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
