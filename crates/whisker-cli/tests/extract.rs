//! `whisker extract` end to end: the Parquet and NumPy files against the library's own
//! feature vectors and feature maps, every kind of input, shards (1 and 3 give one table),
//! resumption (a partial job array, a process killed with SIGKILL), refusals that change
//! nothing, and the merged file.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use whisker::data::transforms::to_tensor;
use whisker::extract::{read_parquet_table, Table};
use whisker::model::Model;

/// A dataset of real images: two digit classes, the photos, and a file that is not an image.
fn dataset(dir: &Path) -> PathBuf {
    let data = digits(dir, &["3", "7"], 6);
    for n in ["chelsea.png", "rocket.jpg"] {
        std::fs::copy(testdata(n), data.join("3").join(n)).unwrap();
    }
    std::fs::write(data.join("7").join("broken.jpg"), b"not a jpeg").unwrap();
    data
}

fn run(home: &Path, args: &[&str], extra: &[&Path]) -> std::process::Output {
    let mut c = whisker(home);
    c.arg("extract").args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().unwrap()
}

fn ok(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// The library's feature vector (or pooled map) of one image, alone in its batch.
fn reference(model: &Model, file: &Path, layer: Option<(&str, &str)>) -> Vec<f32> {
    let device = model.backbone().device();
    let img = model.preprocess().load(file).unwrap();
    let x = to_tensor(&[img], &device);
    match layer {
        None => whisker::tensor::to_vec(model.backbone().features(x)).unwrap(),
        Some((name, pool)) => {
            let mut taps = whisker::Taps::only(&[name]);
            let _ = model.backbone().features_with(x, &mut taps);
            let map = taps.maps.into_iter().find(|(n, _)| n == name).unwrap().1;
            let [_, c, h, w] = map.dims();
            let pooled = match pool {
                "avg" => map.mean_dim(3).mean_dim(2),
                "max" => map.max_dim(3).max_dim(2),
                _ => map,
            };
            let v = whisker::tensor::to_vec(pooled).unwrap();
            assert_eq!(v.len(), if pool == "none" { c * h * w } else { c });
            v
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn same_table(a: &Table, b: &Table) {
    assert_eq!(a.paths, b.paths);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.errors, b.errors);
    for (x, y) in a.embeddings.iter().zip(&b.embeddings) {
        match (x, y) {
            (Some(x), Some(y)) => assert!(max_diff(x, y) <= 1e-6),
            (None, None) => {}
            _ => panic!("an embedding in one table only"),
        }
    }
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn extract_writes_the_librarys_features_to_parquet_and_numpy() {
    let home = home_with_weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let out = tmp.path().join("feats");
    let doc = ok(&run(
        home.path(),
        &["--json", "--batch-size", "5", "--out"],
        &[&out, &data],
    ));
    assert_eq!(doc["images"], 15);
    assert_eq!(doc["manifest"]["dim"], 1280);
    assert_eq!(doc["manifest"]["layer"], "features");
    assert_eq!(doc["failed"].as_array().unwrap().len(), 1);
    let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
    // sorted, relative to the dataset, with labels; the broken file listed with its reason
    assert_eq!(t.paths.len(), 15);
    assert!(t.paths.windows(2).all(|w| w[0] <= w[1]));
    let labels = t.labels.clone().unwrap();
    for (p, l) in t.paths.iter().zip(&labels) {
        assert_eq!(Some(&p[..1]), l.as_deref(), "{p}");
    }
    let bad = t.paths.iter().position(|p| p == "7/broken.jpg").unwrap();
    assert!(t.embeddings[bad].is_none());
    assert!(t.errors[bad].as_deref().unwrap().contains("broken.jpg"));
    assert_eq!(t.metadata["whisker.backbone"], "efficientnet_lite0");
    assert_eq!(
        t.metadata["whisker.weights_sha256"],
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
    assert_eq!(t.metadata["whisker.layer"], "features");
    assert!(t.metadata["whisker.preprocessing"].contains("\"crop\":224"));
    // every embedding is the library's feature vector of the image alone (batches of 5 with
    // a failed image inside one)
    let device = whisker::default_device();
    let model = Model::extractor(
        "efficientnet_lite0",
        Some(&testdata("efficientnet-lite0-57934424.pth")),
        &device,
    )
    .unwrap()
    .for_inference();
    let mut worst = 0f32;
    for (p, e) in t.paths.iter().zip(&t.embeddings) {
        if let Some(e) = e {
            worst = worst.max(max_diff(e, &reference(&model, &data.join(p), None)));
        }
    }
    assert!(worst <= 1e-6, "max |Δ| {worst}");
    // the classifier on those features gives classify's answer for the cat
    let cat = t.paths.iter().position(|p| p == "3/chelsea.png").unwrap();
    let logits = model
        .logits_of_features(t.embeddings[cat].as_ref().unwrap())
        .unwrap();
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(best, 282, "tiger cat");

    // NumPy: the same rows, the failed image only in the index
    let npy = tmp.path().join("npy");
    ok(&run(
        home.path(),
        &["--json", "--format", "npy", "--out"],
        &[&npy, &data],
    ));
    let bytes = std::fs::read(npy.join("part-00000.npy")).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
    let header = String::from_utf8_lossy(&bytes[10..128]).to_string();
    assert!(header.contains("'shape': (14, 1280)"), "{header}");
    let rows: Vec<f32> = bytes[128..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(rows.len(), 14 * 1280);
    let index = std::fs::read_to_string(npy.join("part-00000.csv")).unwrap();
    let lines: Vec<&str> = index.lines().collect();
    assert_eq!(lines[0], "row,path,label,error");
    assert_eq!(lines.len(), 16);
    for line in &lines[1..] {
        let f: Vec<&str> = line.splitn(4, ',').collect();
        let i = t.paths.iter().position(|p| p == f[1]).unwrap();
        match f[0].parse::<usize>() {
            Ok(r) => assert_eq!(
                &rows[r * 1280..(r + 1) * 1280],
                t.embeddings[i].as_ref().unwrap().as_slice()
            ),
            Err(_) => {
                assert!(t.embeddings[i].is_none());
                assert!(f[3].contains("broken.jpg"));
            }
        }
    }
}

#[test]
fn layers_pooled_as_asked_and_lists_of_paths() {
    let home = home_with_weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let device = whisker::default_device();
    let model = Model::extractor(
        "efficientnet_lite0",
        Some(&testdata("efficientnet-lite0-57934424.pth")),
        &device,
    )
    .unwrap()
    .for_inference();
    for (pool, dim) in [("avg", 80), ("max", 80), ("none", 80 * 14 * 14)] {
        let out = tmp.path().join(format!("l-{pool}"));
        let doc = ok(&run(
            home.path(),
            &["--json", "--layer", "_blocks.6", "--pool", pool, "--out"],
            &[&out, &data],
        ));
        assert_eq!(doc["manifest"]["dim"], dim, "{pool}");
        let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
        assert_eq!(t.metadata["whisker.layer"], "_blocks.6");
        assert_eq!(t.metadata["whisker.pool"], pool);
        let mut worst = 0f32;
        for (p, e) in t.paths.iter().zip(&t.embeddings) {
            if let Some(e) = e {
                let r = reference(&model, &data.join(p), Some(("_blocks.6", pool)));
                worst = worst.max(max_diff(e, &r));
            }
        }
        assert!(worst <= 1e-5, "{pool}: max |Δ| {worst}");
    }
    // a pooling the layer cannot take, an unknown layer: refused before anything is written
    let out = tmp.path().join("refused");
    let o = run(
        home.path(),
        &["--layer", "_blocks.6", "--pool", "cls", "--out"],
        &[&out, &data],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--pool cls"), "{}", stderr(&o));
    let o = run(
        home.path(),
        &["--layer", "_blocks.66", "--out"],
        &[&out, &data],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no layer `_blocks.66`"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    // the same images through a .txt, a .csv and a .parquet list: the same embeddings, with
    // the list's labels
    let full = read_parquet_table(
        &{
            let o = tmp.path().join("full");
            ok(&run(home.path(), &["--out"], &[&o, &data]));
            o
        }
        .join("part-00000.parquet"),
    )
    .unwrap();
    let lists = tmp.path().join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    let rel: Vec<String> = full
        .paths
        .iter()
        .map(|p| format!("../{}/{p}", data.file_name().unwrap().to_string_lossy()))
        .collect();
    std::fs::write(
        lists.join("l.txt"),
        format!("# photos\n{}\n\n", rel.join("\n")),
    )
    .unwrap();
    let mut csv = String::from("id,path,label\n");
    for (i, p) in rel.iter().enumerate() {
        csv.push_str(&format!("{i},\"{p}\",c{}\n", &full.paths[i][..1]));
    }
    std::fs::write(lists.join("l.csv"), csv).unwrap();
    // a Parquet list: whisker's own output read back as a list of paths
    for list in ["l.txt", "l.csv"] {
        let out = tmp.path().join(format!("out-{list}"));
        ok(&run(home.path(), &["--out"], &[&out, &lists.join(list)]));
        let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
        assert_eq!(t.paths, rel, "{list}");
        assert_eq!(t.labels.is_some(), list == "l.csv");
        if list == "l.csv" {
            assert_eq!(t.labels.as_ref().unwrap()[0].as_deref(), Some("c3"));
        }
        for (i, (a, b)) in t.embeddings.iter().zip(&full.embeddings).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => assert!(max_diff(a, b) <= 1e-6, "{list} {}", rel[i]),
                (None, None) => assert!(t.errors[i].as_deref().unwrap().contains("broken.jpg")),
                _ => panic!("{list}: {} differs", rel[i]),
            }
        }
    }
    let out = tmp.path().join("out-parquet");
    let plist = tmp.path().join("full").join("part-00000.parquet");
    ok(&run(home.path(), &["--out"], &[&out, &plist]));
    let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
    assert_eq!(t.paths.len(), full.paths.len());
    assert_eq!(t.labels, full.labels);
}

#[test]
fn shards_resume_and_merge_into_the_same_table() {
    let home = home_with_weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let one = tmp.path().join("one");
    ok(&run(home.path(), &["--json", "--out"], &[&one, &data]));
    let reference = read_parquet_table(&one.join("part-00000.parquet")).unwrap();

    // a job array that ran tasks 0 and 2 of 3; then a run of all: only shard 1 is computed
    let three = tmp.path().join("three");
    for id in ["0", "2"] {
        let d = ok(&run(
            home.path(),
            &["--json", "--num-shards", "3", "--shard-id", id, "--out"],
            &[&three, &data],
        ));
        assert_eq!(d["complete"], false);
    }
    let before = std::fs::read(three.join("part-00000.parquet")).unwrap();
    let merged = tmp.path().join("merged.parquet");
    let d = ok(&run(
        home.path(),
        &["--json", "--num-shards", "3", "--merge"],
        &[&merged, Path::new("--out"), &three, &data],
    ));
    assert_eq!(d["shards_computed"], serde_json::json!([1]));
    assert_eq!(d["shards_skipped"], serde_json::json!([0, 2]));
    assert_eq!(d["complete"], true);
    assert_eq!(
        std::fs::read(three.join("part-00000.parquet")).unwrap(),
        before
    );
    // shards hold 5 rows each, contiguous in the sorted listing
    let parts: Vec<Table> = (0..3)
        .map(|i| read_parquet_table(&three.join(format!("part-{i:05}.parquet"))).unwrap())
        .collect();
    assert!(parts.iter().all(|p| p.paths.len() == 5));
    assert_eq!(parts[1].metadata["whisker.shard"], "1/3");
    let cat = Table {
        paths: parts.iter().flat_map(|p| p.paths.clone()).collect(),
        labels: Some(
            parts
                .iter()
                .flat_map(|p| p.labels.clone().unwrap())
                .collect(),
        ),
        embeddings: parts.iter().flat_map(|p| p.embeddings.clone()).collect(),
        errors: parts.iter().flat_map(|p| p.errors.clone()).collect(),
        ..Default::default()
    };
    same_table(&cat, &reference);
    let m = read_parquet_table(&merged).unwrap();
    same_table(&m, &reference);
    assert!(!m.metadata.contains_key("whisker.shard"));

    // a rerun with other settings into the same folder is refused and changes nothing
    let snapshot = listing(&three);
    for args in [
        vec!["--num-shards", "4"],
        vec!["--layer", "_blocks.3"],
        vec!["--format", "npy", "--num-shards", "3"],
    ] {
        let mut a = args.clone();
        a.push("--out");
        let o = run(home.path(), &a, &[&three, &data]);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
        assert_eq!(listing(&three), snapshot, "{args:?}");
    }
    // a folder that is not an extraction is refused too
    let o = run(home.path(), &["--out"], &[&data.join("3"), &data]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("holds no whisker extraction"),
        "{}",
        stderr(&o)
    );
    // an input that changed since: another listing
    std::fs::copy(testdata("coffee.png"), data.join("7").join("coffee.png")).unwrap();
    let o = run(
        home.path(),
        &["--num-shards", "3", "--out"],
        &[&three, &data],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("listing_sha256"), "{}", stderr(&o));
    assert_eq!(listing(&three), snapshot);
}

#[test]
fn a_run_killed_mid_way_resumes_to_the_same_files() {
    let home = home_with_weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = digits(tmp.path(), &["1", "2", "5"], 12);
    let clean = tmp.path().join("clean");
    ok(&run(
        home.path(),
        &["--num-shards", "9", "--out"],
        &[&clean, &data],
    ));
    let reference: Vec<Table> = (0..9)
        .map(|i| read_parquet_table(&clean.join(format!("part-{i:05}.parquet"))).unwrap())
        .collect();

    let out = tmp.path().join("killed");
    let mut child = whisker(home.path())
        .args(["extract", "--num-shards", "9", "--batch-size", "1", "--out"])
        .arg(&out)
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once the first shard is complete (or at once, if it finished already)
    let t0 = std::time::Instant::now();
    while !out.join("_part-00001.json").exists() && t0.elapsed().as_secs() < 120 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before: Vec<usize> = (0..9)
        .filter(|&i| whisker::extract::complete_record(&out, i).is_some())
        .collect();
    assert!(!done_before.is_empty());
    assert!(
        done_before.len() < 9,
        "killed after the end: the test tests nothing"
    );
    let d = ok(&run(
        home.path(),
        &["--json", "--num-shards", "9", "--out"],
        &[&out, &data],
    ));
    let computed: Vec<usize> = d["shards_computed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let skipped: Vec<usize> = d["shards_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(skipped, done_before);
    assert_eq!(computed.len() + skipped.len(), 9);
    for (i, r) in reference.iter().enumerate() {
        let t = read_parquet_table(&out.join(format!("part-{i:05}.parquet"))).unwrap();
        same_table(&t, r);
    }
    // no temporary file is left behind once the shards are complete
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn a_transformer_without_a_classifier_gives_its_tokens_pooled() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    // DINOv2 with registers (seeded weights): a feature extractor, no ImageNet head
    let b = whisker::Backbone::with_formula_weights("dinov2_vits14_reg", &device).unwrap();
    let mut sd = b.state_dict().unwrap();
    sd.tensors.retain(|k, _| !k.starts_with("linear_head."));
    let w = tmp.path().join("dinov2_vits14_reg4_pretrain.safetensors");
    sd.save_safetensors(&w).unwrap();
    let data = digits(tmp.path(), &["4", "9"], 2);
    let model = Model::extractor("dinov2_vits14_reg", Some(&w), &device)
        .unwrap()
        .for_inference();
    let files: Vec<PathBuf> = ["4", "9"]
        .iter()
        .flat_map(|c| {
            let mut v: Vec<PathBuf> = std::fs::read_dir(data.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        })
        .collect();
    // the library's tokens of one image [T, C]: class token, 4 registers, 16 x 16 patches
    let tokens = |f: &Path| {
        let img = model.preprocess().load(f).unwrap();
        let mut taps = whisker::Taps::only(&["blocks.11"]);
        let _ = model
            .backbone()
            .features_with(to_tensor(&[img], &device), &mut taps);
        let t = taps.get_tokens("blocks.11").unwrap().clone();
        assert_eq!(t.dims(), [1, 1 + 4 + 256, 384]);
        whisker::tensor::to_vec(t).unwrap()
    };
    let c = 384;
    let features = |f: &Path| {
        let img = model.preprocess().load(f).unwrap();
        whisker::tensor::to_vec(model.backbone().features(to_tensor(&[img], &device))).unwrap()
    };
    // the final LayerNorm's tokens: the class token alone and the mean patch token, the two
    // halves of the probe feature (DINOv2's linear-probe protocol)
    for (pool, half) in [("cls", 0), ("avg", 1)] {
        let out = tmp.path().join(format!("norm-{pool}"));
        let args = [
            "--json",
            "-b",
            "dinov2_vits14_reg",
            "--layer",
            "norm",
            "--pool",
            pool,
            "--weights",
            w.to_str().unwrap(),
            "--out",
        ];
        let doc = ok(&run(home.path(), &args, &[&out, &data]));
        assert_eq!(doc["manifest"]["dim"], c, "norm {pool}");
        let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
        let mut worst = 0f32;
        for (f, e) in files.iter().zip(&t.embeddings) {
            let r = features(f)[half * c..(half + 1) * c].to_vec();
            worst = worst.max(max_diff(e.as_ref().unwrap(), &r));
        }
        assert!(worst <= 1e-5, "norm {pool}: max |Δ| {worst}");
    }
    for (pool, dim) in [("features", 768), ("cls", c), ("avg", c), ("none", 261 * c)] {
        let out = tmp.path().join(pool);
        let mut args = vec!["--json", "-b", "dinov2_vits14_reg"];
        if pool != "features" {
            args.extend(["--layer", "blocks.11", "--pool", pool]);
        }
        args.extend(["--weights", w.to_str().unwrap(), "--out"]);
        let doc = ok(&run(home.path(), &args, &[&out, &data]));
        assert_eq!(doc["manifest"]["dim"], dim, "{pool}");
        let t = read_parquet_table(&out.join("part-00000.parquet")).unwrap();
        assert_eq!(t.paths.len(), files.len());
        let mut worst = 0f32;
        for (f, e) in files.iter().zip(&t.embeddings) {
            let e = e.as_ref().unwrap();
            let r: Vec<f32> = match pool {
                "features" => features(f),
                "cls" => tokens(f)[..c].to_vec(),
                "avg" => {
                    let t = tokens(f);
                    (0..c)
                        .map(|j| (5..261).map(|i| t[i * c + j] as f64).sum::<f64>() as f32 / 256.0)
                        .collect()
                }
                _ => tokens(f),
            };
            worst = worst.max(max_diff(e, &r));
        }
        assert!(worst <= 1e-5, "{pool}: max |Δ| {worst}");
    }
}

#[test]
fn predict_writes_the_probabilities_of_a_trained_model_to_shards() {
    let home = home_with_weights();
    let tmp = tempfile::tempdir().unwrap();
    let data = digits(tmp.path(), &["0", "1", "6"], 8);
    let run_dir = tmp.path().join("run");
    let o = whisker(home.path())
        .args(["train", "--test-split", "0.25", "--out"])
        .arg(&run_dir)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(data.join("6").join("broken.png"), b"\x89PNG\r\n\x1a\n cut").unwrap();
    let out = tmp.path().join("preds");
    let merged = tmp.path().join("preds.parquet");
    let o = whisker(home.path())
        .args(["predict", "--json", "--num-shards", "2", "--out"])
        .arg(&out)
        .arg("--merge")
        .arg(&merged)
        .arg(&run_dir)
        .arg(&data)
        .output()
        .unwrap();
    let doc = ok(&o);
    assert_eq!(
        doc["manifest"]["classes"],
        serde_json::json!(["0", "1", "6"])
    );
    assert_eq!(doc["complete"], true);
    let t = read_parquet_table(&merged).unwrap();
    assert_eq!(t.paths.len(), 25);
    assert_eq!(t.dim, 3);
    assert_eq!(t.metadata["whisker.classes"], r#"["0","1","6"]"#);
    // against `whisker predict --json` on the same files (the path that classifies photos)
    let files: Vec<PathBuf> = t.paths.iter().map(|p| data.join(p)).collect();
    let o = whisker(home.path())
        .args(["predict", "--json", "-k", "3"])
        .arg(&run_dir)
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "exit 1: one image failed");
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let preds = t.predictions.as_ref().unwrap();
    let mut right = 0;
    for (i, r) in p["results"].as_array().unwrap().iter().enumerate() {
        match (&t.embeddings[i], r.get("top")) {
            (Some(probs), Some(top)) => {
                assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert_eq!(preds[i].as_deref(), top[0]["label"].as_str());
                for c in top.as_array().unwrap() {
                    let j = ["0", "1", "6"]
                        .iter()
                        .position(|l| Some(*l) == c["label"].as_str())
                        .unwrap();
                    let want = c["prob"].as_f64().unwrap() as f32;
                    assert!(
                        (probs[j] - want).abs() <= 1e-6,
                        "{}: {} vs {want}",
                        t.paths[i],
                        probs[j]
                    );
                }
                right +=
                    usize::from(preds[i].as_deref() == t.labels.as_ref().unwrap()[i].as_deref());
            }
            (None, None) => assert!(t.errors[i].as_deref().unwrap().contains("broken.png")),
            _ => panic!("{}: predicted by one path only", t.paths[i]),
        }
    }
    assert!(right >= 20, "{right} of 24 right");
    // --tta does not go with --out: refused, nothing written
    let o = whisker(home.path())
        .args(["predict", "--tta", "--out"])
        .arg(tmp.path().join("x"))
        .arg(&run_dir)
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!tmp.path().join("x").exists());
}
