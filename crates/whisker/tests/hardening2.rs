//! Hardening II (issue 25): each test is named after the item of the issue it reproduces, and
//! fails on the code before the fix.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use common::*;
use sha2::{Digest, Sha256};
use whisker::features::{extract, FeatureCache};

fn sha_hex(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

/// Item 1: a file replaced between the cache look-up (which hashes it) and its decoding must
/// not leave the new image's features stored under the old image's hash.
#[test]
fn item1_a_file_replaced_during_extraction_cannot_poison_the_feature_cache() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let b = lite0(&device);
    let x = dir.path().join("x.png");
    fs::copy(testdata("chelsea.png"), &x).unwrap();
    let chelsea_sha = sha_hex(&x);
    let coffee = testdata("coffee.png");
    let coffee_sha = sha_hex(&coffee);
    // reference features of each photo, no cache
    let reference = extract(
        &b,
        &device,
        &[testdata("chelsea.png"), coffee.clone()],
        None,
        2,
        &|_, _| {},
    )
    .unwrap();
    let cache = FeatureCache::new(Some(&dir.path().join("home")), &b, "weights");
    // the first progress call comes after the look-up and before any decoding: replace the
    // file there (a dataset being synced while the run reads it)
    let swapped = AtomicBool::new(false);
    let ex = extract(
        &b,
        &device,
        std::slice::from_ref(&x),
        Some(&cache),
        2,
        &|_, _| {
            if !swapped.swap(true, Ordering::SeqCst) {
                fs::copy(&coffee, &x).unwrap();
            }
        },
    )
    .unwrap();
    assert!(swapped.load(Ordering::SeqCst));
    assert_eq!(ex.cached, 0);
    // what was decoded was the coffee photo, and it is filed under the coffee's hash only
    assert_eq!(ex.row(0), reference.row(1));
    assert!(
        cache.get(&chelsea_sha).is_none(),
        "the cat's hash now holds features of another image"
    );
    assert_eq!(cache.get(&coffee_sha).unwrap(), reference.row(1));
    // put the cat back: its features are its own
    fs::copy(testdata("chelsea.png"), &x).unwrap();
    let back = extract(
        &b,
        &device,
        std::slice::from_ref(&x),
        Some(&cache),
        2,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(back.row(0), reference.row(0));
}

/// Item 15 (a full feature-cache disk fails the run): a cache that cannot be written is a
/// warning, and the features are still computed.
#[test]
fn item15_an_unwritable_feature_cache_does_not_fail_extraction() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let b = lite0(&device);
    let home = dir.path().join("home");
    let cache = FeatureCache::new(Some(&home), &b, "weights");
    // a file where the cache's directory should be: every write fails (as on a full disk,
    // and also as root, which ignores permission bits)
    fs::create_dir_all(cache.dir.parent().unwrap()).unwrap();
    fs::write(&cache.dir, b"not a directory").unwrap();
    let paths = [testdata("chelsea.png"), testdata("coffee.png")];
    let ex = extract(&b, &device, &paths, Some(&cache), 1, &|_, _| {}).unwrap();
    let reference = extract(&b, &device, &paths, None, 2, &|_, _| {}).unwrap();
    assert!(ex.errors.iter().all(Option::is_none));
    assert_eq!(ex.features, reference.features);
    let w = ex.cache_warning.expect("a warning");
    assert!(w.contains("could not be written"), "{w}");
}

/// Item 2: an attack moves only pixels the model sees. Chelsea (451×300) resized to 385×256
/// and centre-cropped to 224 leaves ~94-pixel strips left and right that no output depends
/// on; every method and norm must leave them exactly as they were, and the reported L2 and
/// L∞ are those of the saved image.
#[test]
fn item2_attacks_touch_only_the_pixels_the_model_sees() {
    use whisker::inspect::attack::{attack, AttackConfig, Method, Norm};
    let device = Device::flex().autodiff();
    let b = lite0(&device);
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let (w, h) = img.dimensions();
    assert_eq!((w, h), (451, 300));
    let strip = 85; // well outside the crop's support (starts at column ≈ 94)
    let cases = [
        (Method::Fgsm, Norm::Linf, 8.0 / 255.0, false),
        (Method::Fgsm, Norm::L2, 2.0, false),
        (Method::Bim, Norm::Linf, 4.0 / 255.0, false),
        (Method::Pgd, Norm::Linf, 4.0 / 255.0, true),
        (Method::Pgd, Norm::L2, 1.0, true),
        (Method::Cw, Norm::L2, 0.0, false),
    ];
    for (method, norm, eps, random_start) in cases {
        let cfg = AttackConfig {
            random_start,
            ..AttackConfig::new(method, Some(norm), eps, None, Some(2), None).unwrap()
        };
        let r = attack(&b, &img, &cfg).unwrap();
        let adv = &r.adversarial;
        let mut moved_outside = 0;
        let mut moved_inside = 0;
        for y in 0..h {
            for x in 0..w {
                let d = adv.get_pixel(x, y) != img.get_pixel(x, y);
                if x < strip || x >= w - strip {
                    moved_outside += d as usize;
                } else {
                    moved_inside += d as usize;
                }
            }
        }
        assert_eq!(
            moved_outside, 0,
            "{method:?} {norm:?}: pixels outside the crop moved"
        );
        assert!(
            moved_inside > 1000,
            "{method:?} {norm:?}: the attack did nothing"
        );
        // the figures are those of the saved image
        let d: Vec<f64> = adv
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, o)| (*a as f64 - *o as f64) / 255.0)
            .collect();
        let l2 = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        let linf = d.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!((r.l2 - l2).abs() < 1e-9 && (r.linf - linf).abs() < 1e-9);
        if norm == Norm::Linf {
            assert!(r.linf <= eps + 1e-9, "{method:?}: L∞ {}", r.linf);
        } else if method != Method::Cw {
            // rounding to u8 may add at most half a level a pixel beyond the ball
            let slack = (d.len() as f64).sqrt() * 0.5 / 255.0;
            assert!(r.l2 <= eps + slack, "{method:?}: L2 {} > {eps}", r.l2);
        }
    }
}

/// Item 9 (the API's and the CLI's Carlini–Wagner differed; `eps=1e308` panicked): one
/// definition of the defaults, and every setting checked against its range.
#[test]
fn item9_attack_settings_have_one_definition_and_ranges() {
    use whisker::inspect::attack::{AttackConfig, Method, Norm};
    let cw = AttackConfig::new(Method::Cw, None, 0.0, None, None, None).unwrap();
    assert_eq!(
        (cw.norm, cw.alpha, cw.steps),
        (Norm::L2, 0.01, 100),
        "Carlini–Wagner is L2 with Adam's 0.01"
    );
    assert!(AttackConfig::new(Method::Cw, Some(Norm::Linf), 0.0, None, None, None).is_err());
    let pgd = AttackConfig::new(Method::Pgd, None, 8.0 / 255.0, None, None, None).unwrap();
    assert_eq!(
        (pgd.norm, pgd.alpha, pgd.steps),
        (Norm::Linf, 2.0 / 255.0, 40)
    );
    let l2 = AttackConfig::new(Method::Bim, Some(Norm::L2), 1.0, None, None, None).unwrap();
    assert_eq!(l2.alpha, 0.2);
    assert_eq!(
        AttackConfig::new(Method::Fgsm, None, 0.1, None, None, None)
            .unwrap()
            .steps,
        1
    );
    for (m, n, eps, alpha, steps) in [
        (Method::Pgd, None, 1e308, None, None),
        (Method::Pgd, None, f64::NAN, None, None),
        (Method::Pgd, None, 8.0, None, None),
        (Method::Pgd, Some(Norm::L2), 1e308, None, None),
        (Method::Pgd, None, 0.1, Some(1e308), None),
        (Method::Pgd, None, 0.1, None, Some(0)),
        (Method::Pgd, None, 0.1, None, Some(1_000_000)),
        (Method::Cw, None, 1e308, Some(1e308), None),
        (Method::Cw, None, 0.0, Some(0.0), None),
    ] {
        let e = AttackConfig::new(m, n, eps, alpha, steps, None)
            .err()
            .unwrap_or_else(|| panic!("{m:?} {n:?} eps {eps} alpha {alpha:?} accepted"))
            .to_string();
        assert!(
            !e.contains("--"),
            "a library message speaks of no flag: {e}"
        );
        assert!(e.len() < 200, "{e}");
    }
    let e = AttackConfig::new(Method::Pgd, None, 8.0, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean 8/255"), "{e}");
}

/// Item 7: a progressive JPEG of thousands of empty scans over a large declared size is
/// refused at once (before any decoder runs), while real JPEGs keep decoding; the scan
/// count read from the marker structure is right on real files.
#[test]
fn item7_jpeg_scan_bombs_are_refused_at_once() {
    use whisker::data::decode::{decode_bytes_limited, jpeg_scans, DEFAULT_MAX_PIXELS};
    let bomb = |scans: usize, side: u16| -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        let [hi, lo] = side.to_be_bytes();
        b.extend([0xFF, 0xC2, 0, 11, 8, hi, lo, hi, lo, 1, 1, 0x11, 0]);
        for _ in 0..scans {
            b.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0, 0x00]);
        }
        b.extend([0xFF, 0xD9]);
        b
    };
    for (scans, side) in [(5000, 8000), (300, 64), (200, 8000)] {
        let b = bomb(scans, side);
        assert_eq!(jpeg_scans(&b), (scans, Some((side as u64, side as u64))));
        let t = std::time::Instant::now();
        let e = decode_bytes_limited(&b, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        assert!(
            e.contains("scan bomb") && e.contains(&format!("{scans} scans")),
            "{e}"
        );
    }
    // real files: a baseline photo has one scan, a progressive one a handful; both decode
    let rocket = fs::read(testdata("rocket.jpg")).unwrap();
    assert_eq!(jpeg_scans(&rocket).0, 1);
    let prog = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode/progressive.jpg"),
    )
    .unwrap();
    let (n, size) = jpeg_scans(&prog);
    assert!((2..=20).contains(&n), "{n} scans");
    let img = decode_bytes_limited(&prog, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(Some((img.width() as u64, img.height() as u64)), size);
}

/// Item 11: a dataset scan never leaves the dataset (a link to `/` walked the whole
/// filesystem), stops at a bounded depth with the right reason (a folder 3,000 deep took
/// 40 s), and a file linked into two classes is in neither, with the reason.
#[cfg(unix)]
#[test]
fn item11_dataset_scans_stay_inside_bounded_and_honest() {
    use std::os::unix::fs::symlink;
    use whisker::data::datasets::{Dataset, Labels, MAX_DEPTH};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    for c in ["cat", "dog"] {
        fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..3 {
            fs::copy(
                testdata("chelsea.png"),
                root.join(c).join(format!("{i}.png")),
            )
            .unwrap();
        }
    }
    // a link to the filesystem's root inside a class, and as a class
    symlink("/", root.join("cat").join("everything")).unwrap();
    symlink("/", root.join("rootclass")).unwrap();
    // a folder nested far deeper than the limit, with an image at the bottom
    let mut deep = root.join("dog");
    for _ in 0..(MAX_DEPTH + 20) {
        deep = deep.join("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::copy(testdata("coffee.png"), deep.join("bottom.png")).unwrap();
    // one file in two classes
    fs::copy(testdata("coffee.png"), root.join("cat").join("both.png")).unwrap();
    symlink(
        root.join("cat").join("both.png"),
        root.join("dog").join("both.png"),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let ds = Dataset::open(&root, None, Labels::Breed).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(ds.classes, ["cat", "dog"]);
    assert_eq!(ds.items.len(), 6, "{:?}", ds.items);
    let reason = |name: &str| -> String {
        ds.skipped
            .iter()
            .filter(|s| s.path.ends_with(name))
            .map(|s| s.reason.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(reason("everything").contains("outside the dataset"));
    assert!(reason("rootclass").contains("outside the dataset"));
    let r = reason("d");
    assert!(r.contains("nested more than"), "{r}");
    let r = reason("both.png");
    assert_eq!(
        ds.skipped
            .iter()
            .filter(|s| s.path.ends_with("both.png"))
            .count(),
        2,
        "{r}"
    );
    assert!(r.contains("two classes"), "{r}");
    assert!(ds.items.iter().all(|i| !i.path.ends_with("both.png")));
}

/// Item 15 (the 1,000-class report was 299 MB: a confusion matrix of k² SVG cells): with
/// many classes only the cells with a count are drawn, so the matrix follows the test set's
/// size; a small matrix keeps every cell.
#[test]
fn item15_a_thousand_class_confusion_matrix_stays_small() {
    use whisker::report::html::confusion_svg;
    use whisker::train::metrics::evaluate;
    let (k, n) = (1000usize, 3000usize);
    let classes: Vec<String> = (0..k).map(|i| format!("class number {i}")).collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
    // right two times in three, else one class off
    let logits: Vec<f32> = (0..n)
        .flat_map(|i| {
            let guess = if i % 3 == 0 {
                (labels[i] + 1) % k
            } else {
                labels[i]
            };
            (0..k).map(move |j| if j == guess { 5.0 } else { 0.0 })
        })
        .collect();
    let m = evaluate(&logits, &labels, &classes).unwrap();
    let svg = confusion_svg(&m);
    assert!(svg.len() < 3_000_000, "{} bytes", svg.len());
    let cells = svg.matches("<rect class=\"cell\"").count();
    let nonzero = m.confusion.iter().flatten().filter(|&&c| c > 0).count();
    assert_eq!(cells, nonzero);
    // a small matrix: every cell, with its tooltip
    let small: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let m = evaluate(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[0, 1], &small).unwrap();
    assert_eq!(confusion_svg(&m).matches("<rect class=\"cell\"").count(), 9);
}

/// Item 15: a class mismatch names both lists (bounded) and where they first differ, the
/// same message for `eval`, `report` and `robustness`.
#[test]
fn item15_a_class_mismatch_lists_both_class_lists() {
    use whisker::learner::check_classes;
    let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert!(check_classes(&s(&["cat", "dog"]), &s(&["cat", "dog"])).is_ok());
    let e = check_classes(&s(&["cat", "dog"]), &s(&["cat", "fox"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(cat, dog)") && e.contains("(cat, fox)") && e.contains("at 1: `dog` vs `fox`"),
        "{e}"
    );
    let many: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let e = check_classes(&many, &s(&["a"])).unwrap_err().to_string();
    assert!(e.contains("… (980 more)") && e.len() < 400, "{e}");
}

/// Item 5 (GIFs decoded as Pillow does): a large GIF within the pixel limit decodes (the gif
/// crate's default 50 MB frame limit refused an 8000×8000 one); a frame over the limit is a
/// clean refusal.
#[test]
fn item5_a_large_gif_within_the_pixel_limit_decodes() {
    use whisker::data::decode::decode_bytes_limited;
    let (w, h) = (8000u16, 8000u16);
    let palette: Vec<u8> = (0..8u8).flat_map(|i| [i * 30, 0, 0]).collect();
    let indices: Vec<u8> = (0..w as usize * h as usize)
        .map(|p| ((p % w as usize) % 7) as u8)
        .collect();
    let mut gif = Vec::new();
    {
        let mut e = gif::Encoder::new(&mut gif, w, h, &palette).unwrap();
        e.write_frame(&gif::Frame::from_indexed_pixels(w, h, indices, None))
            .unwrap();
    }
    let back = decode_bytes_limited(&gif, 89_478_485).unwrap();
    assert_eq!(back.dimensions(), (8000, 8000));
    assert_eq!(back.get_pixel(3, 5)[0], 90);
    assert!(decode_bytes_limited(&gif, 1_000_000).is_err());
}
