//! Preprocessing equals Pillow/torchvision byte for byte on real photos: decoding, the
//! antialiased bilinear resize (downscaling and upscaling) and the centre crop.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use whisker::data::resize::resize_shorter;
use whisker::data::transforms::center_crop;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    decoded_sha256: String,
    size: [u32; 2],
    resize: u32,
    resized: [u32; 2],
    resized_sha256: String,
    crop: u32,
    cropped_sha256: String,
}

#[test]
fn decode_resize_crop_equal_pillow() {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(golden_path("preprocess.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 7);
    for c in cases {
        let img = whisker::data::decode_file(&testdata(&c.file)).unwrap();
        assert_eq!([img.width(), img.height()], c.size, "{}", c.file);
        assert_eq!(
            sha(img.as_raw()),
            c.decoded_sha256,
            "{}: decoded pixels differ from Pillow",
            c.file
        );
        let r = resize_shorter(&img, c.resize);
        assert_eq!(
            [r.width(), r.height()],
            c.resized,
            "{} → {}",
            c.file,
            c.resize
        );
        assert_eq!(
            sha(r.as_raw()),
            c.resized_sha256,
            "{} → {}: resized pixels differ from Pillow",
            c.file,
            c.resize
        );
        let cr = center_crop(&r, c.crop);
        assert_eq!(
            sha(cr.as_raw()),
            c.cropped_sha256,
            "{} crop {}",
            c.file,
            c.crop
        );
    }
}

#[test]
fn crop_offsets_round_half_to_even() {
    use whisker::data::transforms::center_crop_offset;
    // torchvision: int(round((size - crop) / 2.0)), Python rounds half to even
    assert_eq!(center_crop_offset(256, 224), 16);
    assert_eq!(center_crop_offset(225, 224), 0); // 0.5 -> 0
    assert_eq!(center_crop_offset(227, 224), 2); // 1.5 -> 2
    assert_eq!(center_crop_offset(229, 224), 2); // 2.5 -> 2
    assert_eq!(center_crop_offset(231, 224), 4); // 3.5 -> 4
    assert_eq!(center_crop_offset(384, 224), 80);
}
