//! `whisker cam`: where the model looked (Grad-CAM, Grad-CAM++), over each photo.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use whisker::inspect::cam::{self, CamOptions, Method};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct CamArgs {
    /// Photos to explain (any size; the model sees them through its preprocessing).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Class to explain (index or label, e.g. "tiger cat") [default: each photo's top-1].
    #[arg(long)]
    class: Option<String>,
    /// Layer whose activations are weighed [default: the deepest feature map, the last of
    /// `whisker featuremap --list-layers`: `head` on EfficientNet-Lite (its final 1×1
    /// convolution), `layer4` on ResNets].
    #[arg(long)]
    layer: Option<String>,
    /// Method: gradcam (mean gradient per channel) or gradcam++ (positive gradients, weighted
    /// per position).
    #[arg(long, default_value = "gradcam", value_parser = ["gradcam", "gradcam++"])]
    method: String,
    /// Opacity of the heat map over the photo, 0–1.
    #[arg(long, default_value_t = 0.5, value_parser = crate::args::probability)]
    alpha: f32,
    #[command(flatten)]
    which: super::ModelArgs,
    /// Folder for the overlays (`<photo name>.cam.png`, at each photo's own size).
    #[arg(long)]
    out: PathBuf,
    /// One JSON document on stdout (class, probability, the map and its peak per photo).
    #[arg(long)]
    json: bool,
}

/// A CAM as JSON (the CLI's `--json` and the web API's `/api/cam` share it): the explained
/// class, the map at the layer's resolution scaled to [0, 1], and its peak on the photo.
pub(crate) fn cam_json(model: &Model, c: &cam::Cam, peak: (u32, u32)) -> Value {
    let labels = model.labels();
    let norm = c.normalized();
    let rows: Vec<Vec<f64>> = norm
        .chunks(c.w.max(1))
        .map(|r| r.iter().map(|&v| (v as f64 * 1e4).round() / 1e4).collect())
        .collect();
    json!({
        "method": c.method,
        "layer": c.layer,
        "class": c.class,
        "label": labels[c.class],
        "prob": c.prob,
        "top1": c.top1,
        "top1_label": labels[c.top1],
        "peak": {"x": peak.0, "y": peak.1},
        "map": rows,
    })
}

/// The CAM of one photo and its overlay.
pub(crate) fn explain(
    model: &Model,
    photo: &image::RgbImage,
    opts: &CamOptions,
    alpha: f32,
) -> Result<(cam::Cam, cam::Overlay)> {
    let pre = model.preprocess();
    let c = cam::grad_cam(model, &pre.apply(photo), opts)?;
    let o = cam::overlay(photo, &pre, &c, alpha);
    Ok((c, o))
}

/// `DIR/<stem>.cam.png`, or `DIR/<stem>-<k>.cam.png` for the k-th photo of that name.
fn out_name(dir: &Path, image: &Path, k: usize) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    if k == 1 {
        dir.join(format!("{stem}.cam.png"))
    } else {
        dir.join(format!("{stem}-{k}.cam.png"))
    }
}

pub fn cam_cmd(a: CamArgs) -> Result<i32> {
    let device = whisker::default_device().autodiff();
    let model = a.which.load(&device)?;
    let method: Method = a.method.parse()?;
    let class = a
        .class
        .as_deref()
        .map(|t| model.class_index(t))
        .transpose()?;
    let opts = CamOptions {
        method,
        class,
        layer: a.layer.clone(),
    };
    if let Some(l) = &opts.layer {
        let names = model.backbone().layer_names();
        if !names.iter().any(|n| n == l) {
            bail!(
                "{} has no layer `{l}`; its layers: {}",
                model.backbone().spec.name,
                names.join(", ")
            );
        }
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the folder: {e}", a.out.display()))?;
    let mut results = Vec::new();
    let mut failed = 0;
    let mut used = std::collections::HashSet::new();
    for image in &a.images {
        let name = crate::path_str(image);
        let r = whisker::data::decode_file(image)
            .map_err(anyhow::Error::from)
            .and_then(|photo| explain(&model, &photo, &opts, a.alpha));
        match r {
            Ok((c, o)) => {
                // two photos of the same name from different folders get different files
                let mut k = 1;
                let mut out = out_name(&a.out, image, k);
                while !used.insert(out.clone()) {
                    k += 1;
                    out = out_name(&a.out, image, k);
                }
                whisker::report::save_png(&o.image, &out)?;
                let labels = model.labels();
                if !a.json {
                    println!(
                        "{name}: {} {} ({:.1}%) at {}, peak ({}, {}) → {}",
                        c.method,
                        labels[c.class],
                        c.prob * 100.0,
                        c.layer,
                        o.peak.0,
                        o.peak.1,
                        out.display()
                    );
                }
                let mut v = cam_json(&model, &c, o.peak);
                v["image"] = json!(name);
                v["out"] = json!(crate::path_str(&out));
                results.push(v);
            }
            Err(e) => {
                failed += 1;
                if !a.json {
                    eprintln!("{name}: error: {e:#}");
                }
                results.push(json!({"image": name, "error": format!("{e:#}")}));
            }
        }
    }
    if a.json {
        let doc = json!({
            "backbone": model.backbone().spec.name,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
