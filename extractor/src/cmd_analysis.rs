//! `analyze`, `compact`, `synth`, `export`, `inspect`: thin wrappers over `shared`.

use crate::io_util::{read_bundle, write_atomic, write_bundle};
use crate::npy::{write_npz, NpyArray, NpyData};
use anyhow::{bail, Context, Result};
use shared::analysis::{analyze_with_cells, AnalysisConfig};
use shared::bundle::Method;
use shared::synth::{synth_bundle, SynthSpec};
use shared::Bundle;
use std::collections::BTreeMap;
use std::path::Path;

pub fn run_analyze(
    bundle_path: &Path,
    out: &Path,
    cfg: &AnalysisConfig,
    figures: bool,
) -> Result<()> {
    let bundle = read_bundle(bundle_path)?;
    let t0 = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |msg: &str| {
        let mut l = last.lock().expect("progress lock");
        if l.elapsed().as_millis() > 500 || msg.contains("coordinates") {
            eprintln!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
            *l = std::time::Instant::now();
        }
    };
    let (report, plan, cells) = analyze_with_cells(&bundle, cfg, &progress)
        .with_context(|| format!("analysing {}", bundle_path.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_vec_pretty(&report)?;
    write_atomic(&out.join("report.json"), &json)?;
    write_atomic(
        &out.join("report.md"),
        shared::report_md::render(&report).as_bytes(),
    )?;
    eprintln!(
        "[{:>6.1}s] wrote {} and {}",
        t0.elapsed().as_secs_f64(),
        out.join("report.json").display(),
        out.join("report.md").display()
    );
    if figures {
        let dir = out.join("figures");
        // The system fonts are read once for every figure's PNG.
        let opt = figure_render_options();
        let n = write_figures(&report, &dir, &opt)?
            + write_null_figures(&plan, &bundle, &cells, &dir, &opt)?;
        eprintln!("wrote {n} figures (SVG and PNG) to {}", dir.display());
    }
    for v in &report.verdicts {
        println!("{}: criterion {} -> {}", v.em, v.criterion, v.verdict);
    }
    Ok(())
}

/// Every figure of the page for every view, as SVG and as PNG (the SVG rasterised at 2x with the
/// system's sans-serif font), file names = the page's download names.
fn write_figures(
    report: &shared::analysis::Report,
    dir: &Path,
    opt: &resvg::usvg::Options,
) -> Result<usize> {
    use shared::figures::{cosine_heatmaps, hero_figure, persona_figures, Figure};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut figs: Vec<Figure> = shared::analysis::ALL_METRICS
        .iter()
        .map(|m| hero_figure(report, m))
        .collect();
    for (ck, _, _) in report.checkpoints.iter().filter(|c| c.1 != "base") {
        for &m in &report.methods {
            for &l in &report.layers {
                for centred in [false, true] {
                    if let Some(h) = cosine_heatmaps(report, m, l, ck, centred) {
                        figs.extend(h);
                    }
                }
                if let Some(p) = persona_figures(report, m, l, ck) {
                    figs.extend(p);
                }
            }
        }
    }
    for f in &figs {
        write_figure_files(dir, f, &f.file_stem(), opt)?;
    }
    Ok(figs.len())
}

/// The permutation-null histograms of every view and treated checkpoint (M1 raw and centred, M2,
/// M3, the LDA label null), as the page draws them.
fn write_null_figures(
    plan: &shared::analysis::Plan,
    bundle: &Bundle,
    cells: &[Option<shared::analysis::CellResult>],
    dir: &Path,
    opt: &resvg::usvg::Options,
) -> Result<usize> {
    let mut n = 0;
    for (coords, cell) in plan.coords.iter().zip(cells) {
        let Some(cell) = cell else { continue };
        for treated in (0..bundle.checkpoints.len()).filter(|&c| c != plan.base) {
            for f in shared::figures::null_figures(
                plan,
                bundle,
                cell,
                coords.method,
                coords.layer,
                treated,
                &[false, true],
            ) {
                write_figure_files(dir, &f, &f.file_stem(), opt)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// SVG rendering options with a real sans-serif face (the figures ask for `sans-serif`, which
/// fontdb maps to Arial unless told).
pub fn figure_render_options() -> resvg::usvg::Options<'static> {
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    let family = [
        "DejaVu Sans",
        "Liberation Sans",
        "Arial",
        "Helvetica",
        "Noto Sans",
    ]
    .into_iter()
    .find(|f| {
        db.faces()
            .any(|face| face.families.iter().any(|(n, _)| n == f))
    });
    match family {
        Some(f) => db.set_sans_serif_family(f),
        None => eprintln!(
            "warning: no DejaVu/Liberation/Arial font found: PNG figures may have no text (the SVGs do)"
        ),
    }
    opt
}

/// `<stem>.svg` and `<stem>.png` (2x) of a figure in `dir`.
pub fn write_figure_files(
    dir: &Path,
    fig: &shared::figures::Figure,
    stem: &str,
    opt: &resvg::usvg::Options,
) -> Result<()> {
    let (w, h) = fig.size();
    let svg = fig.to_svg(w, h).map_err(anyhow::Error::msg)?;
    write_atomic(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
    write_atomic(
        &dir.join(format!("{stem}.png")),
        &svg_to_png(&svg, opt, 2.0)?,
    )
}

fn svg_to_png(svg: &str, opt: &resvg::usvg::Options, scale: f32) -> Result<Vec<u8>> {
    let tree = resvg::usvg::Tree::from_str(svg, opt).context("parsing a figure's SVG")?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .context("figure size")?;
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("allocating the PNG")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("encoding the PNG")
}

pub fn run_compact(
    bundle_path: &Path,
    out: &Path,
    components: usize,
    keep_texts: bool,
    seed: u64,
    reference: Option<&Path>,
) -> Result<()> {
    let bundle = read_bundle(bundle_path)?;
    if bundle.compact.is_some() {
        bail!("{} is already compact", bundle_path.display());
    }
    let mut c = shared::coords::compact_bundle(&bundle, components, keep_texts, seed)
        .with_context(|| format!("compacting {}", bundle_path.display()))?;
    if let Some(path) = reference {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the reference report {}", path.display()))?;
        let report = shared::analysis::ReferenceSource::from_json(&text).with_context(|| {
            format!(
                "{} is not a report.json of `persona-geometry analyze` (this version)",
                path.display()
            )
        })?;
        shared::analysis::embed_reference(&bundle, &mut c, &report).with_context(|| {
            format!(
                "embedding {} into the compact form of {}",
                path.display(),
                bundle_path.display()
            )
        })?;
        eprintln!(
            "embedded {} exact rows from {}",
            report.rows.len(),
            path.display()
        );
    }
    let bytes = c
        .encode()
        .with_context(|| format!("encoding bundle for {}", out.display()))?;
    write_atomic(out, &bytes)?;
    eprintln!(
        "wrote {} ({:.2} MB)",
        out.display(),
        bytes.len() as f64 / 1e6
    );
    write_head(out, &c, &bytes)?;
    for b in &c.compact.as_ref().expect("compact").per_method_layer {
        eprintln!(
            "  method {} layer {}: basis {} dims ({} residual PCs), within-persona variance retained {:.2}%",
            b.method.name(),
            b.layer,
            b.dim,
            b.k,
            100.0 * b.residual_ss_retained / b.residual_ss_total.max(1e-300)
        );
    }
    Ok(())
}

pub fn run_synth(out: &Path, spec: &SynthSpec) -> Result<()> {
    let b = synth_bundle(spec);
    let n = write_bundle(out, &b)?;
    eprintln!("wrote {} ({:.2} MB)", out.display(), n as f64 / 1e6);
    Ok(())
}

/// `meta.json` of an export: provenance and axis orders.
pub fn export_meta(b: &Bundle) -> serde_json::Value {
    serde_json::json!({
        "format": "persona-geometry export v1",
        "provenance": b.provenance,
        "personas": b.personas,
        "questions": b.questions,
        "checkpoints": b.checkpoints.iter().map(|c| serde_json::json!({"name": c.name, "role": c.role.name(), "label": c.label, "provenance": c.provenance})).collect::<Vec<_>>(),
        "methods": b.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "layers": b.layers,
        "hidden_size": b.hidden_size,
        "layer_convention": shared::LAYER_CONVENTION,
        "responses": b.responses,
    })
}

pub fn export_arrays(b: &Bundle) -> Result<BTreeMap<String, NpyArray>> {
    if b.compact.is_some() {
        bail!("this bundle is compact (it stores analysis coordinates, not hidden states); export the full bundle it was made from");
    }
    let (p, q, h) = (b.n_personas(), b.n_questions(), b.hidden_size as usize);
    let mut arrays = BTreeMap::new();
    for (ck, c) in b.checkpoints.iter().enumerate() {
        for &m in &b.methods {
            for &l in &b.layers {
                let cell = b.cell(ck, m, l).expect("validated");
                let prefix = format!("{}/{}/L{l}", c.name, m.name());
                arrays.insert(
                    format!("{prefix}/centroids"),
                    NpyArray {
                        shape: vec![p, h],
                        data: NpyData::F32(cell.centroids.to_f32()),
                    },
                );
                arrays.insert(
                    format!("{prefix}/per_question"),
                    NpyArray {
                        shape: vec![p, q, h],
                        data: NpyData::F32(cell.per_question.to_f32()),
                    },
                );
                arrays.insert(
                    format!("{prefix}/valid"),
                    NpyArray {
                        shape: vec![p, q],
                        data: NpyData::Bool(cell.valid.clone()),
                    },
                );
            }
        }
    }
    Ok(arrays)
}

pub fn run_export(bundle_path: &Path, format: &str, out: &Path) -> Result<()> {
    let b = read_bundle(bundle_path)?;
    let arrays =
        export_arrays(&b).with_context(|| format!("exporting {}", bundle_path.display()))?;
    let meta = serde_json::to_vec_pretty(&export_meta(&b))?;
    let bytes = match format {
        "npz" => write_npz(&arrays, &[("meta.json", meta)])?,
        "safetensors" => crate::import::write_safetensors(&arrays, &meta)?,
        "json" => {
            let mut obj = serde_json::Map::new();
            obj.insert("meta.json".into(), serde_json::from_slice(&meta)?);
            for (name, a) in &arrays {
                let v = match &a.data {
                    NpyData::F32(v) => serde_json::json!({"shape": a.shape, "data": v}),
                    NpyData::Bool(v) => serde_json::json!({"shape": a.shape, "data": v}),
                    NpyData::I64(v) => serde_json::json!({"shape": a.shape, "data": v}),
                };
                obj.insert(name.clone(), v);
            }
            serde_json::to_vec(&serde_json::Value::Object(obj))?
        }
        f => bail!("unknown export format `{f}`; use npz, safetensors or json"),
    };
    write_atomic(out, &bytes)?;
    eprintln!(
        "wrote {} ({} arrays, {:.2} MB)",
        out.display(),
        arrays.len(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}

pub fn inspect_text(b: &Bundle, size: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let pv = &b.provenance;
    let _ = writeln!(
        s,
        "bundle: {:.2} MB, format v{}, {}",
        size as f64 / 1e6,
        shared::bundle::FORMAT_VERSION,
        if b.compact.is_some() {
            "compact"
        } else {
            "full"
        }
    );
    let _ = writeln!(
        s,
        "written by: {} {} on {} (seed {})",
        pv.tool, pv.tool_version, pv.created, pv.seed
    );
    let _ = writeln!(
        s,
        "model: {}{}",
        pv.model_id,
        if pv.model_revision.is_empty() {
            String::new()
        } else {
            format!(" @ {}", pv.model_revision)
        }
    );
    let _ = writeln!(s, "layer convention: {}", pv.layer_convention);
    for (k, v) in &pv.extra {
        let v1 = v.lines().next().unwrap_or("");
        let more = if v.lines().count() > 1 { " [...]" } else { "" };
        let _ = writeln!(
            s,
            "  {k}: {}{more}",
            if v1.len() > 120 {
                format!(
                    "{}...",
                    &v1[..v1.char_indices().nth(117).map(|x| x.0).unwrap_or(v1.len())]
                )
            } else {
                v1.to_string()
            }
        );
    }
    let _ = writeln!(
        s,
        "shape: {} personas x {} questions, hidden {}, methods {:?}, layers {:?}",
        b.n_personas(),
        b.n_questions(),
        b.hidden_size,
        b.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        b.layers
    );
    let _ = writeln!(
        s,
        "personas: {}",
        b.personas
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "checkpoints:");
    for (ck, c) in b.checkpoints.iter().enumerate() {
        let _ = writeln!(
            s,
            "  [{ck}] {} (role {}, \"{}\")",
            c.name,
            c.role.name(),
            c.label
        );
        for (k, v) in &c.provenance {
            let _ = writeln!(s, "      {k}: {v}");
        }
        for &m in &b.methods {
            let mut invalid = 0;
            let mut total = 0;
            for &l in b.layers.iter().take(1) {
                let cell = b.cell(ck, m, l).expect("validated");
                invalid += cell.valid.iter().filter(|&&v| !v).count();
                total += cell.valid.len();
            }
            let _ = writeln!(s, "      method {}: {} of {} (persona, question) activations invalid (empty response)", m.name(), invalid, total);
        }
    }
    if let Some(c) = &b.compact {
        let _ = writeln!(
            s,
            "compact basis ({} residual PCs requested, response texts {}):",
            c.components,
            if c.texts_kept { "kept" } else { "dropped" }
        );
        for i in &c.per_method_layer {
            let _ = writeln!(
                s,
                "  method {} layer {}: dim {}, k {}, within-persona variance retained {:.2}%",
                i.method.name(),
                i.layer,
                i.dim,
                i.k,
                100.0 * i.residual_ss_retained / i.residual_ss_total.max(1e-300)
            );
        }
    }
    if let Some(r) = b.responses.first() {
        let n = r.token_counts.iter().filter(|&&c| c > 0).count();
        let mean = r.token_counts.iter().map(|&c| c as f64).sum::<f64>() / n.max(1) as f64;
        let _ = writeln!(
            s,
            "method B responses: {} sets; checkpoint {}: mean {:.1} tokens over {} non-empty",
            b.responses.len(),
            b.checkpoints[r.checkpoint as usize].name,
            mean,
            n
        );
    }
    s
}

pub fn run_inspect(bundle_path: &Path, with_head: bool) -> Result<()> {
    let bytes =
        std::fs::read(bundle_path).with_context(|| format!("reading {}", bundle_path.display()))?;
    let b = Bundle::decode(&bytes).with_context(|| format!("bundle {}", bundle_path.display()))?;
    print!("{}", inspect_text(&b, bytes.len()));
    if with_head {
        if b.compact.is_none() {
            bail!(
                "{} is a full bundle; the page reads compact ones (`persona-geometry compact`, which writes the head too)",
                bundle_path.display()
            );
        }
        write_head(bundle_path, &b, &bytes)?;
    }
    Ok(())
}

/// Writes `BUNDLE.head.json` beside the compact bundle `bundle_path` (encoded as `bytes`): the
/// page shows the study and its published verdict from it while the bundle downloads.
fn write_head(bundle_path: &Path, bundle: &Bundle, bytes: &[u8]) -> Result<()> {
    let mut head_path = bundle_path.as_os_str().to_owned();
    head_path.push(shared::head::HEAD_SUFFIX);
    let head_path = std::path::PathBuf::from(head_path);
    let head = shared::head::StudyHead::of(bundle, bytes).to_json();
    write_atomic(&head_path, head.as_bytes())?;
    eprintln!(
        "wrote {} ({:.1} kB): publish it beside the bundle; the page shows the study and its published verdict from it before the bundle has arrived",
        head_path.display(),
        head.len() as f64 / 1e3
    );
    Ok(())
}

pub fn parse_methods(s: &str) -> Result<Vec<Method>> {
    s.split(',')
        .map(|x| Method::parse(x).with_context(|| format!("unknown method `{x}`; use A, B or A,B")))
        .collect()
}
