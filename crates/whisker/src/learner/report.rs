//! A run's `report.html` ([`crate::report::html`]): gathered from the run directory (model
//! file, metrics, skipped files, history) and an evaluation on a dataset, with the top losses'
//! class-activation maps. Written at the end of `train` and `eval`, and by `whisker report`.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{evaluate_model, Evaluation, Subset};
use crate::data::datasets::Dataset;
use crate::error::{Error, Result};
use crate::inspect::cam::{self, CamOptions};
use crate::model::Model;
use crate::report::html::{GalleryItem, HtmlReport};
use crate::report::CurveMarks;
use crate::run::{RunMetrics, SkippedFile};
use crate::train::head::EpochStats;

/// What a report shows beyond the run directory.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// How many of the top losses to show (each with its class-activation map).
    pub top_losses: usize,
    /// Grad-CAM overlays in the gallery.
    pub cam: bool,
    /// Images per forward pass (when the report evaluates).
    pub batch_size: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            top_losses: 12,
            cam: true,
            batch_size: 16,
        }
    }
}

/// An evaluation to show: which part of the data, and its result.
pub struct Evaluated<'a> {
    pub part: String,
    pub ev: &'a Evaluation,
    pub ds: &'a Dataset,
}

/// Write `out` (default `RUN/report.html`) for the run in `run_dir`. With a dataset and no
/// evaluation, the run's test split of it is evaluated first; with neither, the page shows
/// the metrics the run recorded and no gallery. Returns the page's path.
pub fn write_report(
    run_dir: &Path,
    ds: Option<&Dataset>,
    evaluated: Option<Evaluated<'_>>,
    out: Option<&Path>,
    opts: &ReportOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<PathBuf> {
    let device = crate::default_device();
    let model = Model::load(run_dir, &device.clone().autodiff())?;
    let meta = &model
        .trained()
        .ok_or_else(|| Error::Internal("a run's model has no head".into()))?
        .meta;
    let metrics: Option<RunMetrics> = crate::run::read_json(&run_dir.join("metrics.json")).ok();
    let skipped: Vec<SkippedFile> =
        crate::run::read_json(&run_dir.join("skipped.json")).unwrap_or_default();

    // an evaluation: given, made here on the dataset, or none
    let own;
    let evaluated = match (evaluated, ds) {
        (Some(e), _) => Some(e),
        (None, Some(ds)) => {
            let inference = Model::load(run_dir, &device)?.for_inference();
            own = evaluate_model(
                &inference,
                run_dir,
                ds,
                Subset::Part(crate::run::Part::Test),
                opts.batch_size,
                &|d, n| progress("evaluate", d, n),
            )?;
            Some(Evaluated {
                part: "test".into(),
                ev: &own,
                ds,
            })
        }
        (None, None) => None,
    };

    let settings = &meta.settings;
    let history: Vec<EpochStats> =
        serde_json::from_value(settings["fit"]["history"].clone()).unwrap_or_default();
    let finetune = meta.head == "finetune";
    let freeze = settings["fit"]["config"]["freeze_epochs"]
        .as_u64()
        .unwrap_or(0) as usize;
    let marks = CurveMarks {
        unfreeze: (finetune && freeze > 0 && history.len() > freeze).then_some(freeze + 1),
        best: if finetune {
            history.last().map(|s| s.epoch)
        } else {
            CurveMarks::best_of(&history)
        },
    };

    let mut facts: Vec<(String, String)> = Vec::new();
    let mut fact = |k: &str, v: String| facts.push((k.to_string(), v));
    fact("run directory", run_dir.display().to_string());
    if let Some(d) = settings["dataset"].as_str() {
        fact(
            "dataset",
            format!(
                "{d} ({})",
                settings["format"].as_str().unwrap_or("image folder")
            ),
        );
    }
    let classes = &meta.classes;
    fact(
        "classes",
        if classes.len() <= 40 {
            format!("{}: {}", classes.len(), classes.join(", "))
        } else {
            format!("{}: {}, …", classes.len(), classes[..40].join(", "))
        },
    );
    if let Some(m) = &metrics {
        fact(
            "images",
            format!(
                "{} train, {} validation, {} test; {} skipped",
                m.n_train, m.n_val, m.n_test, m.skipped
            ),
        );
    }
    fact(
        "backbone",
        format!(
            "{} (weights sha256 {}…), input {}→{} px, {}",
            meta.backbone,
            meta.weights_sha256
                .get(..12)
                .unwrap_or(&meta.weights_sha256),
            meta.resize,
            meta.crop,
            meta.normalization
        ),
    );
    let mode = match meta.head.as_str() {
        "linear" => "linear probe on frozen features (L-BFGS)".to_string(),
        "mlp" => "MLP head on frozen features (AdamW)".to_string(),
        "finetune" => {
            let units = settings["fit"]["config"]["unfreeze"]
                .as_u64()
                .map(|u| format!("the top {u} units"))
                .unwrap_or_else(|| "every unit".into());
            format!("fine-tuning {units} after {freeze} frozen epoch(s)")
        }
        other => other.to_string(),
    };
    fact("mode", mode);
    let cfg = &settings["fit"]["config"];
    let mut knobs = Vec::new();
    for (k, label) in [
        ("epochs", "epochs"),
        ("lr", "learning rate"),
        ("batch_size", "batch"),
        ("weight_decay", "weight decay"),
        ("label_smoothing", "label smoothing"),
    ] {
        if let Some(v) = cfg.get(k).filter(|v| !v.is_null()) {
            knobs.push(format!("{label} {v}"));
        }
    }
    if let Some(l2) = settings["fit"]["l2"].as_f64() {
        knobs.push(format!("L2 {l2:e}"));
    }
    if let Some(a) = settings["augment"].as_bool() {
        knobs.push(format!("augmentation {}", if a { "on" } else { "off" }));
    }
    if let Some(s) = settings["seed"].as_u64() {
        knobs.push(format!("seed {s}"));
    }
    if !knobs.is_empty() {
        fact("settings", knobs.join(", "));
    }
    if let Some(m) = &metrics {
        fact(
            "time",
            format!(
                "features {:.1} s ({} from the cache), training {:.1} s",
                m.extraction_seconds, m.features_from_cache, m.fit_seconds
            ),
        );
    }

    let (part, shown_metrics, gallery) = match &evaluated {
        Some(e) => {
            fact(
                "evaluated",
                format!(
                    "{} split of {}: {} images, {} skipped",
                    e.part,
                    e.ds.root.display(),
                    e.ev.items.len(),
                    e.ev.skipped
                ),
            );
            let g = gallery(&model, e, opts, progress)?;
            (e.part.clone(), Some(e.ev.metrics.clone()), g)
        }
        None => (
            "test".to_string(),
            metrics.as_ref().and_then(|m| m.test.clone()),
            Vec::new(),
        ),
    };

    let report = HtmlReport {
        title: format!(
            "whisker · {} · {}",
            run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| run_dir.display().to_string()),
            meta.backbone
        ),
        facts,
        part,
        metrics: shown_metrics,
        history,
        marks,
        skipped: skipped.into_iter().map(|s| (s.path, s.reason)).collect(),
        gallery,
        settings: serde_json::to_string_pretty(settings).ok(),
        generated: format!(
            "made by whisker {} on {}",
            env!("CARGO_PKG_VERSION"),
            utc_now()
        ),
    };
    let path = out
        .map(PathBuf::from)
        .unwrap_or_else(|| run_dir.join("report.html"));
    crate::io::write_atomic(&path, crate::report::html::render(&report).as_bytes())?;
    Ok(path)
}

/// The top losses, with the CAM of the class each was taken for.
fn gallery(
    model: &Model,
    e: &Evaluated<'_>,
    opts: &ReportOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<Vec<GalleryItem>> {
    let losses = e.ev.top_losses(e.ds, opts.top_losses);
    let pre = model.preprocess();
    // the photos that still decode, then their maps a batch at a time
    let shown: Vec<_> = losses
        .iter()
        .filter_map(|t| {
            let photo = crate::data::decode_file(&e.ds.items[t.item].path).ok()?;
            Some((t, photo))
        })
        .collect();
    let mut cams = Vec::with_capacity(shown.len());
    if opts.cam {
        // a few at a time: burn's tape of a deep backbone is large
        for chunk in shown.chunks(opts.batch_size.clamp(1, 4)) {
            progress("top losses", cams.len(), shown.len());
            let crops: Vec<RgbImage> = chunk.iter().map(|(_, p)| pre.apply(p)).collect();
            let classes: Vec<Option<usize>> =
                chunk.iter().map(|(t, _)| Some(t.predicted)).collect();
            cams.extend(cam::grad_cams(
                model,
                &crops,
                &classes,
                &CamOptions::default(),
            )?);
        }
    }
    let mut out = Vec::new();
    for (n, (t, photo)) in shown.iter().enumerate() {
        let item = &e.ds.items[t.item];
        let row = e.ev.items.iter().position(|&i| i == t.item).map(|r| {
            let k = e.ds.classes.len();
            &e.ev.logits[r * k..(r + 1) * k]
        });
        let prob_true = row
            .map(|row| {
                let lse = crate::train::metrics::log_sum_exp(row);
                (row[item.label] as f64 - lse).exp()
            })
            .unwrap_or(f64::NAN);
        let (cam_img, caption) = match cams.get(n) {
            Some(c) => {
                // drawn on the thumbnail (the overlay maps by proportion): cheaper for big
                // photos, finer for tiny ones
                let o = cam::overlay(&thumbnail(photo, 320), &pre, c, 0.5);
                (
                    Some(jpeg(&o.image)?),
                    format!(
                        "{} of “{}” at {}",
                        c.method, e.ds.classes[t.predicted], c.layer
                    ),
                )
            }
            None => (None, String::new()),
        };
        out.push(GalleryItem {
            name: crate::run::relative_key(&e.ds.root, &item.path)
                .unwrap_or_else(|| item.path.display().to_string()),
            true_class: e.ds.classes[item.label].clone(),
            predicted: e.ds.classes[t.predicted].clone(),
            prob_predicted: t.probability,
            prob_true,
            loss: t.loss,
            photo: jpeg(&thumbnail(photo, 320))?,
            cam: cam_img,
            cam_caption: caption,
        });
    }
    progress("top losses", losses.len(), losses.len());
    Ok(out)
}

/// At most `max` pixels on the longer side (never enlarged but for tiny images, which are
/// enlarged to 192 pixels, nearest neighbour, so they can be seen).
fn thumbnail(img: &RgbImage, max: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let long = w.max(h).max(1);
    let target = if long > max {
        max
    } else if long < 96 {
        192
    } else {
        return img.clone();
    };
    let (nw, nh) = (
        ((w as u64 * target as u64) / long as u64).max(1) as u32,
        ((h as u64 * target as u64) / long as u64).max(1) as u32,
    );
    let filter = if long < 96 {
        image::imageops::FilterType::Nearest
    } else {
        image::imageops::FilterType::Triangle
    };
    image::imageops::resize(img, nw, nh, filter)
}

fn jpeg(img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(img)
        .map_err(|e| Error::Internal(format!("JPEG encoding: {e}")))?;
    Ok(bytes)
}

/// The time now, UTC, as `YYYY-MM-DD HH:MM UTC` (no time-zone database needed).
fn utc_now() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// Seconds since 1970 as a UTC date and time.
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        // a leap day, and a date of this project's time
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc(1_795_879_800), "2026-11-28 15:30 UTC");
    }
}
