//! `report.md`: tables ready to paste into a write-up.

use crate::analysis::{Family, Report, ALL_METRICS, PROBE_METRICS};
use std::fmt::Write;

/// A p-value for tables (also the page's): 4 decimals, scientific below 1e-3, and "< 1e-300"
/// where f64 underflows (an exact McNemar p of thousands of discordant pairs).
pub fn fmt_p(p: f64) -> String {
    if p == 0.0 {
        return "< 1e-300".into();
    }
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn fmt_opt_p(p: Option<f64>) -> String {
    p.map(fmt_p).unwrap_or_else(|| "—".into())
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(s, "# Persona geometry report\n");
    let _ = writeln!(
        s,
        "Model `{}`{}; tool persona-geometry {}; bundle written by {} {} on {}.\n",
        r.bundle_provenance.model_id,
        if r.bundle_provenance.model_revision.is_empty() {
            String::new()
        } else {
            format!(" @ {}", r.bundle_provenance.model_revision)
        },
        r.tool_version,
        r.bundle_provenance.tool,
        r.bundle_provenance.tool_version,
        r.bundle_provenance.created
    );
    let _ = writeln!(
        s,
        "- Layers: {:?}. Layer convention: {}.",
        r.layers, r.layer_convention
    );
    let _ = writeln!(
        s,
        "- Personas ({}): {}.",
        r.personas.len(),
        r.personas.join(", ")
    );
    let _ = writeln!(
        s,
        "- Questions: {}. Checkpoints: {}.",
        r.n_questions,
        r.checkpoints
            .iter()
            .map(|(n, role, _)| format!("{n} ({role})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- Tests: N = {} permutations (p floor {}), {} bootstrap resamples (the same question resamples for every checkpoint), seed {}, {}-fold GroupKFold by question, M3 on the k residual components below; {}; BH-FDR and Holm within each family (one per compared pair of checkpoints); verdict at BH p < {}. p: two-sided for M1, one-sided in the hypothesised direction for M2 (up) and M3 (down).",
        c.permutations,
        fmt_p(1.0 / (c.permutations as f64 + 1.0)),
        c.bootstrap,
        c.seed,
        c.folds,
        if r.bases.iter().all(|b| b.exact) {
            "M1/M2 draws exact (full width)"
        } else {
            "M1/M2 draws approximate (compact bundle: see Warnings)"
        },
        c.alpha
    );
    let _ = writeln!(s, "- {}", r.centre_note);
    let _ = writeln!(
        s,
        "- Analysis basis per (method, layer): {}.\n",
        r.bases
            .iter()
            .map(|b| format!(
                "{}/L{}: d={}, k={}, within-persona variance retained {:.1}%, M1/M2 draws {}",
                b.method.name(),
                b.layer,
                b.dim,
                b.k,
                100.0 * b.residual_variance_retained,
                if b.exact { "exact" } else { "approximate" }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    if !r.warnings.is_empty() {
        let _ = writeln!(s, "## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(s, "- {w}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Verdicts\n");
    let _ = writeln!(
        s,
        "| EM checkpoint | criterion | verdict | supporting metrics (layers) | kill: plan (p > {}) / equivalence (CI in ±{}) |",
        c.kill_p, c.equivalence_delta
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for v in &r.verdicts {
        let sup = v
            .supporting
            .iter()
            .map(|(m, ls)| format!("{m} {ls:?}"))
            .collect::<Vec<_>>()
            .join("; ");
        let primary = if v.criterion == crate::analysis::criterion_name(c.primary_threshold) {
            " (primary)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {} | {}{primary} | **{}** | {} | {} / {} |",
            v.em,
            v.criterion,
            v.verdict,
            if sup.is_empty() { "—".into() } else { sup },
            v.kill_plan,
            v.kill_equivalence
        );
    }
    let _ = writeln!(s);
    // The rules in words (the page's summary shows the same sentences).
    let n_layers = r.layers.len();
    let [p_only, kill] = crate::analysis::rule_sentences("p-only", c, n_layers);
    let [ratio, _] = crate::analysis::rule_sentences(
        &crate::analysis::criterion_name(c.primary_threshold),
        c,
        n_layers,
    );
    let _ = writeln!(s, "- p-only: {p_only}");
    let _ = writeln!(
        s,
        "- {} (and every ratio criterion, with its own factor): {ratio}",
        crate::analysis::criterion_name(c.primary_threshold)
    );
    let _ = writeln!(s, "- {kill}\n");

    for fam in [
        Family::EmVsBase,
        Family::BenignVsBase,
        Family::EmVsBenign,
        Family::OtherVsBase,
    ] {
        let rows: Vec<_> = r.rows.iter().filter(|x| x.family == fam).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "## Family `{}`\n", fam.name());
        for metric in ALL_METRICS.iter().chain(&PROBE_METRICS) {
            let mrows: Vec<_> = rows.iter().filter(|x| x.metric == *metric).collect();
            if mrows.is_empty() {
                continue;
            }
            let _ = writeln!(s, "### {metric}\n");
            let _ = writeln!(s, "| pre → post | method | layer | pre | post | Δ | 95% CI of Δ | p | p two-sided | p BH | p Holm | n q | values |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for x in mrows {
                // Approximate rows say so, with the full bundle's exact values where carried.
                let values = match (&x.reference, x.exact) {
                    (_, true) => "exact".to_string(),
                    (Some(e), false) => format!(
                        "approximate; `analyze` on the full bundle: Δ {:+.4}, p {}, p BH {}",
                        e.delta,
                        fmt_p(e.p),
                        fmt_opt_p(e.p_bh)
                    ),
                    (None, false) => "approximate".to_string(),
                };
                let ci = x
                    .ci95
                    .map(|c| format!("[{:.4}, {:.4}]", c[0], c[1]))
                    .unwrap_or_else(|| "—".into());
                let _ = writeln!(
                    s,
                    "| {} → {} | {} | {} | {:.4} | {:.4} | {:+.4} | {} | {} | {} | {} | {} | {} | {} |",
                    x.pre,
                    x.post,
                    x.method.name(),
                    x.layer,
                    x.pre_value,
                    x.post_value,
                    x.delta,
                    ci,
                    fmt_p(x.p),
                    fmt_p(x.p_two_sided),
                    fmt_opt_p(x.p_bh),
                    fmt_opt_p(x.p_holm),
                    x.n_questions,
                    values
                );
            }
            let _ = writeln!(s);
        }
    }
    if !r.sensitivity.is_empty() {
        let _ = writeln!(s, "## Sensitivity: EM vs benign ratio per cell\n");
        let crit: Vec<String> = r.sensitivity[0]
            .passes
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let _ = writeln!(
            s,
            "| EM | benign (least favourable) | metric | method | layer | Δ EM | Δ benign | ratio [paired 95% CI] | p BH (EM) | p BH (EM vs benign) | {} |",
            crit.join(" | ")
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|{}",
            "---|".repeat(crit.len())
        );
        for x in &r.sensitivity {
            let marks: Vec<&str> = x
                .passes
                .iter()
                .map(|(_, ok)| if *ok { "✓" } else { "·" })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:+.4} | {:+.4} | {:.2} {} | {} | {} | {} |",
                x.em,
                x.benign,
                x.metric,
                x.method.name(),
                x.layer,
                x.delta_em,
                x.delta_benign,
                x.ratio,
                x.ratio_ci95
                    .map(|c| format!("[{:.2}, {:.2}]", c[0], c[1]))
                    .unwrap_or_else(|| "—".into()),
                fmt_p(x.p_bh_em),
                if x.p_bh_em_vs_benign.is_nan() {
                    "—".to_string()
                } else {
                    fmt_p(x.p_bh_em_vs_benign)
                },
                marks.join(" | ")
            );
        }
        let _ = writeln!(s);
    }
    // One table per control arm (the benign twin, the null finetune, all controls pooled).
    let mut controls: Vec<&str> = Vec::new();
    for x in &r.adapter_level {
        if !controls.contains(&x.control.as_str()) {
            controls.push(&x.control);
        }
    }
    for control in controls {
        let rows: Vec<_> = r
            .adapter_level
            .iter()
            .filter(|x| x.control == control)
            .collect();
        let a = rows[0];
        let _ = writeln!(
            s,
            "## Training-seed replication: EM arm ({}) vs {} ({})\n\nEach checkpoint's Δ vs base is one observation; exact test over all {} arm labellings (p floor {}).\n",
            a.em.join(", "),
            if control.is_empty() { "benign arm" } else { control },
            a.benign.join(", "),
            a.n_labellings,
            fmt_p(a.p_floor)
        );
        let _ = writeln!(s, "| metric | method | layer | mean Δ EM | mean Δ control | difference | p (hypothesised direction) | p two-sided |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for x in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:+.4} | {:+.4} | {:+.4} | {} | {} |",
                x.metric,
                x.method.name(),
                x.layer,
                x.mean_delta_em,
                x.mean_delta_benign,
                x.difference,
                fmt_p(x.p_one_sided),
                fmt_p(x.p_two_sided)
            );
        }
        let _ = writeln!(s);
    }
    if !r.behaviour.is_empty() {
        let _ = writeln!(
            s,
            "## Behaviour: replies against base's\n\nThe greedy Method-B replies to the same persona x question prompts. Marker = the reply contains a phrase of the finetuning data's harmful-advice style or careful style (shared::behaviour lists them); p = exact McNemar test of the paired change. A phrase list measures style, not harm.\n"
        );
        let _ = writeln!(s, "| checkpoint | arm | replies | differ from base | harmful style (base) | p | careful style (base) | p | words (base) |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for b in &r.behaviour {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1}% | {:.1}% ({:.1}%) | {} | {:.1}% ({:.1}%) | {} | {:.0} ({:.0}) |",
                b.checkpoint,
                b.arm,
                b.n,
                100.0 * b.differ_from_base,
                100.0 * b.harmful.share,
                100.0 * b.harmful.base_share,
                fmt_p(b.harmful.p_mcnemar),
                100.0 * b.careful.share,
                100.0 * b.careful.base_share,
                fmt_p(b.careful.p_mcnemar),
                b.mean_words,
                b.base_mean_words
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "## M3 per checkpoint (held-out over question folds)\n\nM3 = scikit-learn's `LinearDiscriminantAnalysis(solver=\"lsqr\", shrinkage=\"auto\")` on the features named per row. Above chance: within-question label-permutation test of the pooled-covariance LDA on the residual PCs (a permutation test is valid for any statistic; this one is cheap to refit), with its own observed accuracy.\n"
    );
    let _ = writeln!(s, "| checkpoint | method | layer | M3 features | M3 accuracy | M3 mean log posterior | pooled LDA accuracy | chance acc (null mean) | p above chance (acc) | p (log post) | N | N_effective (cells / min questions / dropped by paired filter) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &r.checkpoint_views {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {} | {} / {} / {} |",
            v.checkpoint,
            v.method.name(),
            v.layer,
            v.m3_features,
            v.m3_accuracy,
            v.m3_log_posterior,
            v.m3_pooled_accuracy,
            v.m3_null_mean_accuracy,
            fmt_p(v.m3_p_above_chance_accuracy),
            fmt_p(v.m3_p_above_chance_log_posterior),
            v.m3_n_label_permutations,
            v.n_effective,
            v.n_effective_min_questions,
            v.n_dropped_paired
        );
    }
    s
}
