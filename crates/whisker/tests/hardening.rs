//! Regression tests of the hardening issue, one per defect found by the adversarial review:
//! honest metrics, decompression bombs, odd file names and link loops, non-finite weights,
//! the weights cache, dataset downloads, divergence, and corrupt checkpoints.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use common::*;
use whisker::data::datasets::{Dataset, Labels};
use whisker::data::decode::{decode_bytes_limited, DecodeFailure, DEFAULT_MAX_PIXELS};
use whisker::data::resize::{resize_shorter, resize_shorter_crop};
use whisker::data::transforms::{center_crop, Normalization, Preprocess};
use whisker::train::metrics::evaluate;
use whisker::Error;

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("c{i}")).collect()
}

// ---------------------------------------------------------------- 1. metrics

#[test]
fn defect1_ties_count_as_wrong_and_nan_logits_are_an_error() {
    // a model that scores every class the same (an un-fitted probe): 0 %, not 100 %
    let k = 10;
    let labels: Vec<usize> = (0..30).map(|i| i % k).collect();
    let m = evaluate(&vec![0.0; 30 * k], &labels, &names(k)).unwrap();
    assert_eq!(m.accuracy, 0.0);
    assert_eq!(
        m.top3, 0.0,
        "ten tied classes: the true one is not in the top 3"
    );
    assert_eq!(m.mean_per_class_accuracy, 0.0);
    let diag: usize = (0..k).map(|c| m.confusion[c][c]).sum();
    assert_eq!(diag, 0, "the confusion matrix agrees with the accuracy");
    assert_eq!(m.confusion.iter().flatten().sum::<usize>(), 30);
    // a tie between the true class and one other is wrong too, whichever index is lower
    let m = evaluate(&[2.0, 2.0, 0.0, 0.0, 2.0, 2.0], &[0, 1], &names(3)).unwrap();
    assert_eq!(m.accuracy, 0.0);
    assert_eq!(m.confusion[0][1], 1);
    assert_eq!(
        m.confusion[1][2], 1,
        "the first tied class other than the true one"
    );
    // top-3 with a tie at the third place: the true class shares it, so it is not in the top 3
    let m = evaluate(&[5.0, 4.0, 1.0, 1.0], &[2], &names(4)).unwrap();
    assert_eq!(m.top3, 0.0);
    // a clear decision is right
    let m = evaluate(&[0.0, 3.0, 1.0], &[1], &names(3)).unwrap();
    assert_eq!((m.accuracy, m.top3), (1.0, 1.0));
    // NaN or infinite logits (weights holding Inf): an error, not a result
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = evaluate(&[0.0, bad, 1.0, 1.0, 0.0, 0.0], &[1, 0], &names(3)).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
        assert!(e.to_string().contains("1 of 2 images"), "{e}");
    }
}

// ---------------------------------------------------------------- 2. decompression bombs

/// Small files that declare huge images, as an attacker would write them
/// (`tests/fixtures/bombs`).
pub fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bombs");
    ["bomb.png", "bomb.jpg", "bomb.gif", "bomb.bmp"]
        .into_iter()
        .map(|n| (n, std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

#[test]
fn defect2_decompression_bombs_are_refused_before_decoding() {
    for (name, bytes) in bombs() {
        let t = std::time::Instant::now();
        let e = decode_bytes_limited(&bytes, DEFAULT_MAX_PIXELS).unwrap_err();
        match e {
            DecodeFailure::TooLarge { width, height, .. } => {
                assert!(width * height > DEFAULT_MAX_PIXELS, "{name}")
            }
            other => panic!("{name}: {other}"),
        }
        assert!(t.elapsed().as_secs() < 2, "{name} took {:?}", t.elapsed());
    }
    // the error of a file names it and says how to raise the limit
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.png");
    std::fs::write(&p, &bombs()[0].1).unwrap();
    let e = whisker::data::decode_file(&p).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bomb.png") && msg.contains("60000×60000"),
        "{msg}"
    );
    assert!(msg.contains("--max-pixels"), "{msg}");
    // a real image under a small limit is refused the same way, over it decodes
    let png = std::fs::read(testdata("chelsea.png")).unwrap();
    assert!(matches!(
        decode_bytes_limited(&png, 1000),
        Err(DecodeFailure::TooLarge { .. })
    ));
    assert!(decode_bytes_limited(&png, DEFAULT_MAX_PIXELS).is_ok());
}

#[test]
fn defect2_extreme_aspect_ratios_resize_in_bounded_memory() {
    // a 1 × 20,000 strip: the resized image would be 256 × 5,120,000 (3.9 GB); only the
    // centre crop is computed
    let strip = image::RgbImage::from_fn(1, 20000, |_, y| image::Rgb([(y % 251) as u8, 7, 200]));
    let pre = Preprocess {
        resize: 256,
        crop: 224,
        norm: Normalization::ImageNet,
        filter: whisker::data::resize::Filter::Bilinear,
    };
    let t = std::time::Instant::now();
    let out = pre.apply(&strip);
    assert_eq!(out.dimensions(), (224, 224));
    assert!(t.elapsed().as_secs() < 5);
    assert_eq!(pre.tta_views(&strip).len(), 6);
    // computing the window gives the same bytes as resizing all and cropping, for shapes
    // that upscale, downscale, or keep one side
    let mut rng = whisker::data::datasets::SplitMix64(7);
    for (w, h) in [
        (3, 400),
        (400, 3),
        (300, 200),
        (257, 256),
        (256, 256),
        (90, 1000),
        (50, 60),
    ] {
        let img = image::RgbImage::from_fn(w, h, |_, _| {
            image::Rgb([
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ])
        });
        for (size, crop) in [(256, 224), (73, 64), (64, 72)] {
            let full = center_crop(&resize_shorter(&img, size), crop);
            assert_eq!(
                resize_shorter_crop(&img, size, crop),
                full,
                "{w}×{h} resize {size} crop {crop}"
            );
        }
    }
}

// ---------------------------------------------------------------- 3, 4. names and links

fn png_bytes(v: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([v, v, v]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn class_folders(root: &Path, per_class: usize) {
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..per_class {
            std::fs::write(root.join(c).join(format!("{i}.png")), png_bytes(i as u8)).unwrap();
        }
    }
}

#[cfg(unix)]
#[test]
fn defect3_non_utf8_file_names_are_skipped_with_a_reason() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    class_folders(dir.path(), 3);
    let odd = dir
        .path()
        .join("a")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::write(&odd, png_bytes(9)).unwrap();
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    assert_eq!(ds.items.len(), 6);
    let s = ds.skipped.iter().find(|s| s.path == odd).expect("skipped");
    assert!(s.reason.contains("not valid UTF-8"), "{}", s.reason);
    // the file itself still decodes (classify and predict accept it)
    assert!(whisker::data::decode_file(&odd).is_ok());
}

#[cfg(unix)]
#[test]
fn defect4_symlink_loops_are_not_followed_and_files_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    class_folders(&root, 15);
    // a loop to the dataset root and two self-links (exponential if followed)
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink(".", root.join("b/self")).unwrap();
    std::os::unix::fs::symlink(".", root.join("b/self2")).unwrap();
    // a second name for an image of another class
    std::os::unix::fs::symlink("../a/0.png", root.join("b/zz-link.png")).unwrap();
    // a class folder that is a link to another class
    std::os::unix::fs::symlink("a", root.join("c")).unwrap();
    // a FIFO among the images (reading it would block forever) and a dangling link
    assert!(std::process::Command::new("mkfifo")
        .arg(root.join("a/pipe.png"))
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("gone.png", root.join("a/dangling.png")).unwrap();
    let t = std::time::Instant::now();
    let ds = Dataset::open(&root, None, Labels::Breed).unwrap();
    assert!(t.elapsed().as_secs() < 5);
    assert_eq!(ds.classes, vec!["a", "b"]);
    // 30 files, one of them (a/0.png) also linked into class b: in neither (issue 25, item
    // 11: which class it is, the dataset does not say)
    assert_eq!(
        ds.items.len(),
        29,
        "each file counted once, a file in two classes in none"
    );
    let mut seen = std::collections::HashSet::new();
    for it in &ds.items {
        assert!(seen.insert(std::fs::canonicalize(&it.path).unwrap()));
    }
    let reasons: Vec<&str> = ds.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("already scanned")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("two classes")),
        "{reasons:?}"
    );
}

// ---------------------------------------------------------------- 5. non-finite weights

#[test]
fn defect5_nan_and_inf_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd =
        whisker::weights::StateDict::from_file(&testdata("efficientnet-lite0-57934424.pth"))
            .unwrap();
    for (i, bad) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
        let key = sd.tensors.keys().nth(5 + i).unwrap().clone();
        let mut s2 = sd.clone();
        s2.tensors.get_mut(&key).unwrap().data[3] = bad;
        let p = dir.path().join(format!("bad{i}.safetensors"));
        s2.save_safetensors(&p).unwrap();
        let e = whisker::Backbone::from_file("efficientnet_lite0", &p, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&key) && e.contains("non-finite"), "{e}");
        // and the cache does not import it
        let cache = whisker::cache::Cache::new(dir.path().join("home"));
        let e = cache.import("efficientnet_lite0", &p, false).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        assert!(cache.list().unwrap().is_empty());
    }
    sd.tensors.clear();
}

// ---------------------------------------------------------------- 6. the weights cache

#[test]
fn defect6_verified_weights_are_never_replaced_silently() {
    let home = tempfile::tempdir().unwrap();
    let cache = whisker::cache::Cache::new(home.path());
    let real = testdata("efficientnet-lite0-57934424.pth");
    let first = cache.import("efficientnet_lite0", &real, false).unwrap();
    // a different checkpoint under the official file name
    let mut sd = whisker::weights::StateDict::from_file(&real).unwrap();
    for t in sd.tensors.values_mut() {
        for v in t.data.iter_mut().take(1) {
            *v += 0.5;
        }
    }
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("efficientnet-lite0-57934424.pth");
    sd.save_safetensors(&other).unwrap();
    let e = cache
        .import("efficientnet_lite0", &other, false)
        .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let now = cache.require("efficientnet_lite0").unwrap();
    assert_eq!(now.sha256, first.sha256, "the cached weights are unchanged");
    // importing the same file again is fine; --force replaces on purpose
    cache.import("efficientnet_lite0", &real, false).unwrap();
    let forced = cache.import("efficientnet_lite0", &other, true).unwrap();
    assert_ne!(forced.sha256, first.sha256);
    // an unverified download (no sha256 given) of random bytes never enters the cache
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (base, _, _) = serve(HashMap::from([("/w.pth".to_string(), body)]), 0);
    let home2 = tempfile::tempdir().unwrap();
    let cache2 = whisker::cache::Cache::new(home2.path());
    let e = cache2
        .fetch_url(
            "resnet18",
            &format!("{base}/w.pth"),
            None,
            false,
            &|_, _| {},
        )
        .unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    assert!(cache2.list().unwrap().is_empty());
    let d = home2.path().join("weights/resnet18");
    assert_eq!(std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0), 0);
}

// ---------------------------------------------------------------- 7. dataset downloads

fn md5_hex(b: &[u8]) -> &'static str {
    use md5::Digest;
    Box::leak(hex::encode(md5::Md5::digest(b)).into_boxed_str())
}

#[test]
fn defect7_downloads_check_leftover_archives_and_extract_all_or_nothing() {
    use whisker::data::download::{download_archives, extract_atomically, Archive};
    let good = tar_gz(&[("data/a.txt", b"hello".to_vec())]);
    let (base, requests, _) = serve(HashMap::from([("/d.tar.gz".to_string(), good.clone())]), 0);
    let url: &'static str = Box::leak(format!("{base}/d.tar.gz").into_boxed_str());
    let archives = [Archive {
        url,
        md5: Some(md5_hex(&good)),
    }];
    // an archive left in .downloads by an earlier run, but not the right one
    let dest = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dest.path().join(".downloads")).unwrap();
    std::fs::write(
        dest.path().join(".downloads/d.tar.gz"),
        tar_gz(&[("data/evil.txt", b"x".to_vec())]),
    )
    .unwrap();
    download_archives(&archives, dest.path(), None, &|_, _| {}).unwrap();
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "downloaded again"
    );
    assert!(dest.path().join("data/a.txt").is_file());
    assert!(!dest.path().join("data/evil.txt").exists());
    // a wrong archive from the server: the message says md5 (not "sha256 md5")
    let dest2 = tempfile::tempdir().unwrap();
    let wrong = [Archive {
        url,
        md5: Some("00000000000000000000000000000000"),
    }];
    let e = download_archives(&wrong, dest2.path(), None, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("md5 ") && !e.contains("sha256"), "{e}");
    // an archive refused half-way leaves none of its entries
    let bad = {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts: zip::write::SimpleFileOptions = Default::default();
        for (name, data) in [
            ("data/one.txt", "1"),
            ("data/two.txt", "2"),
            ("../escape.txt", "3"),
        ] {
            z.start_file(name, opts).unwrap();
            z.write_all(data.as_bytes()).unwrap();
        }
        z.finish().unwrap().into_inner()
    };
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("bad.zip");
    std::fs::File::create(&arch)
        .unwrap()
        .write_all(&bad)
        .unwrap();
    let out = dir.path().join("out");
    assert!(extract_atomically(&arch, &out).is_err());
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ---------------------------------------------------------------- 8. divergence

#[test]
fn defect8_a_diverging_head_stops_with_an_error() {
    use whisker::train::head::{HeadConfig, HeadState};
    use whisker::train::probe::Samples;
    let mut rng = whisker::data::datasets::SplitMix64(3);
    let (n, dim, k) = (40, 8, 3);
    let x: Vec<f32> = (0..n * dim)
        .map(|_| rng.next_f64() as f32 * 4.0 - 2.0)
        .collect();
    let y: Vec<usize> = (0..n).map(|i| i % k).collect();
    let cfg = HeadConfig {
        lr: 1e30,
        epochs: 3,
        dropout: 0.0,
        ..HeadConfig::default()
    };
    let mut s = HeadState::new(Samples { x: &x, y: &y }, dim, k, &cfg);
    let device = whisker::default_device();
    let mut err = None;
    for _ in 0..3 {
        match s.epoch(
            Samples { x: &x, y: &y },
            Samples { x: &x, y: &y },
            &cfg,
            &device,
        ) {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("a learning rate of 1e30 diverges");
    assert!(matches!(e, Error::NonFinite(_)), "{e}");
}

// ---------------------------------------------------------------- 9. corrupt checkpoints

#[test]
fn defect9_checkpoints_with_flipped_bytes_are_refused() {
    use whisker::train::head::{HeadConfig, HeadState};
    use whisker::train::probe::Samples;
    let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    let y = vec![0, 1, 0, 1, 0, 1];
    let cfg = HeadConfig {
        hidden: 4,
        ..HeadConfig::default()
    };
    let s = HeadState::new(Samples { x: &x, y: &y }, 4, 2, &cfg);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("checkpoint.safetensors");
    s.save(&p, &cfg).unwrap();
    assert!(HeadState::load(&p).is_ok());
    let good = std::fs::read(&p).unwrap();
    // flip one bit in every 97th byte position, one at a time: never a silent resume
    let mut refused = 0;
    for i in (0..good.len()).step_by(97) {
        let mut b = good.clone();
        b[i] ^= 0x10;
        std::fs::write(&p, &b).unwrap();
        match HeadState::load(&p) {
            Err(_) => refused += 1,
            Ok(_) => panic!(
                "a flipped bit at byte {i} of {} was not detected",
                good.len()
            ),
        }
    }
    assert!(refused > 3);
}

#[test]
fn defect9_run_directories_have_one_writer_and_a_completion_marker() {
    use whisker::run::{check_complete, RunWriter, Start};
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let w = RunWriter::open(&run, Start::Fresh { force: false }).unwrap();
    // a second writer is refused while the first holds the lock
    let e = RunWriter::open(&run, Start::Fresh { force: true }).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    std::fs::write(run.join("split.json"), b"{}").unwrap();
    std::fs::write(run.join("model.safetensors"), b"model").unwrap();
    // before the marker: incomplete
    assert!(check_complete(&run)
        .unwrap_err()
        .to_string()
        .contains("incomplete"));
    w.finish().unwrap();
    check_complete(&run).unwrap();
    drop(w);
    // a later fresh run does not overwrite it without --force
    let e = RunWriter::open(&run, Start::Fresh { force: false }).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    // a changed file is detected
    std::fs::write(run.join("model.safetensors"), b"mode1").unwrap();
    assert!(matches!(
        check_complete(&run).unwrap_err(),
        Error::Checksum { .. }
    ));
    // --force removes the earlier run's files before anything is written
    let _w = RunWriter::open(&run, Start::Fresh { force: true }).unwrap();
    assert!(!run.join("model.safetensors").exists());
    assert!(!run.join("run.json").exists());
}
