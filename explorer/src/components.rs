//! The page's components below the app shell: figures on canvas, the loader, the controls, the
//! tables (tests, sensitivity and verdict, M3) and the provenance.

use super::*;

#[component]
pub(crate) fn FigureView(#[prop(into)] figure: Signal<Option<Figure>>) -> impl IntoView {
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let hits = StoredValue::new(Vec::<HitBox>::new());
    let tip = RwSignal::new(String::new());
    Effect::new(move |_| {
        let fig = figure.get();
        let Some(canvas) = canvas_ref.get() else {
            return;
        };
        let Some(fig) = fig else {
            // A view that is not computed says so on the canvas (never an empty box that reads
            // as "no effect", never the previous view's picture).
            hits.set_value(vec![]);
            if let Some(backend) = CanvasBackend::with_canvas_object(canvas.clone()) {
                let root = backend.into_drawing_area();
                let _ = root.fill(&plotters::style::WHITE);
                let _ = root.draw(&plotters::element::Text::new(
                    "not computed yet (computing…)",
                    (12, 24),
                    plotters::style::IntoFont::into_font(("sans-serif", 16)),
                ));
                let _ = root.present();
            }
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
        if let Some(f) = figure.get_untracked() {
            let size = f.size();
            match f.to_svg(size.0, size.1) {
                Ok(svg) => web::download_svg_as_png(&format!("{}.png", name()), &svg, size, 2.0),
                Err(e) => tip.set(e),
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
    let title = move || {
        figure.with(|f| {
            f.as_ref()
                .map(|f| f.title.clone())
                .unwrap_or_else(|| "figure not computed yet".into())
        })
    };
    let pending = move || figure.with(|f| f.is_none());
    let label = move |what: &'static str| move || format!("Download {} as {what}", title());
    view! {
        <figure class="fig" data-figure=name data-state=move || if pending() { "pending" } else { "drawn" }>
            // Tap or hover for read-outs; the same numbers are in the data table below.
            <canvas node_ref=canvas_ref width="300" height="150" role="img" aria-label=title
                on:mousemove=on_move on:click=on_move on:mouseleave=move |_| tip.set(String::new())></canvas>
            <div class="tip" data-role="tip" aria-live="polite">{move || tip.get()}</div>
            <figcaption>{move || figure.with(|f| f.as_ref().map(|f| f.caption.clone()))}</figcaption>
            <div class="export">
                <button data-export="svg" on:click=export_svg disabled=pending aria-label=label("SVG")>"SVG"</button>
                <button data-export="png" on:click=export_png disabled=pending aria-label=label("PNG")>"PNG"</button>
                <button data-export="csv" on:click=export_csv disabled=pending aria-label=label("CSV")>"CSV"</button>
                <button data-export="json" on:click=export_json disabled=pending aria-label=label("JSON")>"JSON"</button>
            </div>
            <details class="data">
                <summary>"data table"</summary>
                <table class="data">
                    {move || figure.with(|f| f.as_ref().map(|f| {
                        let rows = csv_rows(&f.to_csv());
                        let mut it = rows.into_iter();
                        let head = it.next().unwrap_or_default();
                        view! {
                            <thead><tr>{head.into_iter().map(|h| view! { <th scope="col">{h}</th> }).collect_view()}</tr></thead>
                            <tbody>{it.map(|r| view! { <tr>{r.into_iter().map(|c| view! { <td>{c}</td> }).collect_view()}</tr> }).collect_view()}</tbody>
                        }
                    }))}
                </table>
            </details>
        </figure>
    }
}

/// The rows of a CSV text (fields may be double-quoted, with "" for a quote).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut cur)),
                    _ => cur.push(c),
                }
            }
            fields.push(cur);
            fields
        })
        .collect()
}

pub(crate) fn first_figure_mark() {
    mark_once("first_figure_ms");
}

/// Records `name` = now (ms since page start) in `window.__pg`, the first time only (the
/// benchmark's page timings).
pub(crate) fn mark_once(name: &'static str) {
    thread_local!(static DONE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) });
    DONE.with(|d| {
        if !d.borrow().contains(&name) {
            d.borrow_mut().push(name);
            web::mark(name, JsValue::from_f64(web::now_ms()));
        }
    });
}

#[component]
pub(crate) fn Loader() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
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
pub(crate) fn Controls() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
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
                    aria-label="benign-vs-EM ratio threshold"
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
            <label title="seed of every permutation and bootstrap draw (analyze --seed)">"seed "
                <input type="number" id="seed" min="0" step="1"
                    prop:value=move || ctl.seed.get().to_string()
                    on:change=move |ev| {
                        if let Ok(s) = event_target_value(&ev).parse::<u64>() {
                            ctl.seed.set(s);
                            start_analysis(ctl);
                        }
                    }/>
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
                <span role="status" aria-live="polite">{move || {
                    let (d, t) = ctl.progress.get();
                    if t == 0 { String::from("all views computed") }
                    else if ctl.computing.get() { format!("permutation tests in Web Workers: {d} / {t} tasks") }
                    else if d == t { format!("all views computed ({t} tasks)") }
                    else { format!("stopped at {d} / {t} tasks") }
                }}</span>
                <progress aria-label="permutation tests done" max=move || ctl.progress.get().1.max(1).to_string() value=move || ctl.progress.get().0.to_string()></progress>
                <Show when=move || ctl.computing.get()
                    fallback=move || view! { <button id="resume" on:click=move |_| resume(ctl)>"compute"</button> }>
                    <button id="cancel" on:click=move |_| cancel(ctl)>"cancel"</button>
                </Show>
            </div>
        </div>
    }
}

#[component]
pub(crate) fn RowsTable() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
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
                <th>"n"</th><th>"N"</th><th>"values"</th><th title="the same row from analyze on the full bundle (compact --reference)">"analyze, full bundle: Δ / p / p BH"</th>
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
                            <td title="exact: as analyze on the full bundle; approximate: M1/M2 draws and M3's fit see only the compact bundle's k residual components">{if r.exact { "exact" } else { "approximate" }}</td>
                            <td class="reference" data-reference-p=r.reference.as_ref().map(|e| format!("{:e}", e.p)).unwrap_or_default()>{match (&r.reference, r.exact) {
                                (_, true) => "same".to_string(),
                                (Some(e), false) => format!("{} / {} / {}", fmt(e.delta), fmt(e.p), e.p_bh.map(fmt).unwrap_or_else(|| "–".into())),
                                (None, false) => "not carried".to_string(),
                            }}</td>
                        </tr>
                    }
                }).collect_view()
            }}
            </tbody>
        </table>
    }
}

#[component]
pub(crate) fn SensitivityView() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
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
pub(crate) fn LdaTable() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
    view! {
        <table class="lda" id="lda">
            <caption>"M3 = scikit-learn's LinearDiscriminantAnalysis(solver=\"lsqr\", shrinkage=\"auto\") held out over question folds, on the features named. Above chance: label-permutation test of the pooled-covariance LDA (its own accuracy shown; cheap to refit)."</caption>
            <thead><tr><th>"checkpoint"</th><th>"M3 features"</th><th>"held-out accuracy"</th><th>"mean log posterior"</th><th>"pooled LDA accuracy"</th><th>"chance (null mean)"</th><th>"p above chance"</th><th>"N (labels)"</th><th>"Ledoit-Wolf shrinkage (mean over folds and classes)"</th></tr></thead>
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
                            <td>{v.checkpoint.clone()}</td><td>{v.m3_features.clone()}</td><td>{fmt(v.m3_accuracy)}</td><td>{fmt(v.m3_log_posterior)}</td><td>{fmt(v.m3_pooled_accuracy)}</td>
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
pub(crate) fn Provenance() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
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
                        {p.extra.iter().map(|(k, v)| {
                            // The published rows are a table above, not a JSON string here.
                            let shown = if k == shared::analysis::REFERENCE_KEY {
                                let n = shared::analysis::provenance_reference(&p).map(|r| r.len()).unwrap_or(0);
                                format!("{n} rows of `analyze` on the full bundle (the EM-vs-base family rows are the table \"Published EM-vs-base rows\" above)")
                            } else {
                                v.clone()
                            };
                            view! { <tr><th>{k.clone()}</th><td class="mono">{shown}</td></tr> }
                        }).collect_view()}
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
