//! Every figure of the project, drawn by one module on any plotters backend: the page draws on a
//! canvas (plotters-canvas), `analyze --figures` and the page's "SVG" button write SVG through
//! [`Figure::to_svg`]. So the write-up figure and the page are the same picture.
//!
//! A figure is plain data (serialisable, also exported as CSV/JSON); drawing returns hit boxes
//! in backend pixels for hover read-outs.
//!
//! Layout: this module holds the figure types, their size, names, SVG and CSV forms and the
//! palette; `draw` turns a figure into pixels; `from_report` builds the figures of a report.

mod draw;
use draw::persona_label_area;
mod from_report;
pub use from_report::*;
mod nulls;
pub use nulls::null_figures;

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
    /// One line of y over x (a training loss per optimizer step).
    Curve {
        x: Vec<f64>,
        y: Vec<f64>,
        x_label: String,
        y_label: String,
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
            FigureKind::Curve { .. } => (560, 320),
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
            FigureKind::Curve {
                x,
                y,
                x_label,
                y_label,
            } => {
                out += &format!("{x_label},{y_label}\n");
                for (a, b) in x.iter().zip(y) {
                    out += &format!("{a},{b}\n");
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

    /// The series fill their panel: no empty segment after the last bar (plotters' segmented
    /// coordinate over 0..n has n + 1 segments).
    #[test]
    fn hero_bars_fill_their_panel() {
        let f = Figure {
            title: "hero".into(),
            caption: String::new(),
            kind: FigureKind::Hero {
                metric: "M1_raw".into(),
                methods: vec!["A".into()],
                layers: vec![3],
                series: vec!["base".into(), "em".into(), "benign".into()],
                values: vec![vec![vec![0.5, 0.6, 0.55]]],
                intervals: vec![vec![vec![None, None, None]]],
            },
        };
        let (w, h) = f.size();
        let mut s = String::new();
        let hits = {
            let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
            f.draw(&root).unwrap()
        };
        assert_eq!(hits.len(), 3);
        let width = |i: usize| (hits[i].x1 - hits[i].x0) as f64;
        // Equal segments, and the last one ends at the plot's right edge (panel margin 4 px).
        assert!((width(0) - width(2)).abs() <= 1.0);
        let right_gap = w as i32 - hits[2].x1.max(hits[2].x0);
        assert!(
            (right_gap as f64) < 0.5 * width(2),
            "an empty segment of {right_gap} px after the last bar"
        );
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
        // The (0, 2) cell is -0.5, the smallest off-diagonal value: the bottom (blue) end of
        // the fitted scale. Rects: the background, then the cells row by row.
        let c = diverging_colour(-1.0);
        let cell_02 = svg
            .lines()
            .filter(|l| l.starts_with("<rect"))
            .nth(3)
            .unwrap();
        assert!(
            cell_02.contains(&format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)),
            "{cell_02}"
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
    fn curve_points_run_left_to_right_and_low_to_high() {
        let f = Figure {
            title: "Training loss".into(),
            caption: "c".into(),
            kind: FigureKind::Curve {
                x: vec![1.0, 2.0, 3.0],
                y: vec![3.0, 1.0, 2.0],
                x_label: "step".into(),
                y_label: "loss".into(),
            },
        };
        let mut s = String::new();
        let hits = {
            let root = SVGBackend::with_string(&mut s, (560, 320)).into_drawing_area();
            f.draw(&root).unwrap()
        };
        assert_eq!(hits.len(), 3);
        assert!(hits[0].x0 < hits[1].x0 && hits[1].x0 < hits[2].x0);
        // Screen y grows downwards: the highest loss (step 1) is drawn highest.
        assert!(hits[0].y0 < hits[2].y0 && hits[2].y0 < hits[1].y0);
        assert_eq!(hits[1].text, "step 2: loss 1.0000");
        assert_eq!(f.to_csv(), "step,loss\n1,3\n2,1\n3,2\n");
        let svg = f.to_svg(560, 320).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("<title>Training loss</title>"));
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
