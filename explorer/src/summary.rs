//! The top of the page: what the study is (model, checkpoints and their roles, personas,
//! questions, layers, methods), the verdict this bundle was published with (shown as soon as the
//! bundle is decoded, then re-verified here as the workers finish), and this page's own verdict
//! under every criterion with its rule in one sentence.

use super::*;
use shared::analysis::{row_reproduction, rule_sentences, Published, RowReproduction};

/// Whether the page's settings are those of the published run; if not, in words.
fn settings_differ(ctl: Ctl, p: &Published, n_personas: usize) -> Option<String> {
    let mut why = Vec::new();
    if let Some(n) = p.permutations {
        if n != ctl.permutations.get() {
            why.push(format!("N = {n}"));
        }
    }
    if let Some(s) = p.seed {
        if s != ctl.seed.get() {
            why.push(format!("seed = {s}"));
        }
    }
    if let Some(a) = p.alpha {
        if (a - ctl.alpha.get()).abs() > 1e-12 {
            why.push(format!("α = {a}"));
        }
    }
    if ctl.personas.with(|s| s.len()) != n_personas {
        why.push("every persona selected".into());
    }
    (!why.is_empty()).then(|| {
        format!(
            "The published numbers are for {}; these settings differ, so they are not re-verified (set them back to compare).",
            why.join(", ")
        )
    })
}

/// "k of n tasks, about T s left" from the analysis in progress.
fn progress_line(ctl: Ctl) -> String {
    let (done, total) = ctl.progress.get();
    if total == 0 || done >= total {
        return String::new();
    }
    let eta = STATE.with(|s| {
        let s = s.borrow();
        let a = s.analysis.as_ref()?;
        let elapsed = (web::now_ms() - a.started_ms) / 1000.0;
        (done > 0).then(|| elapsed / done as f64 * (total - done) as f64)
    });
    match eta {
        Some(t) => format!("{done} of {total} tasks, about {t:.0} s left"),
        None => format!("{done} of {total} tasks"),
    }
}

fn reproduction_label(r: &RowReproduction) -> (&'static str, &'static str) {
    match r {
        RowReproduction::Reproduced => ("reproduced", "reproduced"),
        RowReproduction::SameDecision => ("same-decision", "same decision, value approximate"),
        RowReproduction::Differs => ("differs", "differs"),
        RowReproduction::Pending => ("pending", "computing…"),
    }
}

#[component]
pub(crate) fn StudySummary() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
    view! {
        <section id="summary" aria-labelledby="summary-title">
            <h2 id="summary-title">"Study"</h2>
            {move || ctl.meta.get().map(|m| {
                let role_word = |r: &str| match r {
                    "base" => "the model before finetuning",
                    "em" => "EM finetune (the treatment)",
                    "benign" => "control finetune",
                    _ => "other",
                };
                view! {
                    <dl class="facts">
                        <dt>"model"</dt><dd id="summary-model">{m.provenance.model_id.clone()}</dd>
                        <dt>"checkpoints"</dt>
                        <dd><ul id="summary-checkpoints">{m.checkpoints.iter().map(|(n, r, l, prov)| {
                            // A control arm other than the benign twin (e.g. the null finetune) is named.
                            let arm = prov.iter().find(|(k, _)| k == "arm").map(|(_, v)| v.clone()).filter(|a| a != r);
                            let what = match &arm {
                                Some(a) => format!("{}, arm {a}", role_word(r)),
                                None => role_word(r).to_string(),
                            };
                            view! {
                                <li data-role=r.clone() data-arm=arm.clone().unwrap_or_else(|| r.clone())><strong>{n.clone()}</strong>{format!(" — {what} ({r}): {l}")}</li>
                            }
                        }).collect_view()}</ul></dd>
                        <dt>"personas"</dt><dd>{format!("{}: {}", m.personas.len(), m.personas.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", "))}</dd>
                        <dt>"questions"</dt><dd>{m.questions.len()}</dd>
                        <dt>"layers"</dt><dd>{format!("{:?} (layer l = output of decoder block l, 0-based; the last block before the final norm)", m.layers)}</dd>
                        <dt>"methods"</dt><dd>{m.methods.iter().map(|x| match x {
                            Method::A => "A = last token of the chat-templated prompt",
                            Method::B => "B = mean over the greedily generated response tokens",
                        }).collect::<Vec<_>>().join("; ")}</dd>
                    </dl>
                    {m.published.clone().map(|p| view! { <PublishedVerdict ctl=ctl published=p n_personas=m.personas.len()/> })}
                    <PageVerdict/>
                    <SeedTest/>
                }
            })}
        </section>
    }
}

/// The verdict the bundle was published with, at once, then marked as re-verified or not.
#[component]
fn PublishedVerdict(ctl: Ctl, published: Published, n_personas: usize) -> impl IntoView {
    let p = StoredValue::new(published);
    let head = p.with_value(|p| {
        format!(
            "Published verdict: persona-geometry {} `analyze` on the full bundle, N = {}, seed = {}, α = {}",
            p.tool_version,
            p.permutations.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            p.seed.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            p.alpha.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        )
    });
    // Computed once per change and shared by the status line, the list and the table.
    let page = Memo::new(move |_| verdicts(ctl).map(|(_, v, _, complete)| (v, complete)));
    let differ = Memo::new(move |_| p.with_value(|p| settings_differ(ctl, p, n_personas)));
    let marks = Memo::new(move |_| published_marks(ctl, p));
    // The benchmark's "published verdict on screen" time (after this view is in the page).
    Effect::new(move |_| crate::components::mark_once("published_ms"));
    view! {
        <div id="published" class="published">
            <h3>{head}</h3>
            <p id="reverify-status" role="status" aria-live="polite">{move || {
                if !ctl.bundle_ready.get() && ctl.error.with(|e| e.is_some()) {
                    return "The bundle could not be loaded (the error above says why): these are the published numbers as published, not re-verified in this browser.".to_string();
                }
                if let Some(d) = differ.get() {
                    return d;
                }
                match page.get() {
                    Some((v, true)) => {
                        let same = p.with_value(|p| p.verdicts.iter().all(|pv| v.iter().any(|x| x.em == pv.em && x.criterion == pv.criterion && x.verdict == pv.verdict)));
                        if same {
                            "Re-verified in this browser: the verdict under every criterion is the published one.".to_string()
                        } else {
                            "Re-verified in this browser: the verdict differs under at least one criterion (marked below).".to_string()
                        }
                    }
                    _ if !ctl.bundle_ready.get() => format!(
                        "Shown from the study head published with the bundle; re-verification starts when the bundle has arrived ({}).",
                        ctl.status.get().trim_end_matches(" ...")
                    ),
                    _ => {
                        let line = progress_line(ctl);
                        format!("Re-verifying in this browser{}…", if line.is_empty() { String::new() } else { format!(": {line}") })
                    }
                }
            }}</p>
            <ul class="verdicts">
            {move || {
                let differ = differ.with(|d| d.is_some());
                let page = page.get();
                p.with_value(|p| p.verdicts.clone()).into_iter().map(|pv| {
                    let (mark, text) = match (&page, differ) {
                        (_, true) => ("settings", "not for these settings".to_string()),
                        (Some((v, true)), false) => match v.iter().find(|x| x.em == pv.em && x.criterion == pv.criterion) {
                            Some(x) if x.verdict == pv.verdict => ("reproduced", "reproduced".to_string()),
                            Some(x) => ("differs", format!("this page: {}", x.verdict)),
                            None => ("differs", "not computed by this page".to_string()),
                        },
                        _ => ("pending", "re-verifying…".to_string()),
                    };
                    let support = pv.supporting.iter().map(|(m, ls)| format!("{m} at layers {ls:?}")).collect::<Vec<_>>().join("; ");
                    view! {
                        <li class=format!("verdict-{}", pv.verdict.replace(' ', "-")) data-em=pv.em.clone() data-criterion=pv.criterion.clone() data-verdict=pv.verdict.clone() data-reproduced=mark>
                            <strong>{format!("{} under {}: {}", pv.em, pv.criterion, pv.verdict)}</strong>
                            <span class=format!("mark mark-{mark}")>{format!(" [{text}]")}</span>
                            {(!support.is_empty()).then(|| view! { <div class="support">{format!("supporting: {support}")}</div> })}
                        </li>
                    }
                }).collect_view()
            }}
            </ul>
            <details id="published-rows">
                <summary>{move || {
                    marks.with(|marks| {
                        let count = |k: &str| marks.iter().filter(|(_, _, m)| reproduction_label(m).0 == k).count();
                        format!("Published EM-vs-base rows ({}): {} reproduced, {} same decision with an approximate value, {} differ, {} computing",
                            marks.len(), count("reproduced"), count("same-decision"), count("differs"), count("pending"))
                    })
                }}</summary>
                <p class="note">"Reproduced = this page's Δ within 1e-5 of the statistic's scale and the same decision (BH p < α). M1_raw, M1_centred and M2 are functions of the centroids, exact on the compact bundle; M1_separation (its within-persona spread from the f16 residuals), M3 (fitted on the stored components here, on full activations in analyze) and the p-values of truncated draws are approximate, so they can agree only in their decision."</p>
                <div class="table-wrap">
                <table id="published-table">
                    <thead><tr><th>"EM"</th><th>"metric"</th><th>"method"</th><th>"layer"</th><th>"published Δ"</th><th>"published p (BH)"</th><th>"this page Δ"</th><th>"this page p (BH)"</th><th>"mark"</th></tr></thead>
                    <tbody>{move || {
                        marks.get().into_iter().map(|(r, mine, mark)| {
                            let (cls, text) = reproduction_label(&mark);
                            view! {
                                <tr data-reproduced=cls>
                                    <td>{r.post.clone()}</td><td>{r.metric.clone()}</td><td>{r.method.name()}</td><td>{r.layer}</td>
                                    <td>{fmt(r.delta)}</td><td>{r.p_bh.map(fmt).unwrap_or_default()}</td>
                                    <td>{mine.map(|x| fmt(x.0)).unwrap_or_default()}</td><td>{mine.and_then(|x| x.1).map(fmt).unwrap_or_default()}</td>
                                    <td class=format!("mark mark-{cls}")>{text}</td>
                                </tr>
                            }
                        }).collect_view()
                    }}</tbody>
                </table>
                </div>
            </details>
        </div>
    }
}

/// The published EM-vs-base family rows, this page's (Δ, BH p) of each where computed, and
/// their marks.
type PublishedMark = (
    shared::analysis::ReferenceRow,
    Option<(f64, Option<f64>)>,
    RowReproduction,
);

fn published_marks(ctl: Ctl, p: StoredValue<Published>) -> Vec<PublishedMark> {
    let report = full_report(ctl);
    let alpha = ctl.alpha.get();
    let complete = every_view_computed(ctl);
    let base: Option<String> = ctl.meta.with(|m| {
        m.as_ref().and_then(|m| {
            m.checkpoints
                .iter()
                .find(|c| c.1 == "base")
                .map(|c| c.0.clone())
        })
    });
    p.with_value(|p| {
        p.rows
            .iter()
            .filter(|r| base.as_deref().is_some_and(|b| p.is_family_row(r, b)))
            .map(|r| {
                // A cell's rows exist once the cell is computed; BH needs the whole family.
                let mine = report
                    .as_ref()
                    .and_then(|rep| rep.rows.iter().find(|x| r.is_row(x)))
                    .filter(|_| complete);
                (
                    r.clone(),
                    mine.map(|x| (x.delta, x.p_bh)),
                    row_reproduction(r, mine, alpha),
                )
            })
            .collect()
    })
}

/// This page's verdict under every criterion, with the rules spelled out.
#[component]
fn PageVerdict() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
    view! {
        <div id="page-verdict" class="page-verdict">
        {move || {
            let n_layers = ctl.meta.with(|m| m.as_ref().map(|m| m.layers.len()).unwrap_or(0));
            let cfg = shared::analysis::AnalysisConfig { alpha: ctl.alpha.get(), ..page_config(ctl.permutations.get(), ctl.seed.get()) };
            match verdicts(ctl) {
                None => view! { <p class="pending">{move || format!("This page's verdict: computing ({})…", progress_line(ctl))}</p> }.into_any(),
                Some((_, v, chosen, complete)) => {
                    let state = if complete { "final: every (method, layer) view computed".to_string() } else { format!("provisional: not every view is computed yet ({})", progress_line(ctl)) };
                    let kill_rule = rule_sentences("p-only", &cfg, n_layers)[1].clone();
                    view! {
                        <h3>{format!("This page's verdict ({state})")}</h3>
                        <ul class="verdicts">
                        {v.into_iter().map(|x| {
                            let rule = rule_sentences(&x.criterion, &cfg, n_layers)[0].clone();
                            let support = x.supporting.iter().map(|(m, ls)| format!("{m} at layers {ls:?}")).collect::<Vec<_>>().join("; ");
                            let chosen_cls = if x.criterion == chosen { " chosen" } else { "" };
                            view! {
                                <li class=format!("verdict-{}{chosen_cls}", x.verdict.replace(' ', "-")) data-em=x.em.clone() data-criterion=x.criterion.clone() data-verdict=x.verdict.clone() data-final=complete.to_string()>
                                    <strong>{format!("{} under {}: {}", x.em, x.criterion, x.verdict)}</strong>
                                    {(!support.is_empty()).then(|| view! { <div class="support">{format!("supporting: {support}")}</div> })}
                                    <div class="rule">{rule}</div>
                                </li>
                            }
                        }).collect_view()}
                        </ul>
                        <p class="rule">{kill_rule}</p>
                    }.into_any()
                }
            }
        }}
        </div>
    }
}

/// The training-seed test of this page's report: the EM arm's checkpoints against each control
/// arm (and all controls pooled), each checkpoint's Δ vs base one observation, exact over every
/// labelling (`shared::analysis`, the rows `analyze` writes). Shown when the bundle has at
/// least two seeds of EM and of a control arm.
#[component]
fn SeedTest() -> impl IntoView {
    let ctl = expect_context::<Ctl>();
    view! {
        {move || {
            let report = full_report(ctl)?;
            if report.adapter_level.is_empty() {
                return None;
            }
            let complete = every_view_computed(ctl);
            let first = &report.adapter_level[0];
            Some(view! {
                <details id="seed-test" class="seed-test" data-final=complete.to_string()>
                    <summary>{format!(
                        "Training-seed test ({}): EM arm ({}) against each control arm; smallest attainable p {}",
                        if complete { "final" } else { "provisional" },
                        first.em.join(", "),
                        report.adapter_level.iter().map(|r| format!("{} 1/{}", r.control, r.n_labellings)).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", ")
                    )}</summary>
                    <table id="seed-table">
                        <thead><tr><th>"control arm"</th><th>"metric"</th><th>"method"</th><th>"layer"</th><th>"mean Δ EM"</th><th>"mean Δ control"</th><th>"p (hypothesised direction)"</th><th>"p two-sided"</th><th title="whether this page's mean Δ equals analyze on the full bundle: M1_raw and M2 always; M1_separation when the compact bundle carries each persona's outside energy; M3 (fitted on the stored components) never">"values"</th></tr></thead>
                        <tbody>
                        {report.adapter_level.iter().map(|r| {
                            let values = if point_estimate_exact(&r.metric) { "exact" } else { "approximate" };
                            view! {
                            <tr data-values=values data-control=r.control.clone() data-metric=r.metric.clone() data-method=r.method.name() data-layer=r.layer data-p=format!("{:e}", r.p_one_sided) data-mean-em=format!("{:e}", r.mean_delta_em)>
                                <td>{format!("{} ({})", r.control, r.benign.join(", "))}</td>
                                <td>{r.metric.clone()}</td><td>{r.method.name()}</td><td>{r.layer}</td>
                                <td>{format!("{:+.4}", r.mean_delta_em)}</td><td>{format!("{:+.4}", r.mean_delta_benign)}</td>
                                <td>{shared::report_md::fmt_p(r.p_one_sided)}</td><td>{shared::report_md::fmt_p(r.p_two_sided)}</td>
                                <td>{values}</td>
                            </tr>
                        }}).collect_view()}
                        </tbody>
                    </table>
                </details>
            })
        }}
    }
}
