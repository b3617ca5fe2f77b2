//! `report.html`: one self-contained page per run (no network, images inlined, prints well):
//! what was trained on what, the metrics, a sortable per-class table, the training curves
//! and the confusion matrix as inline SVG (hover a cell for its count and class names), the
//! most confused pairs, and the top losses with where the model looked (Grad-CAM).
//!
//! This module only renders: the caller gathers the facts ([`HtmlReport`]).

use std::fmt::Write as _;

use super::CurveMarks;
use crate::train::head::EpochStats;
use crate::train::metrics::Metrics;

/// One of the most confidently wrong images.
#[derive(Debug, Clone)]
pub struct GalleryItem {
    /// The file (relative to the dataset, or as given).
    pub name: String,
    pub true_class: String,
    pub predicted: String,
    /// The predicted class's probability, and the true class's.
    pub prob_predicted: f64,
    pub prob_true: f64,
    pub loss: f64,
    /// Encoded images (JPEG or PNG bytes) of the photo and of its class-activation map.
    pub photo: Vec<u8>,
    pub cam: Option<Vec<u8>>,
    /// What the CAM shows ("Grad-CAM of the predicted class at head").
    pub cam_caption: String,
}

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub struct HtmlReport {
    pub title: String,
    /// Label/value pairs about the run (dataset, split, backbone, mode, time…).
    pub facts: Vec<(String, String)>,
    /// The evaluated part ("test", "val", "all") and its metrics.
    pub part: String,
    pub metrics: Option<Metrics>,
    pub history: Vec<EpochStats>,
    pub marks: CurveMarks,
    /// Files left out, and why.
    pub skipped: Vec<(String, String)>,
    pub gallery: Vec<GalleryItem>,
    /// The full settings, pretty-printed JSON.
    pub settings: Option<String>,
    /// When and by what the page was made.
    pub generated: String,
}

/// HTML-escape text (file names and class names come from users' folders).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2} %", v * 100.0)
    } else {
        "–".into()
    }
}

/// A data URI of encoded image bytes.
pub fn data_uri(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mime = if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else {
        "image/jpeg"
    };
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const STYLE: &str = r#"
:root { --fg:#1b1b1f; --muted:#5f6368; --line:#d9dce1; --bg:#fff; --card:#f6f7f9;
  --blue:#0072b2; --orange:#d55e00; --green:#009e73; --purple:#cc79a7; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
.card { background: var(--card); border-radius: 8px; padding: 10px 16px; min-width: 140px; }
.card .v { font-size: 24px; font-weight: 600; } .card .k { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { width: 210px; color: var(--muted); font-weight: 500; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " ↕"; color: var(--line); }
table.sortable th[aria-sort=ascending]::after { content: " ▲"; color: var(--muted); }
table.sortable th[aria-sort=descending]::after { content: " ▼"; color: var(--muted); }
svg text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: var(--fg); }
svg .axis { stroke: #777; } svg .grid { stroke: #eee; }
svg rect.cell:hover { stroke: #000; stroke-width: 2; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border-radius: 8px; padding: 8px; break-inside: avoid; }
figure .pair { display: flex; gap: 4px; } figure img { width: 50%; height: auto; border-radius: 4px; }
figcaption { font-size: 13px; margin-top: 6px; word-break: break-word; }
.bad { color: var(--orange); font-weight: 600; } .muted { color: var(--muted); }
pre { background: var(--card); padding: 10px; overflow: auto; font-size: 12px; }
@media print { body { max-width: none; padding: 0; } h2 { break-after: avoid; }
  details { display: block; } details > summary { display: none; } .noprint { display: none; } }
"#;

const SORT_JS: &str = r#"
for (const t of document.querySelectorAll('table.sortable')) {
  t.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const asc = th.getAttribute('aria-sort') !== 'ascending';
    t.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    const body = t.tBodies[0];
    const rows = Array.from(body.rows);
    const key = r => { const c = r.cells[col]; const v = c.dataset.v ?? c.textContent;
      const n = parseFloat(v); return isNaN(n) ? v.toLowerCase() : n; };
    rows.sort((a, b) => { const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    rows.forEach(r => body.appendChild(r));
  }));
}
"#;

/// The page.
pub fn render(r: &HtmlReport) -> String {
    let mut h = String::with_capacity(1 << 16);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"generator\" content=\"whisker\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.title)
    );
    let _ = write!(
        h,
        "<header><h1>{}</h1><p class=\"sub\">{}</p>",
        esc(&r.title),
        esc(&r.generated)
    );
    if let Some(m) = &r.metrics {
        h.push_str("<div class=\"cards\">");
        let cards = [
            ("accuracy", format!("{} accuracy", r.part), pct(m.accuracy)),
            (
                "mean-per-class",
                "mean per-class".into(),
                pct(m.mean_per_class_accuracy),
            ),
            ("top3", "top-3".into(), pct(m.top3)),
            ("top5", "top-5".into(), pct(m.top5)),
            ("log-loss", "log loss".into(), format!("{:.4}", m.log_loss)),
            ("n", format!("{} images", r.part), m.n.to_string()),
        ];
        for (id, k, v) in cards {
            let _ = write!(
                h,
                "<div class=\"card\"><div class=\"v\" id=\"{id}\">{}</div><div class=\"k\">{}</div></div>",
                esc(&v),
                esc(&k)
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</header>\n");

    h.push_str("<section id=\"run\"><h2>The run</h2><table class=\"facts\">");
    for (k, v) in &r.facts {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table></section>\n");

    if !r.history.is_empty() {
        h.push_str("<section id=\"curves\"><h2>Training curves</h2><div class=\"charts\">");
        h.push_str(&curves_svg(&r.history, &r.marks));
        h.push_str("</div></section>\n");
    }

    if let Some(m) = &r.metrics {
        let _ = write!(
            h,
            "<section id=\"classes\"><h2>Per class ({} split)</h2>\
             <p class=\"muted noprint\">Click a column to sort.</p>\
             <table class=\"sortable\"><thead><tr><th>class</th><th class=\"n\">precision</th>\
             <th class=\"n\">recall</th><th class=\"n\">F1</th><th class=\"n\">support</th></tr></thead><tbody>",
            esc(&r.part)
        );
        for c in &m.per_class {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{:.3}</td><td class=\"n\">{:.3}</td>\
                 <td class=\"n\">{:.3}</td><td class=\"n\">{}</td></tr>",
                esc(&c.class),
                c.precision,
                c.recall,
                c.f1,
                c.support
            );
        }
        h.push_str("</tbody></table></section>\n");

        h.push_str("<section id=\"confusion\"><h2>Confusion matrix</h2>");
        h.push_str(
            "<p class=\"muted\">Rows: true class; columns: predicted. Colour: share of the row \
             (viridis); hover a cell for its count.</p>",
        );
        h.push_str(&confusion_svg(m));
        let confused = m.most_confused(10);
        if !confused.is_empty() {
            h.push_str(
                "<h3>Most confused</h3><table><thead><tr><th>true</th><th>predicted</th>\
                 <th class=\"n\">count</th></tr></thead><tbody>",
            );
            for (t, p, n) in confused {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
                    esc(&t),
                    esc(&p)
                );
            }
            h.push_str("</tbody></table>");
        }
        h.push_str("</section>\n");
    }

    if !r.gallery.is_empty() {
        h.push_str(
            "<section id=\"top-losses\"><h2>Top losses</h2><p class=\"muted\">The most \
             confidently wrong images, worst first: the photo, and where the model looked \
             for the class it chose.</p><div class=\"gallery\">",
        );
        for g in &r.gallery {
            h.push_str("<figure><div class=\"pair\">");
            let _ = write!(
                h,
                "<img alt=\"{}\" src=\"{}\">",
                esc(&g.name),
                data_uri(&g.photo)
            );
            if let Some(c) = &g.cam {
                let _ = write!(
                    h,
                    "<img alt=\"{} for {}\" title=\"{}\" src=\"{}\">",
                    esc(&g.cam_caption),
                    esc(&g.name),
                    esc(&g.cam_caption),
                    data_uri(c)
                );
            }
            let _ = write!(
                h,
                "</div><figcaption><b>{}</b><br>true: {} ({:.1} %)<br>\
                 predicted: <span class=\"bad\">{}</span> ({:.1} %)<br>\
                 <span class=\"muted\">loss {:.3}</span></figcaption></figure>",
                esc(&g.name),
                esc(&g.true_class),
                g.prob_true * 100.0,
                esc(&g.predicted),
                g.prob_predicted * 100.0,
                g.loss
            );
        }
        h.push_str("</div></section>\n");
    }

    let _ = write!(
        h,
        "<section id=\"skipped\"><h2>Skipped files ({})</h2>",
        r.skipped.len()
    );
    if r.skipped.is_empty() {
        h.push_str("<p class=\"muted\">None: every file was used.</p>");
    } else {
        h.push_str(
            "<details open><summary>Show</summary><table><thead><tr><th>file</th>\
             <th>reason</th></tr></thead><tbody>",
        );
        for (p, why) in r.skipped.iter().take(1000) {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(p), esc(why));
        }
        if r.skipped.len() > 1000 {
            let _ = write!(
                h,
                "<tr><td colspan=\"2\" class=\"muted\">… and {} more (skipped.json has them all)</td></tr>",
                r.skipped.len() - 1000
            );
        }
        h.push_str("</tbody></table></details>");
    }
    h.push_str("</section>\n");

    if let Some(s) = &r.settings {
        let _ = writeln!(
            h,
            "<section id=\"settings\"><h2>Settings</h2><details><summary>All settings \
             (JSON)</summary><pre>{}</pre></details></section>",
            esc(s)
        );
    }
    let _ = writeln!(h, "<script>{SORT_JS}</script></body></html>");
    h
}

/// Round "nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A line chart: series of (label, colour, dashed, points by epoch).
#[allow(clippy::type_complexity)]
fn line_chart(
    title: &str,
    y_label: &str,
    series: &[(&str, &str, bool, Vec<(f64, f64)>)],
    epochs: usize,
    y_range: Option<(f64, f64)>,
    marks: &CurveMarks,
) -> String {
    let (w, hgt) = (500.0, 300.0);
    let (ml, mr, mt, mb) = (58.0, 16.0, 30.0, 44.0);
    let pts: Vec<f64> = series
        .iter()
        .flat_map(|s| s.3.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = y_range.unwrap_or_else(|| {
        let lo = pts.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
        let hi = pts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, if hi > lo { hi * 1.05 } else { lo + 1.0 })
    });
    let x0 = 1.0;
    let x1 = (epochs.max(2)) as f64;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| mt + (1.0 - (y - lo) / (hi - lo)) * (hgt - mt - mb);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<text x=\"{ml}\" y=\"18\" font-weight=\"600\">{}</text>",
        esc(title)
    );
    for t in ticks(lo, hi, 5) {
        let y = sy(t);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - mr,
            ml - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let xt: Vec<f64> = ticks(x0, x1, 8)
        .into_iter()
        .filter(|v| v.fract() == 0.0)
        .collect();
    for t in xt {
        let x = sx(t);
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            hgt - mb + 16.0,
            t as i64
        );
    }
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{ml}\" x2=\"{ml}\" y1=\"{mt}\" y2=\"{}\"/>\
         <line class=\"axis\" x1=\"{ml}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\
         <text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        hgt - mb,
        w - mr,
        hgt - mb,
        hgt - mb,
        (ml + w - mr) / 2.0,
        hgt - 8.0,
        (mt + hgt - mb) / 2.0,
        esc(y_label)
    );
    for (label, epoch, colour) in [
        ("unfreeze", marks.unfreeze, "#777"),
        ("kept", marks.best, "#009e73"),
    ] {
        if let Some(e) = epoch {
            let x = sx(e as f64);
            // the label on the side of the line with room for it
            let (tx, anchor) = if x > w - mr - 90.0 {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{mt}\" y2=\"{}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{tx:.1}\" y=\"{}\" text-anchor=\"{anchor}\" style=\"fill:{colour}\">{label} ({e})</text>",
                hgt - mb,
                hgt - mb - 8.0 - if label == "kept" { 14.0 } else { 0.0 }
            );
        }
    }
    for (i, (label, colour, dashed, p)) in series.iter().enumerate() {
        let d: Vec<String> = p
            .iter()
            .filter(|q| q.1.is_finite())
            .map(|q| format!("{:.1},{:.1}", sx(q.0), sy(q.1)))
            .collect();
        if d.is_empty() {
            continue;
        }
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{} points=\"{}\"><title>{}</title></polyline>",
            if *dashed { " stroke-dasharray=\"6 3\"" } else { "" },
            d.join(" "),
            esc(label)
        );
        for q in p.iter().filter(|q| q.1.is_finite()) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{} epoch {}: {}</title></circle>",
                sx(q.0),
                sy(q.1),
                esc(label),
                q.0,
                fmt_tick(q.1)
            );
        }
        // legend
        let lx = w - mr - 150.0;
        let ly = mt + 8.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 22.0,
            if *dashed { " stroke-dasharray=\"6 3\"" } else { "" },
            lx + 28.0,
            ly + 4.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Loss (train, validation) and validation accuracy per epoch.
pub fn curves_svg(history: &[EpochStats], marks: &CurveMarks) -> String {
    let e = history.iter().map(|s| s.epoch).max().unwrap_or(1);
    let train: Vec<(f64, f64)> = history
        .iter()
        .map(|s| (s.epoch as f64, s.train_loss))
        .collect();
    let val: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|s| s.val_loss.map(|v| (s.epoch as f64, v)))
        .collect();
    let acc: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|s| s.val_accuracy.map(|v| (s.epoch as f64, v)))
        .collect();
    let mut out = line_chart(
        "Loss",
        "cross-entropy",
        &[
            ("train loss", "#0072b2", false, train),
            ("validation loss", "#d55e00", true, val),
        ],
        e,
        None,
        marks,
    );
    if !acc.is_empty() {
        out.push_str(&line_chart(
            "Validation accuracy",
            "accuracy",
            &[("validation accuracy", "#009e73", false, acc)],
            e,
            Some((0.0, 1.0)),
            marks,
        ));
    }
    out
}

/// From this many classes on, the confusion matrix draws only the cells with a count.
pub const SPARSE_CONFUSION_FROM: usize = 64;

/// The confusion matrix, coloured by share of the row; each cell's tooltip names the classes
/// and the count (with more than [`SPARSE_CONFUSION_FROM`] classes, each cell with a count).
pub fn confusion_svg(m: &Metrics) -> String {
    let k = m.classes.len().max(1);
    let cell = (640.0 / k as f64).clamp(8.0, 48.0);
    let longest = m
        .classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(1);
    let label_w = if cell >= 10.0 {
        (longest.min(28) as f64 * 7.0 + 10.0).max(40.0)
    } else {
        40.0
    };
    let (ox, oy) = (label_w + 24.0, label_w + 10.0);
    let w = ox + cell * k as f64 + 10.0;
    let hgt = oy + cell * k as f64 + 30.0;
    let short = |s: &str| -> String {
        if s.chars().count() > 28 {
            format!("{}…", s.chars().take(27).collect::<String>())
        } else {
            s.to_string()
        }
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"confusion matrix\" width=\"{w:.0}\" height=\"{hgt:.0}\" viewBox=\"0 0 {w:.0} {hgt:.0}\">"
    );
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"12\" text-anchor=\"middle\" font-weight=\"600\">predicted</text>\
         <text transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-weight=\"600\">true</text>",
        ox + cell * k as f64 / 2.0,
        oy + cell * k as f64 / 2.0
    );
    let show_labels = cell >= 10.0;
    for (i, c) in m.classes.iter().enumerate() {
        if !show_labels {
            break;
        }
        let y = oy + cell * (i as f64 + 0.5) + 4.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{y:.1}\" text-anchor=\"end\">{}</text>",
            ox - 4.0,
            esc(&short(c))
        );
        let x = ox + cell * (i as f64 + 0.5) + 4.0;
        let _ = write!(
            s,
            "<text transform=\"translate({x:.1} {:.1}) rotate(-90)\">{}</text>",
            oy - 4.0,
            esc(&short(c))
        );
    }
    // many classes: the k² cells would be hundreds of MB of SVG (1,000 classes: 299 MB), so
    // the empty cells are one background rectangle (the colour of 0) and only the cells with
    // a count are drawn — the size follows the test set, not the square of the classes
    let sparse = k > SPARSE_CONFUSION_FROM;
    if sparse {
        let c = super::colormap(0.0).0;
        let _ = write!(
            s,
            "<rect x=\"{ox:.1}\" y=\"{oy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"rgb({},{},{})\"/>",
            cell * k as f64,
            cell * k as f64,
            c[0],
            c[1],
            c[2]
        );
    }
    for (i, row) in m.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (j, &n) in row.iter().enumerate() {
            if sparse && n == 0 {
                continue;
            }
            let share = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            let c = super::colormap(share as f32).0;
            let (x, y) = (ox + cell * j as f64, oy + cell * i as f64);
            let tip = format!(
                "true: {} → predicted: {}: {n} ({:.1} % of {})",
                m.classes.get(i).map(String::as_str).unwrap_or("?"),
                m.classes.get(j).map(String::as_str).unwrap_or("?"),
                share * 100.0,
                total
            );
            let _ = write!(
                s,
                "<rect class=\"cell\" data-true=\"{i}\" data-pred=\"{j}\" data-count=\"{n}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"rgb({},{},{})\"><title>{}</title></rect>",
                c[0],
                c[1],
                c[2],
                esc(&tip)
            );
            if cell >= 22.0 && n > 0 {
                let fg = if share > 0.6 { "#000" } else { "#fff" };
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill:{fg};pointer-events:none\">{n}</text>",
                    x + cell / 2.0,
                    y + cell / 2.0 + 4.0
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_users_is_escaped() {
        assert_eq!(
            esc("<img src=x onerror=\"a\">&'"),
            "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(0.0, 2.3, 5);
        assert_eq!((t[0], t[1]), (0.0, 0.5));
        assert_eq!(ticks(1.0, 1.0, 5), vec![1.0]);
    }

    #[test]
    fn the_page_shows_metrics_classes_and_escapes_names() {
        let m = crate::train::metrics::evaluate(
            &[2.0, 0.0, 0.0, 1.0, 1.0, 0.0],
            &[0, 1, 1],
            &["cat".to_string(), "<dog>".to_string()],
        )
        .unwrap();
        let r = HtmlReport {
            title: "run".into(),
            part: "test".into(),
            metrics: Some(m),
            history: vec![EpochStats {
                epoch: 1,
                train_loss: 0.5,
                val_loss: Some(0.6),
                val_accuracy: Some(0.5),
                lr: 1e-3,
            }],
            skipped: vec![("bad.jpg".into(), "cannot decode".into())],
            ..Default::default()
        };
        let page = render(&r);
        assert!(page.contains("<div class=\"v\" id=\"accuracy\">66.67 %</div>"));
        assert!(page.contains("&lt;dog&gt;") && !page.contains("<dog>"));
        assert!(page.contains("true: &lt;dog&gt; → predicted: cat: 1 (50.0 % of 2)"));
        assert!(page.contains("bad.jpg") && page.contains("Skipped files (1)"));
        for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
            assert!(
                !page.contains(fetch),
                "nothing is fetched from the network: {fetch}"
            );
        }
    }
}
