//! Drawing a [`Figure`] on any plotters backend (the page's canvas, the SVG writer). Layout
//! never depends on measured text: the page and `analyze --figures` draw the same picture.

use super::*;

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
pub(super) fn persona_label_area(personas: &[String]) -> u32 {
    let longest = personas
        .iter()
        .map(|p| p.chars().count())
        .max()
        .unwrap_or(0);
    ((longest as f64 * 6.6 + 14.0).ceil() as u32).clamp(40, 200)
}

impl Figure {
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
                            // Segmented 0..k has k + 1 segments: 0..n−1 gives one per series
                            // (0..n left an empty segment after the last bar).
                            .build_cartesian_2d(
                                (0..series.len().saturating_sub(1)).into_segmented(),
                                lo..hi,
                            )
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
            FigureKind::Curve {
                x,
                y,
                x_label,
                y_label,
            } => {
                let (x0, x1) = finite_range(x.iter().copied(), false);
                let (y0, y1) = finite_range(y.iter().copied(), false);
                let mut chart = ChartBuilder::on(&body)
                    .margin(10)
                    .x_label_area_size(36)
                    .y_label_area_size(56)
                    .build_cartesian_2d(x0..x1, y0..y1)
                    .map_err(err)?;
                // Whole steps print as integers; the loss with three decimals; no minor grid.
                let x_text = |v: f64| {
                    if v.fract() == 0.0 {
                        format!("{v:.0}")
                    } else {
                        fmt(v)
                    }
                };
                chart
                    .configure_mesh()
                    .light_line_style(TRANSPARENT)
                    .x_desc(x_label.as_str())
                    .y_desc(y_label.as_str())
                    .x_label_formatter(&|v| x_text(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .label_style(("sans-serif", 11))
                    .draw()
                    .map_err(err)?;
                let points: Vec<(f64, f64)> = x
                    .iter()
                    .zip(y)
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .map(|(&a, &b)| (a, b))
                    .collect();
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        points.clone(),
                        series_colour(1).stroke_width(2),
                    )))
                    .map_err(err)?;
                for &(a, b) in &points {
                    let (px, py) = chart.backend_coord(&(a, b));
                    hits.push(HitBox::new(
                        (px - 3, py - 3),
                        (px + 3, py + 3),
                        format!("{x_label} {}: {y_label} {}", x_text(a), fmt(b)),
                    ));
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
                // The last x tick label is centred on the right edge: room for half of it.
                let mut chart = ChartBuilder::on(&body)
                    .margin(8)
                    .margin_right(32)
                    .x_label_area_size(36)
                    .y_label_area_size(56)
                    .build_cartesian_2d(lo..hi, 0.0..top)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_desc(x_label.as_str())
                    .y_desc("permutations")
                    // Five ticks: scientific labels ("-8.000e-5") need ~55 px each; a tick
                    // within rounding of zero ("-1.110e-16") is zero.
                    .x_labels(5)
                    .x_label_formatter(&|v| fmt(if v.abs() < (hi - lo) * 1e-9 { 0.0 } else { *v }))
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
}
