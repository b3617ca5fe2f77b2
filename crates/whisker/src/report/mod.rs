//! Pictures of a run: training curves, the confusion matrix, and a contact sheet of the top
//! losses (the most confidently wrong images). PNG, written atomically; text in DejaVu Sans
//! (embedded, so nothing depends on the fonts of the machine).

pub mod html;

use std::path::Path;
use std::sync::Once;

use image::{imageops, Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::train::head::EpochStats;
use crate::train::metrics::Metrics;

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Internal(format!("drawing: {e:?}"))
}

/// Viridis (dark blue → green → yellow), `t` in [0, 1]: perceptually even and readable with
/// every common colour-vision deficiency.
pub fn colormap(t: f32) -> Rgb<u8> {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS
        .iter()
        .rposition(|s| s.0 <= t)
        .unwrap_or(0)
        .min(STOPS.len() - 2);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    Rgb([0, 1, 2].map(|k| (a.1[k] + (b.1[k] - a.1[k]) * f).round() as u8))
}

/// Encode an RGB buffer as PNG and write it atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Internal(format!("{}: PNG encoding: {e}", path.display())))?;
    crate::io::write_atomic(path, &bytes)
}

fn render(
    w: u32,
    h: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<RgbImage> {
    fonts();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(root.clone())?;
        root.present().map_err(plot_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::Internal("drawing buffer".into()))
}

/// The points whose coordinates are both finite.
fn finite_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .copied()
        .collect()
}

/// Epochs worth marking on the training curves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurveMarks {
    /// The first epoch with the backbone unfrozen (fine-tuning after frozen epochs).
    pub unfreeze: Option<usize>,
    /// The epoch whose model was kept (lowest validation loss).
    pub best: Option<usize>,
}

impl CurveMarks {
    /// The epoch of the lowest validation loss (else training loss) in `history`.
    pub fn best_of(history: &[EpochStats]) -> Option<usize> {
        history
            .iter()
            .filter_map(|s| {
                let v = s.val_loss.unwrap_or(s.train_loss);
                v.is_finite().then_some((v, s.epoch))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, e)| e)
    }
}

// Okabe–Ito colours: distinguishable with every common colour-vision deficiency.
const OI_BLUE: RGBColor = RGBColor(0, 114, 178);
const OI_VERMILLION: RGBColor = RGBColor(213, 94, 0);
const OI_GREEN: RGBColor = RGBColor(0, 158, 115);
const OI_PURPLE: RGBColor = RGBColor(204, 121, 167);

/// Integer epochs on the x axis: labels only at whole numbers.
fn epoch_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 && *v >= 1.0 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Train and validation loss, and validation accuracy, per epoch, with the unfreeze epoch
/// and the kept (best) epoch marked.
pub fn training_curves(history: &[EpochStats], marks: &CurveMarks, path: &Path) -> Result<()> {
    let img = render(900, 420, |root| {
        let (left, right) = root.split_horizontally(450);
        let n = history.len().max(1) as f64;
        let ticks = history.len().clamp(1, 10);
        let losses: Vec<f64> = history
            .iter()
            .flat_map(|s| [Some(s.train_loss), s.val_loss])
            .flatten()
            .filter(|v| v.is_finite())
            .collect();
        let ymax = losses.iter().cloned().fold(0.0, f64::max).max(1e-3) * 1.05;
        let mut c = ChartBuilder::on(&left)
            .caption("loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5..n + 0.5, 0.0..ymax)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("epoch")
            .x_labels(ticks + 1)
            .x_label_formatter(&epoch_label)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        let vline = |x: f64, top: f64| {
            PathElement::new(vec![(x, 0.0), (x, top)], OI_PURPLE.stroke_width(3))
        };
        if let Some(u) = marks.unfreeze {
            c.draw_series(std::iter::once(vline(u as f64 - 0.5, ymax)))
                .map_err(plot_err)?
                .label("backbone unfrozen")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], OI_PURPLE.stroke_width(3))
                });
        }
        c.draw_series(LineSeries::new(
            history.iter().map(|s| (s.epoch as f64, s.train_loss)),
            OI_BLUE.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], OI_BLUE.stroke_width(2)));
        c.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|s| s.val_loss.map(|v| (s.epoch as f64, v))),
            OI_VERMILLION.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("validation")
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], OI_VERMILLION.stroke_width(2))
        });
        if let Some(b) = marks
            .best
            .and_then(|b| history.iter().find(|s| s.epoch == b))
        {
            let y = b.val_loss.unwrap_or(b.train_loss);
            c.draw_series(std::iter::once(Circle::new(
                (b.epoch as f64, y),
                6,
                BLACK.stroke_width(2),
            )))
            .map_err(plot_err)?
            .label(format!("kept (epoch {})", b.epoch))
            .legend(|(x, y)| Circle::new((x + 8, y), 5, BLACK.stroke_width(2)));
        }
        c.configure_series_labels()
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        let mut a = ChartBuilder::on(&right)
            .caption("validation accuracy (%)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5..n + 0.5, 0.0..100.0)
            .map_err(plot_err)?;
        a.configure_mesh()
            .x_desc("epoch")
            .x_labels(ticks + 1)
            .x_label_formatter(&epoch_label)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        if let Some(u) = marks.unfreeze {
            a.draw_series(std::iter::once(vline(u as f64 - 0.5, 100.0)))
                .map_err(plot_err)?;
        }
        a.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|s| s.val_accuracy.map(|v| (s.epoch as f64, v * 100.0))),
            OI_GREEN.stroke_width(2),
        ))
        .map_err(plot_err)?;
        Ok(())
    })?;
    save_png(&img, path)
}

/// The confusion matrix (rows: true class, columns: predicted), each row normalised to its
/// support for the colour, with counts written in the cells.
pub fn confusion_matrix(m: &Metrics, path: &Path) -> Result<()> {
    let k = m.classes.len().max(1);
    let cell = (640 / k).clamp(14, 60) as i32;
    let label_w = 170;
    let (w, h) = (
        label_w + cell * k as i32 + 20,
        label_w + cell * k as i32 + 40,
    );
    let img = render(w as u32, h as u32, |root| {
        let title = format!(
            "confusion matrix — accuracy {:.2}% (n = {})",
            m.accuracy * 100.0,
            m.n
        );
        root.draw(&Text::new(title, (10, 8), ("sans-serif", 16).into_font()))
            .map_err(plot_err)?;
        let font = ("sans-serif", (cell as f64 * 0.45).clamp(9.0, 14.0)).into_font();
        for (i, row) in m.confusion.iter().enumerate() {
            let support: usize = row.iter().sum::<usize>().max(1);
            for (j, &v) in row.iter().enumerate() {
                // share of the true class's images: viridis, the same scale on and off the
                // diagonal (no red/green)
                let f = v as f64 / support as f64;
                let Rgb([r, g, b]) = colormap(f as f32);
                let colour = RGBColor(r, g, b);
                let ink = if f < 0.55 { WHITE } else { BLACK };
                let (x0, y0) = (label_w + j as i32 * cell, label_w + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    colour.filled(),
                ))
                .map_err(plot_err)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    RGBColor(220, 220, 220),
                ))
                .map_err(plot_err)?;
                if v > 0 && cell >= 18 {
                    root.draw(&Text::new(
                        v.to_string(),
                        (x0 + 3, y0 + cell / 3),
                        font.clone().color(&ink),
                    ))
                    .map_err(plot_err)?;
                }
            }
            let name: String = m.classes[i].chars().take(22).collect();
            root.draw(&Text::new(
                name,
                (6, label_w + i as i32 * cell + cell / 3),
                font.clone(),
            ))
            .map_err(plot_err)?;
        }
        for (j, c) in m.classes.iter().enumerate() {
            let name: String = c.chars().take(22).collect();
            let style = font.clone().transform(FontTransform::Rotate270);
            root.draw(&Text::new(
                name,
                (label_w + j as i32 * cell + cell / 4, label_w - 6),
                style,
            ))
            .map_err(plot_err)?;
        }
        root.draw(&Text::new(
            "true ↓  predicted →",
            (6, label_w - 24),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(plot_err)?;
        root.draw(&Text::new(
            "colour: share of the true class (0 → 100 %)",
            (6, label_w - 44),
            ("sans-serif", 11).into_font(),
        ))
        .map_err(plot_err)?;
        Ok(())
    })?;
    save_png(&img, path)
}

/// The feature-map picture of [`crate::inspect::featuremap::render`] with its legend: a
/// title (backbone, layer, channels shown), each tile's channel index, and the colour scale.
pub fn featuremap_figure(
    base: &RgbImage,
    tiles: &[crate::inspect::featuremap::TilePos],
    title: &str,
) -> Result<RgbImage> {
    let (top, bottom) = (34u32, 40u32);
    let (w, h) = (base.width().max(420), base.height() + top + bottom);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    imageops::overlay(&mut canvas, base, 0, top as i64);
    fonts();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.draw(&Text::new(
            title.to_string(),
            (6, 8),
            ("sans-serif", 16).into_font(),
        ))
        .map_err(plot_err)?;
        for t in tiles {
            let (x, y) = (t.x as i32, (t.y + top) as i32);
            let label = format!("{}", t.channel);
            let lw = 7 * label.len() as i32 + 4;
            root.draw(&Rectangle::new(
                [(x, y), (x + lw, y + 14)],
                BLACK.mix(0.7).filled(),
            ))
            .map_err(plot_err)?;
            root.draw(&Text::new(
                label,
                (x + 2, y + 1),
                ("sans-serif", 11).into_font().color(&WHITE),
            ))
            .map_err(plot_err)?;
        }
        // the colour scale
        let (bx, by, bw) = (6i32, (h - bottom + 8) as i32, 200i32);
        for i in 0..bw {
            let Rgb([r, g, b]) = colormap(i as f32 / (bw - 1) as f32);
            root.draw(&Rectangle::new(
                [(bx + i, by), (bx + i + 1, by + 14)],
                RGBColor(r, g, b).filled(),
            ))
            .map_err(plot_err)?;
        }
        root.draw(&Text::new(
            "low → high activation (each channel scaled to its own range; number: channel index)",
            (bx + bw + 8, by + 1),
            ("sans-serif", 11).into_font(),
        ))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::Internal("drawing buffer".into()))
}

/// One tile of a contact sheet.
pub struct Tile<'a> {
    pub image: &'a RgbImage,
    pub lines: Vec<String>,
}

/// A probability for a caption: one decimal, and never "100%" or "0%" for what is not
/// certain (0.9996 is ">99.9%", not "100%").
pub fn probability_text(p: f32) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p >= 1.0 {
        "100%".into()
    } else if p > 0.999 {
        ">99.9%".into()
    } else if p <= 0.0 {
        "0%".into()
    } else if p < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", p * 100.0)
    }
}

/// A grid of thumbnails with captions (e.g. the top losses: true class, predicted class and
/// probability, loss), each picture fitted, at its own aspect ratio, into a square cell of
/// `side` pixels (32–1024).
pub fn contact_sheet(tiles: &[Tile<'_>], title: &str, side: u32, path: &Path) -> Result<()> {
    let cols = 4usize.min(tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols).max(1);
    let side = side.clamp(32, 1024);
    // each picture fitted into side × side; a row is as tall as its tallest fitted picture
    // (three landscape photos leave no band of white above and below)
    let fitted = |im: &RgbImage| {
        let (iw, ih) = im.dimensions();
        let scale = (side as f64 / iw.max(1) as f64).min(side as f64 / ih.max(1) as f64);
        (
            ((iw as f64 * scale).round() as u32).clamp(1, side),
            ((ih as f64 * scale).round() as u32).clamp(1, side),
        )
    };
    let th = tiles
        .iter()
        .map(|t| fitted(t.image).1)
        .max()
        .unwrap_or(side);
    let (tw, cap) = (side, 54u32);
    let (w, h) = (
        cols as u32 * (tw + 10) + 10,
        rows as u32 * (th + cap + 10) + 40,
    );
    let mut sheet = render(w, h, |root| {
        root.draw(&Text::new(
            title.to_string(),
            (10, 10),
            ("sans-serif", 18).into_font(),
        ))
        .map_err(plot_err)?;
        for (i, t) in tiles.iter().enumerate() {
            let (x, y) = (
                10 + (i % cols) as i32 * (tw as i32 + 10),
                40 + (i / cols) as i32 * ((th + cap) as i32 + 10),
            );
            for (l, line) in t.lines.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (x, y + th as i32 + 4 + l as i32 * 16),
                    ("sans-serif", 13).into_font(),
                ))
                .map_err(plot_err)?;
            }
        }
        Ok(())
    })?;
    for (i, t) in tiles.iter().enumerate() {
        let (x, y) = (
            10 + (i % cols) as u32 * (tw + 10),
            40 + (i / cols) as u32 * (th + cap + 10),
        );
        // the picture at its own aspect ratio, centred in its cell
        let (nw, nh) = fitted(t.image);
        let thumb = imageops::resize(t.image, nw, nh, imageops::FilterType::Triangle);
        imageops::overlay(
            &mut sheet,
            &thumb,
            (x + (tw - nw) / 2) as i64,
            (y + (th - nh) / 2) as i64,
        );
    }
    save_png(&sheet, path)
}

/// The learning-rate range test: smoothed loss against the learning rate (log scale), with
/// the suggested learning rate marked.
pub fn lr_find_plot(curve: &[(f64, f64)], suggested: Option<f64>, path: &Path) -> Result<()> {
    // axes are computed from the data: points that are not finite (a loss that blew up)
    // are left out, or the axis would never end
    let curve = &finite_points(curve);
    let img = render(640, 420, |root| {
        let (lo, hi) = (
            curve.first().map(|c| c.0).unwrap_or(1e-7),
            curve.last().map(|c| c.0).unwrap_or(1.0),
        );
        let ymin = curve.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
        let ymax = curve.iter().map(|c| c.1).fold(0.0, f64::max);
        let mut c = ChartBuilder::on(&root)
            .caption("learning-rate finder", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(
                (lo..hi.max(lo * 10.0)).log_scale(),
                (ymin * 0.95)..(ymax * 1.05).max(ymin + 1e-6),
            )
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("learning rate")
            .y_desc("smoothed loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        c.draw_series(LineSeries::new(curve.iter().cloned(), BLUE.stroke_width(2)))
            .map_err(plot_err)?;
        if let Some(s) = suggested {
            let y = curve
                .iter()
                .min_by(|a, b| {
                    (a.0.ln() - s.ln())
                        .abs()
                        .total_cmp(&(b.0.ln() - s.ln()).abs())
                })
                .map(|p| p.1)
                .unwrap_or(ymin);
            c.draw_series(std::iter::once(Circle::new((s, y), 6, RED.filled())))
                .map_err(plot_err)?;
        }
        Ok(())
    })?;
    save_png(&img, path)
}

/// Accuracy against the attack budget.
pub fn robustness_plot(points: &[(f64, f64)], title: &str, path: &Path) -> Result<()> {
    let points = &finite_points(points);
    let img = render(640, 420, |root| {
        // in 1/255 units, at least 0 to 1 (one budget of 0 gave an axis to 0.00025)
        let xmax = (points.iter().map(|p| p.0).fold(0.0, f64::max) * 255.0).max(1.0);
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..xmax * 1.05, 0.0..100.0)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_desc("epsilon (×1/255)")
            .y_desc("accuracy (%)")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_err)?;
        let pts: Vec<(f64, f64)> = points.iter().map(|(e, a)| (e * 255.0, a * 100.0)).collect();
        c.draw_series(LineSeries::new(pts.clone(), RED.stroke_width(2)))
            .map_err(plot_err)?;
        c.draw_series(pts.iter().map(|p| Circle::new(*p, 4, RED.filled())))
            .map_err(plot_err)?;
        Ok(())
    })?;
    save_png(&img, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item15_contact_sheets_keep_the_aspect_ratio_and_draw_nothing_over_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let wide = RgbImage::from_pixel(400, 100, Rgb([0, 0, 255]));
        let p = dir.path().join("sheet.png");
        contact_sheet(
            &[Tile {
                image: &wide,
                lines: vec!["wide".into()],
            }],
            "t",
            200,
            &p,
        )
        .unwrap();
        let sheet = image::open(&p).unwrap().to_rgb8();
        // the cell at (10, 40) is 200×50, the picture's shape: blue from its first row (no
        // line drawn over it, as a red one once was) to its last, white above and below
        assert_eq!(sheet.dimensions(), (220, 50 + 54 + 10 + 40));
        assert_eq!(sheet.get_pixel(110, 40), &Rgb([0, 0, 255]));
        assert_eq!(sheet.get_pixel(110, 89), &Rgb([0, 0, 255]));
        assert!(sheet
            .pixels()
            .all(|p| !(p[0] > 150 && p[1] < 60 && p[2] < 60)));
        assert_eq!(sheet.get_pixel(110, 30), &Rgb([255, 255, 255]));
        assert_eq!(sheet.get_pixel(110, 95), &Rgb([255, 255, 255]));
    }

    #[test]
    fn item15_captions_never_round_an_uncertain_probability_to_certainty() {
        assert_eq!(probability_text(0.9996), ">99.9%");
        assert_eq!(probability_text(1.0), "100%");
        assert_eq!(probability_text(0.8734), "87.3%");
        assert_eq!(probability_text(0.0004), "<0.1%");
        assert_eq!(probability_text(0.0), "0%");
        assert_eq!(probability_text(f32::NAN), "–");
    }

    #[test]
    fn colours_are_viridis() {
        assert_eq!(colormap(0.0), Rgb([68, 1, 84]));
        assert_eq!(colormap(1.0), Rgb([253, 231, 37]));
        assert_eq!(colormap(0.5), Rgb([33, 145, 140]));
        // the confusion matrix uses the same scale on and off the diagonal: no red/green
        assert_ne!(colormap(0.0), colormap(1.0));
    }

    #[test]
    fn feature_map_figures_have_a_legend() {
        let base = RgbImage::from_pixel(300, 200, Rgb([10, 10, 10]));
        let tiles = [crate::inspect::featuremap::TilePos {
            channel: 17,
            x: 100,
            y: 0,
        }];
        let f = featuremap_figure(&base, &tiles, "backbone · layer").unwrap();
        assert_eq!(f.height(), 200 + 34 + 40);
        assert!(f.width() >= 420);
        // title text in the top band, the colour scale at the bottom (viridis' dark end)
        let dark = (0..f.width())
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| f.get_pixel(x, y)[0] < 128)
            .count();
        assert!(dark > 20, "no title drawn");
        assert_eq!(f.get_pixel(6, 200 + 34 + 12), &colormap(0.0));
    }

    #[test]
    fn the_kept_epoch_is_the_lowest_validation_loss() {
        let h: Vec<EpochStats> = [
            (1, 1.0, Some(0.9)),
            (2, 0.8, Some(0.7)),
            (3, 0.5, Some(0.8)),
        ]
        .into_iter()
        .map(|(e, t, v)| EpochStats {
            epoch: e,
            train_loss: t,
            val_loss: v,
            val_accuracy: None,
            lr: 1e-3,
        })
        .collect();
        assert_eq!(CurveMarks::best_of(&h), Some(2));
        let dir = tempfile::tempdir().unwrap();
        let marks = CurveMarks {
            unfreeze: Some(2),
            best: Some(2),
        };
        training_curves(&h, &marks, &dir.path().join("c.png")).unwrap();
        assert!(dir.path().join("c.png").is_file());
    }
}
