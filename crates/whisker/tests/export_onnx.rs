//! `whisker export`'s ONNX models of every backbone (formula weights, BatchNorm statistics
//! measured on real photos: `tests/golden/`): each model is written and its structure
//! checked here (input, outputs, metadata, every weight present once); with
//! `WHISKER_EXPORT_DIR` set, the models named in `WHISKER_EXPORT_WRITE` (a comma-separated
//! list, or `all`) are also left there with a batch of 7 real photos and whisker's logits and
//! features for them, for `tools/py/check_export.py` to run with ONNX Runtime and OpenVINO
//! (`tools/test.sh` does both, for one backbone of each family).

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::models;
use whisker::data::transforms::to_tensor;
use whisker::export::onnx::{summary, Summary};
use whisker::model::Model;

/// A little-endian float32 `.npy` of `shape`.
fn write_npy(path: &std::path::Path, shape: &[usize], v: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

/// Seven real photos at the backbone's input size: the four test photos and three of them
/// mirrored.
fn photos(b: &whisker::Backbone) -> Vec<image::RgbImage> {
    let pre = b.preprocess();
    let mut v: Vec<image::RgbImage> = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|p| pre.load(&testdata(p)).unwrap())
        .collect();
    for i in 0..3 {
        v.push(image::imageops::flip_horizontal(&v[i]));
    }
    v
}

fn check(name: &str, dir: Option<&std::path::Path>) {
    let device = Device::flex();
    let b = golden_backbone(name, &device);
    let model = Model::from_backbone(b, format!("formula weights of {name}"));
    let b = model.backbone();
    let bytes = whisker::export::onnx_bytes(&model).unwrap();
    let s: Summary = summary(&bytes).unwrap();
    let crop = b.spec.input_size as i64;
    assert_eq!(
        s.inputs,
        vec![("pixels".to_string(), vec![-1, 3, crop, crop])]
    );
    let dim = b.spec.feature_dim as i64;
    let mut outputs = vec![("features".to_string(), vec![-1, dim])];
    if b.net.has_imagenet_head() {
        outputs.insert(0, ("logits".to_string(), vec![-1, 1000]));
    }
    assert_eq!(s.outputs, outputs, "{name}");
    assert_eq!(s.opset, 17);
    assert_eq!(s.metadata["whisker.backbone"], name);
    let pre: serde_json::Value =
        serde_json::from_str(&s.metadata["whisker.preprocessing"]).unwrap();
    assert_eq!(pre["crop"], b.spec.input_size);
    assert_eq!(pre["resize"], b.spec.resize);
    assert_eq!(
        s.metadata.contains_key("whisker.classes"),
        b.net.has_imagenet_head()
    );
    // every node's inputs are computed before it or are weights, and every weight is used
    assert!(
        s.dangling.is_empty(),
        "{name}: inputs never computed: {:?}",
        s.dangling
    );
    assert!(
        s.unused.is_empty(),
        "{name}: weights never used: {:?}",
        s.unused
    );
    let Some(dir) = dir else { return };
    let imgs = photos(b);
    let x = to_tensor(&imgs, &device);
    let pixels = to_vec(x.clone());
    let out = b.forward(x, &mut whisker::backbones::Taps::none());
    let n = imgs.len();
    let c = b.spec.input_size;
    std::fs::write(dir.join(format!("{name}.onnx")), &bytes).unwrap();
    write_npy(
        &dir.join(format!("{name}.pixels.npy")),
        &[n, 3, c, c],
        &pixels,
    );
    let feats = to_vec(out.features);
    write_npy(
        &dir.join(format!("{name}.features.npy")),
        &[n, feats.len() / n],
        &feats,
    );
    if b.net.has_imagenet_head() {
        let l = to_vec(out.logits);
        write_npy(
            &dir.join(format!("{name}.logits.npy")),
            &[n, l.len() / n],
            &l,
        );
    }
}

#[test]
fn every_backbone_exports_to_onnx() {
    let dir = std::env::var_os("WHISKER_EXPORT_DIR").map(std::path::PathBuf::from);
    if let Some(d) = &dir {
        std::fs::create_dir_all(d).unwrap();
    }
    let write = std::env::var("WHISKER_EXPORT_WRITE").unwrap_or_default();
    let written = |name: &str| write == "all" || write.split(',').any(|n| n == name);
    // WHISKER_EXPORT_ONLY=a,b: just these (by hand)
    let only = std::env::var("WHISKER_EXPORT_ONLY").ok();
    let mut done = 0;
    for spec in models() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == spec.name))
        {
            continue;
        }
        check(spec.name, dir.as_deref().filter(|_| written(spec.name)));
        done += 1;
    }
    assert!(done > 0);
}
