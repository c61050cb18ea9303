//! The figures of a report: the hero, the cosine heatmaps and the persona charts of a view.

use super::*;
use crate::analysis::{Family, Report};

/// The checkpoints in colour order: base first, then the others as the report lists them.
/// The hero's series follow it, and the persona charts colour each checkpoint by it.
fn checkpoint_colour_order(report: &Report) -> Vec<String> {
    let mut order: Vec<String> = report
        .checkpoints
        .iter()
        .filter(|c| c.1 == "base")
        .map(|c| c.0.clone())
        .take(1)
        .collect();
    order.extend(
        report
            .checkpoints
            .iter()
            .filter(|c| c.1 != "base")
            .map(|c| c.0.clone()),
    );
    order
}

/// The hero figure of `metric` from a report: per method and layer, the level at base and after
/// each treated checkpoint (EM conditions, benign), whiskers = the 95% basic bootstrap CI of
/// Δ vs base drawn around the post level. NaN where a cell is not computed (yet).
pub fn hero_figure(report: &Report, metric: &str) -> Figure {
    let methods: Vec<Method> = report.methods.clone();
    let base = report
        .checkpoints
        .iter()
        .find(|c| c.1 == "base")
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let treated: Vec<String> = report
        .checkpoints
        .iter()
        .filter(|c| c.1 != "base")
        .map(|c| c.0.clone())
        .collect();
    let series = checkpoint_colour_order(report);
    let mut values = Vec::new();
    let mut intervals = Vec::new();
    let mut n_perm = 0;
    let mut n_q = usize::MAX;
    for &m in &methods {
        let mut vm = Vec::new();
        let mut im = Vec::new();
        for &l in &report.layers {
            let mut v = vec![f64::NAN; series.len()];
            let mut iv = vec![None; series.len()];
            for (ti, t) in treated.iter().enumerate() {
                if let Some(r) = report.rows.iter().find(|r| {
                    r.pre == base
                        && r.post == *t
                        && r.method == m
                        && r.layer == l
                        && r.metric == metric
                }) {
                    v[0] = r.pre_value;
                    v[ti + 1] = r.post_value;
                    iv[ti + 1] = r.ci95.map(|[a, b]| [r.pre_value + a, r.pre_value + b]);
                    n_perm = r.n_permutations;
                    n_q = n_q.min(r.n_questions);
                }
            }
            vm.push(v);
            im.push(iv);
        }
        values.push(vm);
        intervals.push(im);
    }
    let c = &report.config;
    Figure {
        title: format!("{metric}: base vs treated checkpoints"),
        caption: format!(
            "Bars: {metric} of each checkpoint; whiskers: 95% basic bootstrap CI of Δ vs base ({} question resamples) drawn around the treated level. n = {} paired questions (min over personas), N = {n_perm} permutations, seed {}, p floor {}. {}",
            c.bootstrap,
            if n_q == usize::MAX { 0 } else { n_q },
            c.seed,
            fmt(crate::stats::p_floor(n_perm.max(1))),
            crate::LAYER_CONVENTION
        ),
        kind: FigureKind::Hero {
            metric: metric.to_string(),
            methods: methods.iter().map(|m| m.name().to_string()).collect(),
            layers: report.layers.clone(),
            series,
            values,
            intervals,
        },
    }
}

/// Cosine heatmaps of one (method, layer): pre (base), post (`treated`) and Δ = post − pre.
pub fn cosine_heatmaps(
    report: &Report,
    method: Method,
    layer: u32,
    treated: &str,
    centred: bool,
) -> Option<[Figure; 3]> {
    let base = report.checkpoints.iter().find(|c| c.1 == "base")?.0.clone();
    let view = |ck: &str| {
        report
            .checkpoint_views
            .iter()
            .find(|v| v.checkpoint == ck && v.method == method && v.layer == layer)
    };
    let (pre, post) = (view(&base)?, view(treated)?);
    let pick = |v: &crate::analysis::CheckpointView| {
        if centred {
            v.cos_centred.clone()
        } else {
            v.cos_raw.clone()
        }
    };
    let (a, b) = (pick(pre), pick(post));
    let delta: Vec<f64> = b.iter().zip(&a).map(|(x, y)| x - y).collect();
    let kind = if centred { "mean-centred" } else { "raw" };
    let view = format!("Method {}, layer {layer}", method.name());
    let caption = format!(
        "Inter-persona cosines of the persona centroids ({kind}; centred = minus the mean of base's centroids), Method {}, layer {layer} ({}). n = {} questions per persona.",
        method.name(),
        crate::LAYER_CONVENTION,
        report.n_questions
    );
    let mk = |title: String, values: Vec<f64>, diverging: bool| Figure {
        title,
        caption: caption.clone(),
        kind: FigureKind::Heatmap {
            labels: report.personas.clone(),
            values,
            diverging,
        },
    };
    Some([
        mk(format!("cosines ({kind}), {base}, {view}"), a, false),
        mk(format!("cosines ({kind}), {treated}, {view}"), b, false),
        mk(
            format!("Δ cosines ({kind}), {treated} − {base}, {view}"),
            delta,
            true,
        ),
    ])
}

/// Norms and EM-axis projections per persona, base vs `treated`, for one (method, layer).
pub fn persona_figures(
    report: &Report,
    method: Method,
    layer: u32,
    treated: &str,
) -> Option<[Figure; 2]> {
    let pv = report.pair_views.iter().find(|v| {
        v.family != Family::EmVsBenign
            && v.post == treated
            && v.method == method
            && v.layer == layer
    })?;
    let g = &pv.geometry;
    let caption = format!(
        "Method {}, layer {layer} ({}). EM axis = unit(assistant centroid after − before) of this comparison ({} vs {}).",
        method.name(),
        crate::LAYER_CONVENTION,
        pv.post,
        pv.pre
    );
    let series = vec![format!("{} (pre)", pv.pre), format!("{} (post)", pv.post)];
    let order = checkpoint_colour_order(report);
    let colour_of = |name: &str| order.iter().position(|c| c == name).unwrap_or(order.len());
    let colours = vec![colour_of(&pv.pre), colour_of(&pv.post)];
    let view = format!("Method {}, layer {layer}", method.name());
    Some([
        Figure {
            title: format!("centroid norms, {} vs {}, {view}", pv.pre, pv.post),
            caption: caption.clone(),
            kind: FigureKind::PersonaBars {
                personas: report.personas.clone(),
                series: series.clone(),
                values: vec![g.norm_pre.clone(), g.norm_post.clone()],
                y_label: "|centroid|".into(),
                colours: colours.clone(),
            },
        },
        Figure {
            title: format!(
                "projection on the EM axis, {} vs {}, {view}",
                pv.pre, pv.post
            ),
            caption,
            kind: FigureKind::PersonaBars {
                personas: report.personas.clone(),
                series,
                values: vec![g.proj_axis_pre.clone(), g.proj_axis_post.clone()],
                y_label: "<centroid, EM axis>".into(),
                colours,
            },
        },
    ])
}
