//! Datasets in the exact Oxford-IIIT Pet and PetImages (Cats-vs-Dogs) layouts, built from
//! real photos plus the known kinds of bad files; splits; the feature cache; and a linear
//! probe on real data (scikit-learn's handwritten digits) reaching a stated accuracy.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::*;
use whisker::data::datasets::{Dataset, Format, Labels};
use whisker::features::{extract, FeatureCache};
use whisker::train::metrics::evaluate;
use whisker::train::model_file::TrainedModel;
use whisker::train::probe;
use whisker::Backbone;

fn copy(src: &str, dst: &Path) {
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(testdata(src), dst).unwrap();
}

fn decode_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/decode")
        .join(name)
}

/// A tiny Oxford-IIIT Pet: 2 breeds (ids 1 and 2, cat species 1 and dog species 2),
/// a PNG named .jpg, a corrupt file, an image listed but missing.
fn oxford(root: &Path) {
    let img = root.join("images");
    copy("chelsea.png", &img.join("Abyssinian_1.jpg")); // a PNG named .jpg, as in the real set
    copy("rocket.jpg", &img.join("Abyssinian_2.jpg"));
    copy("coffee.png", &img.join("Abyssinian_3.jpg"));
    copy("astronaut.png", &img.join("american_bulldog_1.jpg"));
    copy("rocket.jpg", &img.join("american_bulldog_2.jpg"));
    fs::copy(
        decode_fixture("progressive.jpg"),
        img.join("american_bulldog_3.jpg"),
    )
    .unwrap();
    fs::write(img.join("american_bulldog_4.jpg"), b"GIF89a\x00\x00garbage").unwrap(); // undecodable
    let ann = root.join("annotations");
    fs::create_dir_all(&ann).unwrap();
    let head = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12: Dog\n";
    let rows = [
        "Abyssinian_1 1 1 1",
        "Abyssinian_2 1 1 1",
        "Abyssinian_3 1 1 1",
        "Abyssinian_9 1 1 1",
        "american_bulldog_1 2 2 1",
        "american_bulldog_2 2 2 1",
        "american_bulldog_3 2 2 1",
        "american_bulldog_4 2 2 1",
    ];
    fs::write(ann.join("list.txt"), format!("{head}{}\n", rows.join("\n"))).unwrap();
    fs::write(ann.join("trainval.txt"), "Abyssinian_1 1 1 1\nAbyssinian_2 1 1 1\namerican_bulldog_1 2 2 1\namerican_bulldog_2 2 2 1\n").unwrap();
    fs::write(
        ann.join("test.txt"),
        "Abyssinian_3 1 1 1\namerican_bulldog_3 2 2 1\namerican_bulldog_4 2 2 1\n",
    )
    .unwrap();
}

/// A tiny PetImages with the known bad files: Thumbs.db, an empty Cat/666.jpg, an
/// undecodable Dog/11702.jpg, a CMYK JPEG and a truncated JPEG.
fn petimages(root: &Path) {
    let cat = root.join("PetImages/Cat");
    let dog = root.join("PetImages/Dog");
    copy("chelsea.png", &cat.join("0.jpg"));
    fs::copy(decode_fixture("baseline.jpg"), cat.join("1.jpg")).unwrap();
    fs::copy(decode_fixture("cmyk.jpg"), cat.join("2.jpg")).unwrap();
    fs::write(cat.join("666.jpg"), b"").unwrap();
    fs::write(
        cat.join("Thumbs.db"),
        [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0],
    )
    .unwrap();
    copy("astronaut.png", &dog.join("0.jpg"));
    copy("coffee.png", &dog.join("1.jpg"));
    let rocket = fs::read(testdata("rocket.jpg")).unwrap();
    fs::write(dog.join("2.jpg"), &rocket[..rocket.len() / 2]).unwrap(); // truncated
    let mut bad = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bad.extend(std::iter::repeat_n(0x55, 400));
    fs::write(dog.join("11702.jpg"), bad).unwrap();
    fs::write(
        dog.join("Thumbs.db"),
        [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0],
    )
    .unwrap();
}

fn names(ds: &Dataset, idx: &[usize]) -> Vec<String> {
    idx.iter()
        .map(|&i| {
            ds.items[i]
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect()
}

#[test]
fn oxford_pets_layout() {
    let dir = tempfile::tempdir().unwrap();
    oxford(dir.path());
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    assert_eq!(ds.format, Format::OxfordPets);
    assert_eq!(ds.classes, ["Abyssinian", "american_bulldog"]);
    assert_eq!(ds.items.len(), 7);
    assert_eq!(ds.skipped.len(), 1);
    assert!(ds.skipped[0].path.ends_with("images/Abyssinian_9.jpg"));
    assert!(ds.skipped[0].reason.contains("missing"));
    let split = ds.split(0.5, 0.0, 0);
    let mut test = names(&ds, &split.test);
    test.sort();
    assert_eq!(
        test,
        [
            "Abyssinian_3.jpg",
            "american_bulldog_3.jpg",
            "american_bulldog_4.jpg"
        ],
        "official test split"
    );
    assert_eq!(split.train.len() + split.val.len(), 4);
    let sp = Dataset::open(dir.path(), None, Labels::Species).unwrap();
    assert_eq!(sp.classes, ["cat", "dog"]);
    assert_eq!(sp.items.iter().filter(|i| i.label == 1).count(), 4);
    // the undecodable file is found at extraction and reported with its name
    let device = Device::flex();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let ex = extract(&b, &device, &paths, None, 4, &|_, _| {}).unwrap();
    let failed: Vec<&String> = ex.errors.iter().flatten().collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].contains("american_bulldog_4.jpg"),
        "{}",
        failed[0]
    );
    // the PNG named .jpg was decoded by content: same features as chelsea.png
    let direct = b.features(whisker::data::transforms::to_tensor(
        &[b.preprocess().load(&testdata("chelsea.png")).unwrap()],
        &device,
    ));
    assert!(max_abs_diff(ex.row(0), &to_vec(direct)) < 1e-6);
}

#[test]
fn petimages_layout_skips_the_known_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    petimages(dir.path());
    for root in [dir.path().to_path_buf(), dir.path().join("PetImages")] {
        let ds = Dataset::open(&root, None, Labels::Breed).unwrap();
        assert_eq!(ds.format, Format::CatsVsDogs);
        assert_eq!(ds.classes, ["Cat", "Dog"]);
        let mut skipped: Vec<(String, String)> = ds
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path
                        .strip_prefix(dir.path().join("PetImages"))
                        .unwrap()
                        .display()
                        .to_string(),
                    s.reason.clone(),
                )
            })
            .collect();
        skipped.sort();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(skipped[0], ("Cat/666.jpg".into(), "empty file".into()));
        assert!(skipped[1].0 == "Cat/Thumbs.db" && skipped[1].1.contains("Thumbs.db"));
        assert_eq!(skipped[2].0, "Dog/Thumbs.db");
        assert_eq!(ds.items.len(), 7, "3 cats + 4 dogs pass the content check");
    }
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    let device = Device::flex();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let ex = extract(&b, &device, &paths, None, 3, &|_, _| {}).unwrap();
    let mut failed: Vec<String> = ex.errors.iter().flatten().cloned().collect();
    failed.sort();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].contains("Dog/11702.jpg"), "{failed:?}");
    assert!(
        failed[1].contains("Dog/2.jpg") && failed[1].contains("truncated"),
        "{failed:?}"
    );
    // the CMYK cat decodes
    assert!(ex.errors[2].is_none());
}

#[test]
fn bad_datasets_are_clear_errors_and_splits_are_seeded_and_stratified() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("b/notes.txt"), "x").unwrap();
    let e = Dataset::open(root, None, Labels::Breed)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no images"), "{e}");
    copy("chelsea.png", &root.join("a/1.png"));
    let e = Dataset::open(root, None, Labels::Breed)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no usable image: b"), "{e}");
    for i in 0..10 {
        copy("chelsea.png", &root.join(format!("a/{i}.png")));
        copy("coffee.png", &root.join(format!("b/{i}.png")));
    }
    let ds = Dataset::open(root, Some(Format::ImageFolder), Labels::Breed).unwrap();
    assert_eq!(ds.class_counts(), [10, 10]);
    let s1 = ds.split(0.2, 0.3, 7);
    assert_eq!(s1, ds.split(0.2, 0.3, 7), "same seed, same split");
    assert_ne!(s1, ds.split(0.2, 0.3, 8));
    for part in [&s1.train, &s1.val, &s1.test] {
        let a = part.iter().filter(|&&i| ds.items[i].label == 0).count();
        assert_eq!(a * 2, part.len(), "stratified");
    }
    assert_eq!((s1.train.len(), s1.val.len(), s1.test.len()), (10, 4, 6));
}

#[test]
fn feature_cache_is_reused_and_follows_file_content() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let img = dir.path().join("x.png");
    copy("chelsea.png", &img);
    let cache = FeatureCache::new(Some(&dir.path().join("home")), &b, "sha-of-weights");
    let first = extract(
        &b,
        &device,
        std::slice::from_ref(&img),
        Some(&cache),
        2,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(first.cached, 0);
    let second = extract(
        &b,
        &device,
        std::slice::from_ref(&img),
        Some(&cache),
        2,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(second.cached, 1);
    assert_eq!(first.features, second.features);
    copy("coffee.png", &img); // same name, new content: extracted again
    let third = extract(
        &b,
        &device,
        std::slice::from_ref(&img),
        Some(&cache),
        2,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(third.cached, 0);
    assert!(max_abs_diff(&third.features, &first.features) > 0.1);
    // other weights: another cache
    let other = FeatureCache::new(Some(&dir.path().join("home")), &b, "other-weights");
    assert_ne!(other.dir, cache.dir);
}

#[test]
fn probe_on_real_digits_reaches_90_percent() {
    let dir = tempfile::tempdir().unwrap();
    let n = whisker::data::digits::write_image_folder(
        &fs::read(testdata("digits.csv.gz")).unwrap(),
        dir.path(),
        Some(500),
    )
    .unwrap();
    assert_eq!(n, 500);
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    assert_eq!(
        ds.classes,
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    );
    let split = ds.split(0.1, 0.3, 0);
    let device = Device::flex();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let ex = extract(&b, &device, &paths, None, 16, &|_, _| {}).unwrap();
    assert!(ex.errors.iter().all(Option::is_none));
    let gather = |idx: &[usize]| {
        let x: Vec<f32> = idx.iter().flat_map(|&i| ex.row(i).to_vec()).collect();
        let y: Vec<usize> = idx.iter().map(|&i| ds.items[i].label).collect();
        (x, y)
    };
    let (tx, ty) = gather(&split.train);
    let (vx, vy) = gather(&split.val);
    let (sx, sy) = gather(&split.test);
    let fit = probe::fit(
        probe::Samples { x: &tx, y: &ty },
        probe::Samples { x: &vx, y: &vy },
        ex.dim,
        10,
        &device,
        200,
    )
    .unwrap();
    let m = evaluate(&fit.head.logits(&sx, &device).unwrap(), &sy, &ds.classes).unwrap();
    println!(
        "digits probe: test accuracy {:.3} (n = {}), l2 {}",
        m.accuracy, m.n, fit.l2
    );
    assert!(m.accuracy >= 0.90, "test accuracy {}", m.accuracy);
    assert!(m.top5 >= m.top3 && m.top3 >= m.accuracy);
    assert_eq!(m.confusion.iter().flatten().sum::<usize>(), m.n);
    // the model file round-trips
    let model = TrainedModel {
        meta: whisker::train::model_file::ModelMeta {
            format: "whisker-model".into(),
            version: 1,
            backbone: "efficientnet_lite0".into(),
            weights_sha256: "ab".repeat(32),
            resize: 256,
            crop: 224,
            normalization: "(x-127)/128".into(),
            interpolation: whisker::data::resize::Filter::Bilinear,
            classes: ds.classes.clone(),
            head: "linear".into(),
            settings: serde_json::json!({"seed": 0}),
            metrics: serde_json::json!({"accuracy": m.accuracy}),
        },
        head: whisker::train::model_file::Head::Linear(fit.head),
        backbone_weights: None,
    };
    let p = dir.path().join("model.safetensors");
    model.save(&p).unwrap();
    let back = TrainedModel::load(&p).unwrap();
    assert_eq!(back.meta, model.meta);
    assert!(back.head == model.head, "head tensors round-trip");
    let e = TrainedModel::load(&testdata("efficientnet-lite0-57934424.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a whisker model"), "{e}");
}

#[test]
fn probe_matches_a_known_optimum() {
    // two well-separated Gaussian-like clusters from the formula hash: the probe must
    // classify its own training data perfectly and give calibrated, finite logits
    let d = 8;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..200u64 {
        let c = (i % 2) as usize;
        for j in 0..d as u64 {
            let u = whisker::weights::formula::unit(i * 31 + j, 7) as f32 - 0.5;
            x.push(u + if j == 0 { 3.0 * c as f32 } else { 0.0 });
        }
        y.push(c);
    }
    let device = Device::flex();
    let fit = probe::fit(
        probe::Samples { x: &x, y: &y },
        probe::Samples { x: &[], y: &[] },
        d,
        2,
        &device,
        500,
    )
    .unwrap();
    let m = evaluate(
        &fit.head.logits(&x, &device).unwrap(),
        &y,
        &["a".into(), "b".into()],
    )
    .unwrap();
    assert_eq!(m.accuracy, 1.0);
    assert!(m.log_loss < 0.2 && m.log_loss.is_finite());
}
