//! The antialiased resize equals Pillow's `Image.resize` byte for byte with both filters
//! the zoo's weights need: BILINEAR (torchvision) and BICUBIC (timm, DINOv2), on real photos,
//! downscaling and upscaling, to exact sizes (odd, extreme aspect ratios) and by the shorter
//! side (224, 235, 256, 518), and the whole preprocessing (resize by the shorter side, then
//! torchvision's centre crop) as [`Preprocess`] runs it. Goldens: `tools/reference/make_resize_golden.py` (Pillow only).

mod common;

use common::*;
use sha2::{Digest, Sha256};
use whisker::data::resize::{resize_with, Filter};
use whisker::data::transforms::{Normalization, Preprocess};

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    filter: Filter,
    size: [u32; 2],
    /// `(shorter side, crop)`: the whole preprocessing (resize, then centre crop) instead of
    /// a resize to `size`.
    #[serde(default)]
    shorter_crop: Option<[usize; 2]>,
    sha256: String,
}

#[derive(serde::Deserialize)]
struct Golden {
    pillow: String,
    cases: Vec<Case>,
}

#[test]
fn bilinear_and_bicubic_resizes_equal_pillow() {
    let g: Golden =
        serde_json::from_str(&std::fs::read_to_string(golden_path("resize.json")).unwrap())
            .unwrap();
    assert!(g.cases.len() >= 60, "{} cases", g.cases.len());
    let bicubic = g
        .cases
        .iter()
        .filter(|c| c.filter == Filter::Bicubic)
        .count();
    assert!(bicubic >= 30, "{bicubic} bicubic cases");
    let crops = g.cases.iter().filter(|c| c.shorter_crop.is_some()).count();
    assert!(crops >= 16, "{crops} resize-and-crop cases");
    let mut wrong = Vec::new();
    let mut images = std::collections::HashMap::new();
    for c in &g.cases {
        let img = images
            .entry(c.file.clone())
            .or_insert_with(|| whisker::data::decode_file(&testdata(&c.file)).unwrap());
        let r = match c.shorter_crop {
            Some([resize, crop]) => Preprocess {
                resize,
                crop,
                norm: Normalization::ImageNet,
                filter: c.filter,
            }
            .apply(img),
            None => resize_with(img, c.size[0], c.size[1], c.filter),
        };
        assert_eq!([r.width(), r.height()], c.size);
        if hex::encode(Sha256::digest(r.as_raw())) != c.sha256 {
            wrong.push(format!("{} {} → {:?}", c.file, c.filter.name(), c.size));
        }
    }
    assert!(
        wrong.is_empty(),
        "pixels other than Pillow {}'s:\n{}",
        g.pillow,
        wrong.join("\n")
    );
}
