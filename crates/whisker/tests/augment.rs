//! Training-time augmentation: RandomResizedCrop's sampling rules, determinism per
//! (seed, epoch, image), and the exact behaviour of flip, jitter and rotation.

mod common;

use image::{Rgb, RgbImage};
use whisker::data::augment::{jitter, rotate, Augment};

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 % 256) as u8,
            (y * 11 % 256) as u8,
            ((x + y) * 3 % 256) as u8,
        ])
    })
}

#[test]
fn random_resized_crop_follows_its_ranges() {
    let a = Augment::new(224);
    for i in 0..500 {
        let mut rng = Augment::rng(1, 0, i);
        let (x, y, w, h) = a.crop_box(451, 300, &mut rng);
        assert!(x + w <= 451 && y + h <= 300, "box inside the image");
        let area = (w * h) as f64 / (451.0 * 300.0);
        let ratio = w as f64 / h as f64;
        // rounding to whole pixels can move area and ratio a little past the bounds
        assert!((0.34..=1.01).contains(&area), "area {area}");
        assert!((0.74..=1.35).contains(&ratio), "ratio {ratio}");
    }
    // a very wide image: no try fits the ratio range, the fallback is a centre crop at 4:3
    let wide = Augment {
        scale: (0.99, 1.0),
        ..Augment::new(32)
    };
    let (x, y, w, h) = wide.crop_box(1000, 100, &mut Augment::rng(0, 0, 0));
    assert_eq!((x, y, w, h), (433, 0, 133, 100));
}

#[test]
fn deterministic_per_seed_epoch_and_image() {
    let img = gradient(320, 240);
    let a = Augment::new(96);
    let once = a.apply(&img, &mut Augment::rng(5, 2, 7));
    assert_eq!(once.dimensions(), (96, 96));
    assert_eq!(once, a.apply(&img, &mut Augment::rng(5, 2, 7)));
    assert_ne!(
        once,
        a.apply(&img, &mut Augment::rng(5, 3, 7)),
        "another epoch, another view"
    );
    assert_ne!(
        once,
        a.apply(&img, &mut Augment::rng(5, 2, 8)),
        "another image, another stream"
    );
    assert_ne!(
        once,
        a.apply(&img, &mut Augment::rng(6, 2, 7)),
        "another seed"
    );
    // with everything off, the augmentation is a plain resize of the whole image
    let none = Augment {
        scale: (1.0, 1.0),
        ratio: (4.0 / 3.0, 4.0 / 3.0),
        flip: false,
        jitter: 0.0,
        rotate: 0.0,
        size: 64,
    };
    let got = none.apply(&img, &mut Augment::rng(0, 0, 0));
    assert_eq!(got, whisker::data::resize::resize_bilinear(&img, 64, 64));
}

#[test]
fn jitter_and_rotation_are_exact() {
    let img = gradient(5, 5);
    let mut same = img.clone();
    jitter(&mut same, 1.0, 1.0, 1.0);
    assert_eq!(same, img, "unit factors change nothing");
    let mut black = img.clone();
    jitter(&mut black, 0.0, 1.0, 1.0);
    assert!(black.pixels().all(|p| p.0 == [0, 0, 0]));
    let mut grey = img.clone();
    jitter(&mut grey, 1.0, 1.0, 0.0);
    assert!(
        grey.pixels()
            .all(|p| p[0].abs_diff(p[1]) <= 1 && p[1].abs_diff(p[2]) <= 1),
        "no saturation is grey"
    );
    assert_eq!(rotate(&img, 0.0), img);
    // a quarter turn of an odd square is exact, and is image's rotate270 (counter-clockwise
    // on screen)
    assert_eq!(
        rotate(&img, std::f32::consts::FRAC_PI_2),
        image::imageops::rotate270(&img)
    );
}

#[test]
fn augmented_extraction_is_deterministic_and_changes_per_epoch() {
    let device = burn::tensor::Device::flex();
    let b = whisker::Backbone::with_formula_weights("resnet18", &device).unwrap();
    let paths = vec![
        common::testdata("chelsea.png"),
        common::testdata("rocket.jpg"),
    ];
    let a = Augment::new(128);
    let run = |epoch| {
        whisker::features::extract_augmented(&b, &device, &paths, &a, 3, epoch, 2, &|_, _| {})
            .unwrap()
    };
    let (e0, e0b, e1) = (run(0), run(0), run(1));
    assert!(e0.errors.iter().all(Option::is_none));
    assert_eq!(
        e0.features, e0b.features,
        "same seed and epoch: same features"
    );
    let d = common::max_abs_diff(&e0.features, &e1.features) / common::max_abs(&e0.features);
    assert!(d > 1e-3, "a new epoch sees new views ({d})");
    assert_eq!(e0.cached, 0);
}
