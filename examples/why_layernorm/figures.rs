//! The report's SVG figures, drawn with plotters from the measurements (no font rasterizer:
//! plotters' SVG backend writes text as SVG `<text>` for the viewer to render).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::experiments::{BatchDependence, Cost, Grid, Norm, PaddingPoint, TrainEvalGap};
use crate::Res;

const FONT: &str = "sans-serif";
/// One colour per series (batch sizes, norms), colour-blind-safe (Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn text(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

fn draw_text(area: &Area, s: &str, at: (i32, i32), style: &TextStyle) -> Res<()> {
    area.draw(&Text::new(s.to_string(), at, style.clone()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figure 1: the five cubes, one per norm, from the perturbation measurement.

/// Draws one panel per norm: an `[N, C, H*W]` box (N across, C in depth, H x W up) with the
/// cells whose output changed drawn as shaded cubes and the perturbed cell in red.
pub fn sharing(
    path: &Path,
    g: Grid,
    at: (usize, usize, usize),
    sets: &[(Norm, Vec<bool>)],
) -> Res<()> {
    let root = SVGBackend::new(path, (250 * sets.len() as u32, 300)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (kind, set)) in root.split_evenly((1, sets.len())).iter().zip(sets) {
        cube(area, g, at, *kind, set)?;
    }
    root.present()?;
    Ok(())
}

fn cube(area: &Area, g: Grid, at: (usize, usize, usize), kind: Norm, set: &[bool]) -> Res<()> {
    let (w, _) = area.dim_in_pixel();
    let (cw, ch, dx, dy) = (30i32, 22i32, 13i32, 9i32);
    let (gn, gc, gh) = (g.n as i32, g.c as i32, g.hw as i32);
    // Room on the left for the H,W label.
    let ox = 40 + (w as i32 - 40 - (gn * cw + gc * dx)) / 2;
    let oy = 70 + gc * dy + gh * ch;
    let p = |n: i32, c: i32, v: i32| (ox + n * cw + c * dx, oy - v * ch - c * dy);
    let quad = |a, b, c, d| vec![a, b, c, d];

    draw_text(
        area,
        &kind.name(),
        (w as i32 / 2, 14),
        &text(16, HPos::Center, VPos::Top),
    )?;
    let sub = format!(
        "{} of {} outputs changed",
        set.iter().filter(|&&b| b).count(),
        set.len()
    );
    draw_text(
        area,
        &sub,
        (w as i32 / 2, 36),
        &text(12, HPos::Center, VPos::Top),
    )?;

    // The box: the three edges at the hidden back-bottom-left corner first, faint.
    let edges = [
        ((0, gc, 0), (gn, gc, 0), true),
        ((0, gc, 0), (0, gc, gh), true),
        ((0, gc, 0), (0, 0, 0), true),
        ((0, 0, 0), (gn, 0, 0), false),
        ((0, 0, 0), (0, 0, gh), false),
        ((gn, 0, 0), (gn, 0, gh), false),
        ((0, 0, gh), (gn, 0, gh), false),
        ((gn, 0, 0), (gn, gc, 0), false),
        ((gn, gc, 0), (gn, gc, gh), false),
        ((0, 0, gh), (0, gc, gh), false),
        ((gn, 0, gh), (gn, gc, gh), false),
        ((0, gc, gh), (gn, gc, gh), false),
    ];
    let edge = |(a, b): ((i32, i32, i32), (i32, i32, i32)), style: ShapeStyle| {
        PathElement::new(vec![p(a.0, a.1, a.2), p(b.0, b.1, b.2)], style)
    };
    let faint = RGBColor(190, 190, 190).stroke_width(1);
    let dark = RGBColor(60, 60, 60).stroke_width(1);
    for (a, b, _) in edges.iter().filter(|e| e.2) {
        area.draw(&edge((*a, *b), faint))?;
    }

    // Shaded cells, back (large c) to front, left to right, bottom to top: painter's order.
    for c in (0..g.c).rev() {
        for n in 0..g.n {
            for s in 0..g.hw {
                if !set[g.index(n, c, s)] {
                    continue;
                }
                let (front, top, side) = if (n, c, s) == at {
                    (
                        RGBColor(214, 39, 40),
                        RGBColor(240, 128, 128),
                        RGBColor(160, 20, 20),
                    )
                } else {
                    (
                        RGBColor(86, 150, 214),
                        RGBColor(160, 198, 236),
                        RGBColor(50, 105, 170),
                    )
                };
                let (n, c, v) = (n as i32, c as i32, s as i32);
                let faces = [
                    (
                        quad(
                            p(n, c, v),
                            p(n + 1, c, v),
                            p(n + 1, c, v + 1),
                            p(n, c, v + 1),
                        ),
                        front,
                    ),
                    (
                        quad(
                            p(n, c, v + 1),
                            p(n + 1, c, v + 1),
                            p(n + 1, c + 1, v + 1),
                            p(n, c + 1, v + 1),
                        ),
                        top,
                    ),
                    (
                        quad(
                            p(n + 1, c, v),
                            p(n + 1, c + 1, v),
                            p(n + 1, c + 1, v + 1),
                            p(n + 1, c, v + 1),
                        ),
                        side,
                    ),
                ];
                for (pts, colour) in faces {
                    area.draw(&Polygon::new(pts.clone(), colour.filled()))?;
                    let mut ring = pts;
                    ring.push(ring[0]);
                    area.draw(&PathElement::new(ring, WHITE.mix(0.8).stroke_width(1)))?;
                }
            }
        }
    }
    for (a, b, _) in edges.iter().filter(|e| !e.2) {
        area.draw(&edge((*a, *b), dark))?;
    }

    // Axis names.
    let small = text(13, HPos::Center, VPos::Top);
    let (nx, ny) = p(gn, 0, 0);
    draw_text(area, "N", ((ox + nx) / 2, ny + 6), &small)?;
    let (cx, cy) = p(gn, gc / 2, 0);
    draw_text(
        area,
        "C",
        (cx + 10, cy),
        &text(13, HPos::Left, VPos::Center),
    )?;
    let (hx, hy) = p(0, 0, gh / 2);
    draw_text(
        area,
        "H,W",
        (hx - 6, hy),
        &text(13, HPos::Right, VPos::Center),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Line and scatter charts.

fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Res<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

fn line_legend(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil());
    lo..hi
}

/// Figure 2: BatchNorm's change of one sample's output against the batch size.
pub fn batch_dependence(path: &Path, bd: &BatchDependence) -> Res<()> {
    let root = SVGBackend::new(path, (720, 470)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, note) = root.split_vertically(440);
    let full = *bd.sizes.last().expect("sizes");
    let y = log_range(bd.bn_mean_err.iter().chain(&bd.bn_max_err).copied());
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("One sample's BatchNorm output in a batch of B vs. in the batch of {full}"),
            (FONT, 17),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((1.5f64..(full as f64)).log_scale(), y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("batch size B (log)")
        .y_desc("|change| (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for (i, (name, errs)) in [
        ("BatchNorm, mean |change|", &bd.bn_mean_err),
        ("BatchNorm, max |change|", &bd.bn_max_err),
    ]
    .into_iter()
    .enumerate()
    {
        let colour = PALETTE[i];
        let pts: Vec<(f64, f64)> = bd
            .sizes
            .iter()
            .zip(errs.iter())
            .filter(|(_, &e)| e > 0.0)
            .map(|(&b, &e)| (b as f64, e))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(name)
            .legend(line_legend(colour));
        chart.draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, colour.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    let worst = bd.per_sample_max_diff();
    let per_sample = match worst {
        0.0 => "0 (bitwise) for every B".to_string(),
        w => format!("0 (bitwise) within one kernel, max {w:.1e} across kernels"),
    };
    draw_text(
        &note,
        &format!("LayerNorm, RMSNorm, InstanceNorm, GroupNorm: {per_sample}"),
        (84, 12),
        &text(12, HPos::Left, VPos::Center),
    )?;
    root.present()?;
    Ok(())
}

/// Figure 3: BatchNorm's train/eval gap against training steps, one line per batch size.
pub fn train_eval_gap(path: &Path, gap: &TrainEvalGap) -> Res<()> {
    let root = SVGBackend::new(path, (720, 470)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, note) = root.split_vertically(440);
    let y = log_range(gap.gap.iter().flatten().copied());
    let k_max = *gap.steps.last().expect("steps") as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "BatchNorm: batch statistics vs. running statistics (momentum 0.1)",
            (FONT, 17),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..k_max, y.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("training steps k")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("mean |train - eval output| (log)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for (i, (b, row)) in gap.batch_sizes.iter().zip(&gap.gap).enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = gap
            .steps
            .iter()
            .map(|&k| k as f64)
            .zip(row.iter().copied())
            .collect();
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))?
            .label(format!("batch size {b}"))
            .legend(line_legend(colour));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    draw_text(
        &note,
        "LayerNorm: no running statistics, train and eval are one computation (gap 0)",
        (84, 12),
        &text(12, HPos::Left, VPos::Center),
    )?;
    root.present()?;
    Ok(())
}

/// Figure 4: BatchNorm's error on the real tokens against the padding fraction.
pub fn padding(path: &Path, points: &[(usize, PaddingPoint)]) -> Res<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = points.iter().map(|(_, p)| p.bn_err).fold(0.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Zero padding in [B, T, D]: real tokens' error vs. no padding",
            (FONT, 17),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("padding fraction")
        .y_desc("mean |error| on real tokens")
        .draw()?;
    let mut batches: Vec<usize> = points.iter().map(|(b, _)| *b).collect();
    batches.dedup();
    for (i, b) in batches.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|(pb, _)| pb == b)
                    .map(|(_, p)| Circle::new((p.pad_fraction, p.bn_err), 4, colour.filled())),
            )?
            .label(format!("BatchNorm over (B, T), B = {b}"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    let ln = PALETTE[5];
    chart
        .draw_series(
            points
                .iter()
                .map(|(_, p)| Cross::new((p.pad_fraction, p.ln.max_diff), 4, ln.stroke_width(2))),
        )?
        .label("LayerNorm per token (max |change|)")
        .legend(move |(x, y)| Cross::new((x + 10, y), 4, ln.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figure 5: cost bars.

/// Horizontal bars: each norm's time as a multiple of the copy, per shape.
pub fn cost(path: &Path, tables: &[(&str, Vec<Cost>)]) -> Res<()> {
    let rows: usize = tables.iter().map(|(_, r)| r.len() + 1).sum();
    let (w, row_h, top) = (720i32, 24i32, 40i32);
    let h = top + rows as i32 * row_h + 40;
    let root = SVGBackend::new(path, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_text(
        &root,
        "Time per forward as a multiple of a copy of the same bytes",
        (w / 2, 10),
        &text(17, HPos::Center, VPos::Top),
    )?;
    let max = tables
        .iter()
        .flat_map(|(_, r)| r.iter().map(Cost::ratio))
        .fold(1.0, f64::max);
    let (x0, x1) = (190, w - 70);
    let scale = f64::from(x1 - x0) / max.ceil();
    let xr = |r: f64| x0 + (r * scale) as i32;
    let mut y = top;
    for (i, (name, costs)) in tables.iter().enumerate() {
        draw_text(
            &root,
            name,
            (10, y + row_h / 2),
            &text(13, HPos::Left, VPos::Center),
        )?;
        y += row_h;
        for c in costs {
            draw_text(
                &root,
                &c.label,
                (x0 - 8, y + row_h / 2),
                &text(12, HPos::Right, VPos::Center),
            )?;
            let r = c.ratio();
            root.draw(&Rectangle::new(
                [(x0, y + 4), (xr(r), y + row_h - 4)],
                PALETTE[i].filled(),
            ))?;
            draw_text(
                &root,
                &format!("{r:.2}x"),
                (xr(r) + 6, y + row_h / 2),
                &text(12, HPos::Left, VPos::Center),
            )?;
            y += row_h;
        }
    }
    // The copy line and the axis.
    let axis = RGBColor(60, 60, 60);
    root.draw(&PathElement::new(
        vec![(x0, top + row_h), (x0, y)],
        axis.stroke_width(1),
    ))?;
    root.draw(&PathElement::new(
        vec![(xr(1.0), top + row_h), (xr(1.0), y)],
        RGBColor(200, 0, 0).stroke_width(1),
    ))?;
    draw_text(
        &root,
        "copy = 1x",
        (xr(1.0), y + 6),
        &text(12, HPos::Center, VPos::Top),
    )?;
    root.present()?;
    Ok(())
}
