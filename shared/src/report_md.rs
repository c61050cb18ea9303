//! `report.md`: tables ready to paste into a write-up.

use crate::analysis::{Family, Report, ALL_METRICS};
use std::fmt::Write;

fn fmt_p(p: f64) -> String {
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
        "- Tests: N = {} permutations (p floor {}), {} bootstrap resamples, seed {}, {}-fold GroupKFold by question, {} residual components; BH-FDR and Holm within each family; verdict at BH p < {}.",
        c.permutations,
        fmt_p(1.0 / (c.permutations as f64 + 1.0)),
        c.bootstrap,
        c.seed,
        c.folds,
        c.components,
        c.alpha
    );
    let _ = writeln!(s, "- {}", r.centre_note);
    let _ = writeln!(
        s,
        "- Analysis basis per (method, layer): {}.\n",
        r.bases
            .iter()
            .map(|b| format!(
                "{}/L{}: d={}, k={}, within-persona variance retained {:.1}%",
                b.method.name(),
                b.layer,
                b.dim,
                b.k,
                100.0 * b.residual_variance_retained
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let _ = writeln!(s, "## Verdicts\n");
    let _ = writeln!(
        s,
        "| EM checkpoint | criterion | verdict | supporting metrics (layers) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
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
            "| {} | {}{primary} | **{}** | {} |",
            v.em,
            v.criterion,
            v.verdict,
            if sup.is_empty() { "—".into() } else { sup }
        );
    }
    let _ = writeln!(s);

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
        for metric in ALL_METRICS {
            let mrows: Vec<_> = rows.iter().filter(|x| x.metric == metric).collect();
            if mrows.is_empty() {
                continue;
            }
            let _ = writeln!(s, "### {metric}\n");
            let _ = writeln!(s, "| pre → post | method | layer | pre | post | Δ | 95% CI of Δ | p | p BH | p Holm | n q |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
            for x in mrows {
                let ci = x
                    .ci95
                    .map(|c| format!("[{:.4}, {:.4}]", c[0], c[1]))
                    .unwrap_or_else(|| "—".into());
                let _ = writeln!(
                    s,
                    "| {} → {} | {} | {} | {:.4} | {:.4} | {:+.4} | {} | {} | {} | {} | {} |",
                    x.pre,
                    x.post,
                    x.method.name(),
                    x.layer,
                    x.pre_value,
                    x.post_value,
                    x.delta,
                    ci,
                    fmt_p(x.p),
                    fmt_opt_p(x.p_bh),
                    fmt_opt_p(x.p_holm),
                    x.n_questions
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
            "| EM | metric | method | layer | Δ EM | Δ benign | ratio | p BH (EM) | {} |",
            crit.join(" | ")
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|{}",
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
                "| {} | {} | {} | {} | {:+.4} | {:+.4} | {:.2} | {} | {} |",
                x.em,
                x.metric,
                x.method.name(),
                x.layer,
                x.delta_em,
                x.delta_benign,
                x.ratio,
                fmt_p(x.p_bh_em),
                marks.join(" | ")
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "## M3 per checkpoint (held-out, label-permutation test of above-chance separability)\n"
    );
    let _ = writeln!(s, "| checkpoint | method | layer | accuracy | mean log posterior | chance acc (null mean) | p (acc) | p (log post) | N |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for v in &r.checkpoint_views {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {} |",
            v.checkpoint,
            v.method.name(),
            v.layer,
            v.m3_accuracy,
            v.m3_log_posterior,
            v.m3_null_mean_accuracy,
            fmt_p(v.m3_p_above_chance_accuracy),
            fmt_p(v.m3_p_above_chance_log_posterior),
            v.m3_n_label_permutations
        );
    }
    s
}
