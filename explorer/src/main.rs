//! The explorer page (Leptos, client-side rendered). Loads a compact bundle, recomputes every
//! figure and test with `shared` (permutations in Web Workers), and keeps the whole view state
//! in the URL.

use explorer::controls::{Ctl, Key, Meta};
use explorer::pool::Pool;
use explorer::{decode_for_page, page_config, subset, web, InitMessage};
use leptos::prelude::*;
use plotters::prelude::IntoDrawingArea;
use plotters_canvas::CanvasBackend;
use shared::analysis::{
    sensitivity_and_verdicts, CellResult, Plan, Report, SensitivityRow, Task, TaskOutput, Verdict,
    ALL_METRICS,
};
use shared::bundle::Method;
use shared::figures::{cosine_heatmaps, fmt, hero_figure, persona_figures, Figure, HitBox};
use shared::Bundle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;

mod components;
mod loading;
mod run;
mod summary;
use components::*;
use loading::*;
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

#[component]
fn App() -> impl IntoView {
    let ctl = Ctl::new();
    ctl.apply_query(web::query_pairs());
    // Every view reads the controls from context.
    provide_context(ctl);
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
            <Loader/>
            <Show when=move || ctl.meta.with(|m| m.is_some())>
                <StudySummary/>
            </Show>
            // From the study head alone only the summary shows; figures wait for the bundle.
            <Show when=move || ctl.bundle_ready.get()>
                <Controls/>
                <section id="hero">
                    <h2>"Hero figure"</h2>
                    <FigureView figure=hero/>
                </section>
                <section id="verdict-section">
                    <h2>"Benign-vs-EM sensitivity and verdict"</h2>
                    <SensitivityView/>
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
                    <RowsTable/>
                </section>
                <section id="lda-section">
                    <h2>"Separability (M3): held-out shrinkage LDA"</h2>
                    <LdaTable/>
                </section>
                <section id="nulls">
                    <h2>"Permutation nulls (treated vs base)"</h2>
                    <div class="row">
                        {(0..5).map(|i| view! { <FigureView figure=null_fig(i)/> }).collect_view()}
                    </div>
                </section>
                <Provenance/>
            </Show>
        </main>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
