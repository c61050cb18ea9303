//! Every figure of the project, drawn by one module on any plotters backend: the page draws on a
//! canvas (plotters-canvas), `analyze --figures` and the page's "SVG" button write SVG through
//! [`Figure::to_svg`]. So the write-up figure and the page are the same picture.
//!
//! A figure is plain data (serialisable, also exported as CSV/JSON); drawing returns hit boxes
//! in backend pixels for hover read-outs.

use crate::analysis::{Family, Report};
use crate::bundle::Method;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Figure {
    pub title: String,
    /// What is shown, with n, N, seed and the p floor.
    pub caption: String,
    pub kind: FigureKind,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum FigureKind {
    /// Rows = methods, columns = layers; in each panel one bar per series (Base / EM / Benign)
    /// with an optional 95% interval.
    Hero {
        metric: String,
        methods: Vec<String>,
        layers: Vec<u32>,
        series: Vec<String>,
        /// [method][layer][series]; NaN = not computed yet.
        values: Vec<Vec<Vec<f64>>>,
        intervals: Vec<Vec<Vec<Option<[f64; 2]>>>>,
    },
    /// A square matrix over `labels` (row-major).
    Heatmap {
        labels: Vec<String>,
        values: Vec<f64>,
        /// Symmetric colour scale around 0 (for Δ) instead of [-1, 1] cosine colours.
        diverging: bool,
    },
    /// Grouped bars per persona: one bar per series.
    PersonaBars {
        personas: Vec<String>,
        series: Vec<String>,
        /// [series][persona]
        values: Vec<Vec<f64>>,
        y_label: String,
        /// Colour index of each series (its checkpoint's, as in the hero); empty = 1, 2, ...
        #[serde(default)]
        colours: Vec<usize>,
    },
    /// A permutation null with the observed statistic.
    NullHistogram {
        null: Vec<f64>,
        observed: f64,
        x_label: String,
    },
}

/// A region of the drawn figure and what hovering it reads out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HitBox {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
    pub text: String,
}

impl HitBox {
    fn new(a: (i32, i32), b: (i32, i32), text: String) -> HitBox {
        HitBox {
            x0: a.0.min(b.0),
            y0: a.1.min(b.1),
            x1: a.0.max(b.0),
            y1: a.1.max(b.1),
            text,
        }
    }
    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

/// One colour per checkpoint in every figure (index = position in `checkpoint_colour_order`):
/// base grey, then the Okabe–Ito colours (distinguishable with every common colour-vision
/// deficiency): vermillion, blue, bluish green, orange, reddish purple.
const SERIES_COLOURS: [RGBColor; 6] = [
    RGBColor(102, 102, 102),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
];

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

fn series_colour(i: usize) -> RGBColor {
    SERIES_COLOURS[i % SERIES_COLOURS.len()]
}

/// Blue (-1) - white (0) - red (+1).
fn diverging_colour(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let mix = |a: u8, b: u8, w: f64| (a as f64 + (b as f64 - a as f64) * w).round() as u8;
    if t >= 0.0 {
        RGBColor(mix(255, 180, t), mix(255, 20, t), mix(255, 30, t))
    } else {
        RGBColor(mix(255, 30, -t), mix(255, 70, -t), mix(255, 180, -t))
    }
}

fn finite_range(vals: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (lo - pad, hi + pad)
}

/// Axis tick label with three decimals ("0.000", never "-0.000").
fn tick(v: f64) -> String {
    let s = format!("{v:.3}");
    if s == "-0.000" {
        "0.000".into()
    } else {
        s
    }
}

/// A number as the figures and the page show it: 4 decimals, scientific outside [1e-3, 1e4).
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

type DrawResult<T> = Result<T, String>;

/// A row of colour swatches and names; series `i` gets colour `colours[i]`.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[String],
    spacing: i32,
    colours: &[usize],
) -> DrawResult<()> {
    for (si, s) in series.iter().enumerate() {
        let x = 10 + si as i32 * spacing;
        area.draw(&Rectangle::new(
            [(x, 5), (x + 14, 17)],
            series_colour(colours[si]).filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(s.clone(), (x + 18, 4), ("sans-serif", 13)))
            .map_err(err)?;
    }
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing failed: {e:?}")
}

/// Height of the rotated persona labels under a bar chart: room for the longest name at 11 px
/// (layout from the name's length, never from measured text: the page and the SVG writer must
/// draw the same picture).
fn persona_label_area(personas: &[String]) -> u32 {
    let longest = personas
        .iter()
        .map(|p| p.chars().count())
        .max()
        .unwrap_or(0);
    ((longest as f64 * 6.6 + 14.0).ceil() as u32).clamp(40, 200)
}

impl Figure {
    /// Pixel size of the figure, the same on the page and in `analyze --figures`.
    pub fn size(&self) -> (u32, u32) {
        match &self.kind {
            FigureKind::Hero { layers, .. } => (60 + 190 * layers.len().max(1) as u32, 520),
            FigureKind::Heatmap { labels, .. } => {
                let la = persona_label_area(labels);
                (400 + la, 360 + la)
            }
            FigureKind::PersonaBars { personas, .. } => (700, 290 + persona_label_area(personas)),
            FigureKind::NullHistogram { .. } => (470, 300),
        }
    }

    /// File name stem derived from the title (the page's download name): ASCII only, Δ spelled
    /// "delta" and α "alpha" (other symbols become separators), so that names survive every
    /// file system and shell.
    pub fn file_stem(&self) -> String {
        let mut s = String::with_capacity(self.title.len());
        for c in self.title.chars() {
            match c {
                'Δ' => s.push_str("-delta-"),
                'α' => s.push_str("-alpha-"),
                c if c.is_ascii_alphanumeric() => s.push(c.to_ascii_lowercase()),
                _ => s.push('-'),
            }
        }
        s.split('-')
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Draws on `root` (already sized); returns hit boxes in backend pixels.
    pub fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> DrawResult<Vec<HitBox>> {
        root.fill(&WHITE).map_err(err)?;
        let (title_area, body) = root.split_vertically(28);
        title_area
            .titled(&self.title, ("sans-serif", 17).into_font())
            .map_err(err)?;
        let mut hits = Vec::new();
        match &self.kind {
            FigureKind::Hero {
                metric,
                methods,
                layers,
                series,
                values,
                intervals,
            } => {
                let (lo, hi) = finite_range(
                    values.iter().flatten().flatten().copied().chain(
                        intervals
                            .iter()
                            .flatten()
                            .flatten()
                            .flatten()
                            .flat_map(|i| [i[0], i[1]]),
                    ),
                    false,
                );
                let (legend, grid) = body.split_vertically(22);
                let colours: Vec<usize> = (0..series.len()).collect();
                draw_legend(&legend, series, 110, &colours)?;
                let panels = grid.split_evenly((methods.len().max(1), layers.len().max(1)));
                for (mi, m) in methods.iter().enumerate() {
                    for (li, l) in layers.iter().enumerate() {
                        let area = &panels[mi * layers.len() + li];
                        // Panel title at a fixed offset: plotters' `caption` sizes the plot by
                        // the measured text height, which differs between the browser's fonts
                        // and the SVG writer's estimate; the page and the CLI must agree.
                        let (title, area) = area.split_vertically(18);
                        title
                            .draw(&Text::new(
                                format!("Method {m}, layer {l}"),
                                (title.dim_in_pixel().0 as i32 / 2, 3),
                                TextStyle::from(("sans-serif", 13).into_font())
                                    .pos(Pos::new(HPos::Center, VPos::Top)),
                            ))
                            .map_err(err)?;
                        let mut chart = ChartBuilder::on(&area)
                            .margin(4)
                            .x_label_area_size(18)
                            .y_label_area_size(if li == 0 { 52 } else { 40 })
                            .build_cartesian_2d((0..series.len()).into_segmented(), lo..hi)
                            .map_err(err)?;
                        chart
                            .configure_mesh()
                            .disable_x_mesh()
                            .x_labels(series.len())
                            .x_label_formatter(&|v| match v {
                                SegmentValue::CenterOf(i) => {
                                    series.get(*i).cloned().unwrap_or_default()
                                }
                                _ => String::new(),
                            })
                            .y_labels(5)
                            .y_label_formatter(&|v| tick(*v))
                            .y_desc(if li == 0 { metric.as_str() } else { "" })
                            .label_style(("sans-serif", 11))
                            .draw()
                            .map_err(err)?;
                        let base_y = if lo <= 0.0 && hi >= 0.0 { 0.0 } else { lo };
                        // A (method, layer) whose tests have not finished says so: an empty
                        // panel would read as "no effect".
                        if values[mi][li].iter().all(|v| !v.is_finite()) {
                            let (w, h) = area.dim_in_pixel();
                            area.draw(&Text::new(
                                "not computed yet",
                                (w as i32 / 2, h as i32 / 2),
                                TextStyle::from(("sans-serif", 12).into_font())
                                    .color(&RGBColor(90, 90, 90))
                                    .pos(Pos::new(HPos::Center, VPos::Center)),
                            ))
                            .map_err(err)?;
                        }
                        for si in 0..series.len() {
                            let v = values[mi][li][si];
                            if !v.is_finite() {
                                continue;
                            }
                            let mut bar = Rectangle::new(
                                [
                                    (SegmentValue::Exact(si), base_y),
                                    (SegmentValue::Exact(si + 1), v),
                                ],
                                series_colour(si).mix(0.85).filled(),
                            );
                            bar.set_margin(0, 0, 6, 6);
                            chart.draw_series(std::iter::once(bar)).map_err(err)?;
                            let mut text = format!(
                                "Method {m}, layer {l}, {}: {metric} = {}",
                                series[si],
                                fmt(v)
                            );
                            if let Some([a, b]) = intervals[mi][li][si] {
                                let c = SegmentValue::CenterOf(si);
                                chart
                                    .draw_series(std::iter::once(PathElement::new(
                                        vec![(c.clone(), a), (c, b)],
                                        BLACK.stroke_width(2),
                                    )))
                                    .map_err(err)?;
                                text += &format!(" (95% CI {} to {})", fmt(a), fmt(b));
                            }
                            hits.push(HitBox::new(
                                chart.backend_coord(&(SegmentValue::Exact(si), base_y)),
                                chart.backend_coord(&(SegmentValue::Exact(si + 1), v)),
                                text,
                            ));
                        }
                    }
                }
            }
            FigureKind::Heatmap {
                labels,
                values,
                diverging,
            } => {
                let n = labels.len();
                // Colour scale fit to the data and stated on the bar: Δ symmetric around 0
                // (±max|Δ|); cosines from the smallest to the largest off-diagonal value (a
                // fixed ±1 scale paints every raw-cosine matrix solid red).
                let (lo, hi) = if *diverging {
                    let m = values
                        .iter()
                        .filter(|v| v.is_finite())
                        .fold(1e-12f64, |a, v| a.max(v.abs()));
                    (-m, m)
                } else {
                    let off = (0..n * n)
                        .filter(|k| k / n != k % n)
                        .map(|k| values[k])
                        .filter(|v| v.is_finite());
                    let (a, b) = off.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                        (a.min(v), b.max(v))
                    });
                    if a.is_finite() && b > a {
                        (a, b)
                    } else {
                        (-1.0, 1.0)
                    }
                };
                let t_of = |v: f64| 2.0 * (v - lo) / (hi - lo) - 1.0;
                let la = persona_label_area(labels) as i32;
                let (plot, bar) = body.split_horizontally(body.dim_in_pixel().0.saturating_sub(80));
                let (pw, ph) = plot.dim_in_pixel();
                // The cell grid: square cells, names left of the rows and under the columns.
                let side = ((pw as i32 - la - 8).min(ph as i32 - la - 8)).max(n as i32);
                let cell = side / n.max(1) as i32;
                let (gx, gy) = (la, 6);
                for i in 0..n {
                    for j in 0..n {
                        let v = values[i * n + j];
                        let (x0, y0) = (gx + j as i32 * cell, gy + i as i32 * cell);
                        let (x1, y1) = (x0 + cell, y0 + cell);
                        plot.draw(&Rectangle::new(
                            [(x0, y0), (x1, y1)],
                            diverging_colour(t_of(v)).filled(),
                        ))
                        .map_err(err)?;
                        let base = plot.get_base_pixel();
                        hits.push(HitBox::new(
                            (x0 + base.0, y0 + base.1),
                            (x1 + base.0, y1 + base.1),
                            format!("{} x {}: {}", labels[i], labels[j], fmt(v)),
                        ));
                    }
                }
                let right = ("sans-serif", 11)
                    .into_font()
                    .into_text_style(&plot)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                let down = ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate90)
                    .into_text_style(&plot)
                    .pos(Pos::new(HPos::Left, VPos::Center));
                for (k, name) in labels.iter().enumerate() {
                    let mid = k as i32 * cell + cell / 2;
                    plot.draw(&Text::new(name.clone(), (gx - 4, gy + mid), right.clone()))
                        .map_err(err)?;
                    plot.draw(&Text::new(
                        name.clone(),
                        (gx + mid, gy + n as i32 * cell + 4),
                        down.clone(),
                    ))
                    .map_err(err)?;
                }
                // Colour bar with the scale's ends and middle.
                let (_, h) = bar.dim_in_pixel();
                let (top, bottom) = (20i32, (h as i32 - la).max(60));
                for k in 0..=40 {
                    let t = 1.0 - 2.0 * k as f64 / 40.0;
                    let y = top + (bottom - top) * k / 40;
                    bar.draw(&Rectangle::new(
                        [(10, y), (26, y + (bottom - top) / 40 + 1)],
                        diverging_colour(t).filled(),
                    ))
                    .map_err(err)?;
                }
                for (v, y) in [
                    (hi, top),
                    ((lo + hi) / 2.0, (top + bottom) / 2),
                    (lo, bottom),
                ] {
                    bar.draw(&Text::new(fmt(v), (30, y - 6), ("sans-serif", 11)))
                        .map_err(err)?;
                }
            }
            FigureKind::PersonaBars {
                personas,
                series,
                values,
                y_label,
                colours,
            } => {
                let colours: Vec<usize> = if colours.len() == series.len() {
                    colours.clone()
                } else {
                    (1..=series.len()).collect()
                };
                let g = series.len() + 1;
                let n = personas.len() * g;
                let (lo, hi) = finite_range(values.iter().flatten().copied(), true);
                let (legend, plot) = body.split_vertically(22);
                draw_legend(&legend, series, 150, &colours)?;
                let mut chart = ChartBuilder::on(&plot)
                    .margin(6)
                    .x_label_area_size(persona_label_area(personas))
                    .y_label_area_size(60)
                    .build_cartesian_2d((0..n).into_segmented(), lo..hi)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    // The common style first: `label_style` after `x_label_style` would drop the
                    // rotation (names then overlap side by side).
                    .label_style(("sans-serif", 11))
                    // Persona names are drawn below (plotters centres rotated tick labels on
                    // their tick, so long names would run up into the bars). (`x_labels(0)`
                    // makes plotters loop forever: keep the ticks, blank their text.)
                    .x_labels(n)
                    .x_label_formatter(&|_| String::new())
                    .y_desc(y_label.as_str())
                    .y_label_formatter(&|v| tick(*v))
                    .draw()
                    .map_err(err)?;
                // Each name starts just under the axis, centred on its group of bars, and runs
                // down (rotated 90°, anchored at its start).
                let base = plot.get_base_pixel();
                let name_style = ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate90)
                    .into_text_style(&plot)
                    .pos(Pos::new(HPos::Left, VPos::Center));
                let (_, axis_y) = chart.backend_coord(&(SegmentValue::Exact(0), lo));
                for (pi, p) in personas.iter().enumerate() {
                    let (x0, _) = chart.backend_coord(&(SegmentValue::Exact(pi * g), lo));
                    let (x1, _) =
                        chart.backend_coord(&(SegmentValue::Exact(pi * g + series.len()), lo));
                    plot.draw(&Text::new(
                        p.clone(),
                        ((x0 + x1) / 2 - base.0, axis_y + 6 - base.1),
                        name_style.clone(),
                    ))
                    .map_err(err)?;
                }
                for (pi, p) in personas.iter().enumerate() {
                    for (si, s) in series.iter().enumerate() {
                        let v = values[si][pi];
                        if !v.is_finite() {
                            continue;
                        }
                        let x = pi * g + si;
                        let a = (SegmentValue::Exact(x), 0.0);
                        let b = (SegmentValue::Exact(x + 1), v);
                        chart
                            .draw_series(std::iter::once(Rectangle::new(
                                [a.clone(), b.clone()],
                                series_colour(colours[si]).mix(0.85).filled(),
                            )))
                            .map_err(err)?;
                        hits.push(HitBox::new(
                            chart.backend_coord(&a),
                            chart.backend_coord(&b),
                            format!("{p}, {s}: {y_label} = {}", fmt(v)),
                        ));
                    }
                }
            }
            FigureKind::NullHistogram {
                null,
                observed,
                x_label,
            } => {
                let (lo, hi) = finite_range(null.iter().copied().chain([*observed]), false);
                let bins = 40usize;
                let w = (hi - lo) / bins as f64;
                let mut counts = vec![0usize; bins];
                for v in null.iter().filter(|v| v.is_finite()) {
                    counts[(((v - lo) / w) as usize).min(bins - 1)] += 1;
                }
                let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
                let mut chart = ChartBuilder::on(&body)
                    .margin(8)
                    .x_label_area_size(36)
                    .y_label_area_size(56)
                    .build_cartesian_2d(lo..hi, 0.0..top)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_desc(x_label.as_str())
                    .y_desc("permutations")
                    .x_label_formatter(&|v| fmt(*v))
                    .label_style(("sans-serif", 11))
                    .draw()
                    .map_err(err)?;
                for (b, &c) in counts.iter().enumerate() {
                    let (x0, x1) = (lo + b as f64 * w, lo + (b + 1) as f64 * w);
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, 0.0), (x1, c as f64)],
                            series_colour(0).mix(0.7).filled(),
                        )))
                        .map_err(err)?;
                    hits.push(HitBox::new(
                        chart.backend_coord(&(x0, 0.0)),
                        chart.backend_coord(&(x1, top)),
                        format!(
                            "null {} to {}: {c} of {} permutations",
                            fmt(x0),
                            fmt(x1),
                            null.len()
                        ),
                    ));
                }
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(*observed, 0.0), (*observed, top)],
                        series_colour(1).stroke_width(3),
                    )))
                    .map_err(err)?;
                let (ox, _) = chart.backend_coord(&(*observed, 0.0));
                let (_, ytop) = chart.backend_coord(&(*observed, top));
                let (_, ybot) = chart.backend_coord(&(*observed, 0.0));
                hits.insert(
                    0,
                    HitBox::new(
                        (ox - 3, ytop),
                        (ox + 3, ybot),
                        format!("observed: {}", fmt(*observed)),
                    ),
                );
            }
        }
        root.present().map_err(err)?;
        Ok(hits)
    }

    /// The figure as an SVG document of `w` x `h` pixels.
    pub fn to_svg(&self, w: u32, h: u32) -> DrawResult<String> {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
            self.draw(&root)?;
        }
        // The caption travels inside the file (a figure pasted into a write-up keeps its n, N,
        // seed and tool version): <title> and <desc> right after the opening tag.
        if let Some(end) = s.find('>') {
            let meta = format!(
                "\n<title>{}</title>\n<desc>{} Made by persona-geometry {}.</desc>",
                xml_escape(&self.title),
                xml_escape(&self.caption),
                crate::TOOL_VERSION
            );
            s.insert_str(end + 1, &meta);
        }
        Ok(s)
    }

    /// The numbers behind the figure, one row per drawn value.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        match &self.kind {
            FigureKind::Hero {
                metric,
                methods,
                layers,
                series,
                values,
                intervals,
            } => {
                out += "metric,method,layer,series,value,ci95_low,ci95_high\n";
                for (mi, m) in methods.iter().enumerate() {
                    for (li, l) in layers.iter().enumerate() {
                        for (si, s) in series.iter().enumerate() {
                            let (a, b) = intervals[mi][li][si]
                                .map(|[a, b]| (a.to_string(), b.to_string()))
                                .unwrap_or_default();
                            out +=
                                &format!("{metric},{m},{l},{s},{},{a},{b}\n", values[mi][li][si]);
                        }
                    }
                }
            }
            FigureKind::Heatmap { labels, values, .. } => {
                out += "row,column,value\n";
                let n = labels.len();
                for i in 0..n {
                    for j in 0..n {
                        out += &format!("{},{},{}\n", labels[i], labels[j], values[i * n + j]);
                    }
                }
            }
            FigureKind::PersonaBars {
                personas,
                series,
                values,
                y_label,
                ..
            } => {
                out += &format!("persona,series,{}\n", y_label.replace(',', ";"));
                for (pi, p) in personas.iter().enumerate() {
                    for (si, s) in series.iter().enumerate() {
                        out += &format!("{p},{s},{}\n", values[si][pi]);
                    }
                }
            }
            FigureKind::NullHistogram { null, observed, .. } => {
                out += "kind,value\n";
                out += &format!("observed,{observed}\n");
                for v in null {
                    out += &format!("null,{v}\n");
                }
            }
        }
        out
    }
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

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_heatmap_scale_fits_the_off_diagonal_values() {
        // Raw cosines between 0.90 and 0.95 (diagonal 1): the scale runs 0.90 to 0.95, stated
        // on the bar, so the smallest cell is the bar's bottom colour, not a near-white red.
        let v = [1.0, 0.90, 0.93, 0.90, 1.0, 0.95, 0.93, 0.95, 1.0];
        let f = Figure {
            title: "t".into(),
            caption: "c".into(),
            kind: FigureKind::Heatmap {
                labels: vec!["a".into(), "b".into(), "c".into()],
                values: v.to_vec(),
                diverging: false,
            },
        };
        let (w, h) = f.size();
        let svg = f.to_svg(w, h).unwrap();
        let hex = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        let cells: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<rect"))
            .take(10)
            .collect();
        // cells[0] is the background; then row by row: (0,1) = 0.90 the smallest, (1,2) =
        // 0.95 the largest.
        assert!(
            cells[2].contains(&hex(diverging_colour(-1.0))),
            "{}",
            cells[2]
        );
        assert!(
            cells[6].contains(&hex(diverging_colour(1.0))),
            "{}",
            cells[6]
        );
        assert!(svg.contains("\n0.9000\n") && svg.contains("\n0.9500\n"));
    }

    #[test]
    fn hero_panels_not_computed_say_so() {
        let f = |second: f64| Figure {
            title: "hero".into(),
            caption: String::new(),
            kind: FigureKind::Hero {
                metric: "M1_raw".into(),
                methods: vec!["A".into()],
                layers: vec![3, 5],
                series: vec!["base".into(), "em".into()],
                values: vec![vec![vec![0.5, 0.6], vec![second, second]]],
                intervals: vec![vec![vec![None, None], vec![None, None]]],
            },
        };
        let svg = |fig: Figure| {
            let (w, h) = fig.size();
            fig.to_svg(w, h).unwrap()
        };
        assert_eq!(svg(f(f64::NAN)).matches("not computed yet").count(), 1);
        assert!(!svg(f(0.7)).contains("not computed yet"));
    }

    #[test]
    fn svg_carries_title_and_caption() {
        let f = Figure {
            title: "Δ cosines <raw> & more".into(),
            caption: "n = 240 paired questions, N = 10000 permutations, seed 0.".into(),
            kind: FigureKind::Heatmap {
                labels: vec!["a".into(), "b".into()],
                values: vec![1.0, 0.2, 0.2, 1.0],
                diverging: false,
            },
        };
        let svg = f.to_svg(300, 200).unwrap();
        let head: Vec<&str> = svg.lines().take(3).collect();
        assert!(head[0].starts_with("<svg"));
        assert_eq!(head[1], "<title>Δ cosines &lt;raw&gt; &amp; more</title>");
        assert_eq!(
            head[2],
            format!(
                "<desc>n = 240 paired questions, N = 10000 permutations, seed 0. Made by persona-geometry {}.</desc>",
                crate::TOOL_VERSION
            )
        );
    }

    #[test]
    fn file_stems_are_ascii_and_carry_metric_method_and_layer() {
        let f = |title: &str| Figure {
            title: title.into(),
            caption: String::new(),
            kind: FigureKind::Heatmap {
                labels: vec![],
                values: vec![],
                diverging: false,
            },
        };
        assert_eq!(
            f("null of Δ M1_raw, em − base, A/L14: p = 0.0010").file_stem(),
            "null-of-delta-m1-raw-em-base-a-l14-p-0-0010"
        );
        assert_eq!(f("α = 0.05 · ratio").file_stem(), "alpha-0-05-ratio");
        assert!(f("Δ cosines (raw), em − base, method B, layer 7")
            .file_stem()
            .is_ascii());
    }

    #[test]
    fn svg_of_a_heatmap_has_one_rect_per_cell_and_hits_cover_cells() {
        let f = Figure {
            title: "t".into(),
            caption: "c".into(),
            kind: FigureKind::Heatmap {
                labels: vec!["a".into(), "b".into(), "c".into()],
                values: vec![1.0, 0.5, -0.5, 0.5, 1.0, 0.0, -0.5, 0.0, 1.0],
                diverging: false,
            },
        };
        let svg = f.to_svg(500, 400).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // The (0, 2) cell is -0.5: a blue-ish fill.
        let c = diverging_colour(-0.5);
        assert!(
            svg.contains(&format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)),
            "{svg}"
        );
        let mut s = String::new();
        let hits = {
            let root = SVGBackend::with_string(&mut s, (500, 400)).into_drawing_area();
            f.draw(&root).unwrap()
        };
        assert_eq!(hits.len(), 9);
        // Row 0 is drawn above row 2; columns left to right.
        assert!(hits[0].y0 < hits[6].y0 && hits[0].x0 < hits[2].x0);
        assert!(hits[2].text.contains("a x c") && hits[2].text.contains("-0.5"));
        assert_eq!(f.to_csv().lines().count(), 10);
    }

    #[test]
    fn null_histogram_counts_every_permutation() {
        let null: Vec<f64> = (0..1000).map(|i| (i as f64 / 1000.0) - 0.5).collect();
        let f = Figure {
            title: "t".into(),
            caption: "c".into(),
            kind: FigureKind::NullHistogram {
                null,
                observed: 0.7,
                x_label: "Δ".into(),
            },
        };
        let mut s = String::new();
        let hits = {
            let root = SVGBackend::with_string(&mut s, (600, 300)).into_drawing_area();
            f.draw(&root).unwrap()
        };
        let total: usize = hits[1..]
            .iter()
            .map(|h| {
                h.text
                    .split(": ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 1000);
        assert!(hits[0].text.contains("observed: 0.7"));
    }
}
