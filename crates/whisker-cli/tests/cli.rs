//! The `whisker` binary end to end: weights import, classify (human and JSON output, bad
//! images, exit codes), models.

mod common;
use common::*;

#[test]
fn classify_json_with_a_bad_image() {
    let home = tempfile::tempdir().unwrap();
    // no weights yet: a clear message and a non-zero exit
    let out = whisker(home.path())
        .args(["classify"])
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("whisker weights fetch efficientnet_lite0"),
        "{err}"
    );

    let out = whisker(home.path())
        .args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(testdata("efficientnet-lite0-57934424.pth"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = home.path().join("not-an-image.jpg");
    std::fs::write(&bad, b"this is text").unwrap();
    let out = whisker(home.path())
        .args(["classify", "--json", "--top", "3"])
        .arg(testdata("chelsea.png"))
        .arg(&bad)
        .arg(testdata("rocket.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "exit 1 when an image failed");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("exactly one JSON document");
    assert_eq!(doc["backbone"], "efficientnet_lite0");
    assert_eq!(
        doc["weights_sha256"],
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
    let r = doc["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    let top = r[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["index"], 282);
    assert_eq!(top[0]["label"], "tiger cat");
    assert!((top[0]["prob"].as_f64().unwrap() - 0.3789).abs() < 1e-3);
    assert!((top[0]["logit"].as_f64().unwrap() - 9.2724).abs() < 1e-3);
    assert_eq!(top[1]["index"], 285);
    assert_eq!(top[2]["index"], 281);
    assert!(r[1]["error"].as_str().unwrap().contains("not-an-image.jpg"));
    assert!(r[1].get("top").is_none());
    assert_eq!(r[2]["top"][0]["label"], "missile");

    // human output
    let out = whisker(home.path())
        .args(["classify"])
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("1. tiger cat") && s.contains("37.89%"), "{s}");

    let out = whisker(home.path())
        .args(["weights", "list", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["weights"][0]["backbone"], "efficientnet_lite0");
}

#[test]
fn models_lists_the_zoo() {
    let home = tempfile::tempdir().unwrap();
    let out = whisker(home.path())
        .args(["models", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = doc["models"].as_array().unwrap();
    assert_eq!(m.len(), 41);
    let dino = m.iter().find(|x| x["name"] == "dinov2_vits14_reg").unwrap();
    assert_eq!(
        (
            &dino["interpolation"],
            &dino["resize"],
            &dino["input_size"],
            &dino["feature_dim"]
        ),
        (&"bicubic".into(), &256.into(), &224.into(), &768.into())
    );
    assert_eq!(
        dino["weights_source"],
        "hf:timm/vit_small_patch14_reg4_dinov2.lvd142m/model.safetensors"
    );
    let v2l = m.iter().find(|x| x["name"] == "efficientnet_v2_l").unwrap();
    assert_eq!(
        (
            &v2l["interpolation"],
            &v2l["normalization"],
            &v2l["input_size"]
        ),
        (&"bicubic".into(), &"mean/std 0.5".into(), &480.into())
    );
    assert_eq!(v2l["params"], 118_515_272);
    let r18 = m.iter().find(|x| x["name"] == "resnet18").unwrap();
    assert_eq!(r18["interpolation"], "bilinear");
    let cnt = m.iter().find(|x| x["name"] == "convnext_tiny").unwrap();
    assert_eq!(cnt["params"], 28_589_128);
    assert_eq!(cnt["feature_dim"], 768);
    assert_eq!(
        (&cnt["resize"], &cnt["input_size"]),
        (&236.into(), &224.into())
    );
    assert_eq!(r18["params"], 11_689_512);
    assert_eq!(r18["feature_dim"], 512);
    let l0 = m
        .iter()
        .find(|x| x["name"] == "efficientnet_lite0")
        .unwrap();
    assert_eq!(l0["normalization"], "(x-127)/128");
    assert_eq!(l0["cached"], serde_json::Value::Null);
}

#[test]
fn train_eval_predict_on_real_digits() {
    let home = home_with_weights();
    // 150 real digits (15 per class) as an image folder, plus a file that is not an image
    let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let data = digits(home.path(), &classes, 15);
    std::fs::write(data.join("3/Thumbs.db"), [0xD0, 0xCF, 0x11, 0xE0, 0, 0]).unwrap();
    let run = home.path().join("run");
    for mode in ["probe", "head"] {
        let epochs: &[&str] = if mode == "head" {
            &["--epochs", "6"]
        } else {
            &[]
        };
        let out = whisker(home.path())
            .args(["train", "--json", "--mode", mode])
            .args(epochs)
            .args(["--test-split", "0.3", "--force", "--out"])
            .arg(&run)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            run.join("run.json").is_file(),
            "{mode}: no completion marker"
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let acc = doc["metrics"]["test"]["accuracy"].as_f64().unwrap();
        assert!(acc > 0.7, "{mode}: test accuracy {acc}");
        assert_eq!(doc["metrics"]["skipped"], 1);
        for f in [
            "model.safetensors",
            "metrics.json",
            "split.json",
            "skipped.json",
            "summary.txt",
            "confusion.png",
        ] {
            assert!(run.join(f).is_file(), "{mode}: {f} missing");
        }
        let skipped: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("skipped.json")).unwrap()).unwrap();
        assert!(skipped[0]["path"].as_str().unwrap().ends_with("Thumbs.db"));
        // eval on the saved test split gives the same accuracy
        let out = whisker(home.path())
            .args(["eval", "--json"])
            .arg(&run)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in [
            "n",
            "accuracy",
            "mean_per_class_accuracy",
            "top3",
            "top5",
            "per_class",
            "confusion",
            "classes",
            "skipped",
        ] {
            assert!(ev.get(key).is_some(), "eval --json lacks {key}");
        }
        assert_eq!(ev["n"], doc["metrics"]["n_test"]);
        assert!((ev["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
        assert!(run.join("eval-test/confusion.png").is_file());
        // report.html: one self-contained page with the test accuracy, the skipped file, and
        // each top loss (up to 12) as its photo and its Grad-CAM
        let page = std::fs::read_to_string(run.join("report.html")).unwrap();
        assert!(
            page.contains(&format!("id=\"accuracy\">{:.2} %<", acc * 100.0)),
            "{mode}: the page shows the test accuracy {acc}"
        );
        assert!(page.contains("Thumbs.db") && page.contains("Skipped files (1)"));
        let n = ev["n"].as_f64().unwrap();
        let wrong = (n * (1.0 - acc)).round() as usize;
        assert_eq!(page.matches("<figure>").count(), wrong.min(12), "{mode}");
        assert_eq!(
            page.matches("src=\"data:image/jpeg;base64,").count(),
            2 * wrong.min(12),
            "{mode}: photo and CAM per top loss"
        );
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
        assert_eq!(
            ev["report"],
            run.join("eval-test/report.html").to_str().unwrap()
        );
        assert!(run.join("eval-test/report.html").is_file());
    }
    // the page drawn again, with fewer top losses: the run stays complete (predict below)
    let out = whisker(home.path())
        .args(["report", "--json", "--top-losses", "2"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["report"], run.join("report.html").to_str().unwrap());
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(page.matches("<figure>").count() <= 2);
    assert!(page.contains("id=\"curves\"") && page.contains("<polyline"));
    assert!(run.join("curves.png").is_file());
    // a finished run resumed does nothing more and gives the same model
    let before = home.path().join("before.safetensors");
    std::fs::copy(run.join("model.safetensors"), &before).unwrap();
    let out = whisker(home.path())
        .args([
            "train",
            "--mode",
            "head",
            "--epochs",
            "6",
            "--test-split",
            "0.3",
            "--resume",
            "--out",
        ])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the same head (the file's recorded timings may differ)
    let load = |p: &std::path::Path| whisker::train::model_file::TrainedModel::load(p).unwrap();
    let (a, b) = (load(&before), load(&run.join("model.safetensors")));
    assert_eq!(a.head, b.head);
    assert_eq!(a.meta.classes, b.meta.classes);
    // predict: classify's JSON shape with the model's classes
    let out = whisker(home.path())
        .args(["predict", "--json", "-k", "2"])
        .arg(&run)
        .arg(data.join("7/0007.png"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["backbone"], "efficientnet_lite0");
    assert_eq!(p["results"][0]["top"].as_array().unwrap().len(), 2);
    assert!(p["results"][0]["top"][0]["label"].as_str().unwrap().len() == 1);
}

#[test]
fn finetune_trains_evaluates_and_resumes() {
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1", "2"], 6);
    let run = home.path().join("run");
    let train = |extra: &[&str]| {
        let mut c = whisker(home.path());
        c.args([
            "train",
            "--json",
            "--mode",
            "finetune",
            "--unfreeze",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "6",
        ])
        .args(["--test-split", "0.34", "--val-split", "0.17", "--out"])
        .arg(&run)
        .arg(&data)
        .args(extra);
        c.output().unwrap()
    };
    let out = train(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hist = doc["settings"]["fit"]["history"].as_array().unwrap();
    assert_eq!(hist.len(), 2, "one frozen epoch, then one unfrozen");
    let acc = doc["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert!(run.join("checkpoint/finetune_state.json").is_file());
    // the model file carries the fine-tuned backbone: eval reproduces the test accuracy
    let out = whisker(home.path())
        .args(["eval", "--json"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (ev["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "{} vs {acc}",
        ev["accuracy"]
    );
    // --resume with other settings is refused
    let out = train(&["--resume", "--lr-mult", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("other settings"));
}

/// A fine-tuning run killed (SIGKILL) after a checkpoint and resumed with `--resume` ends
/// with exactly the model of an uninterrupted run.
#[test]
fn killed_finetune_resumes_to_the_same_model() {
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1"], 6);
    let args = |run: &std::path::Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = [
            "train",
            "--mode",
            "finetune",
            "--unfreeze",
            "1",
            "--epochs",
            "5",
            "--batch-size",
            "4",
            "--test-split",
            "0.34",
            "--val-split",
            "0.17",
            "--out",
        ]
        .iter()
        .map(Into::into)
        .collect();
        v.push(run.into());
        v.push(data.clone().into());
        v
    };
    let a = home.path().join("uninterrupted");
    let out = whisker(home.path()).args(args(&a)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = home.path().join("killed");
    let mut child = whisker(home.path())
        .args(args(&b))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = b.join("checkpoint/finetune_state.json");
    let start = std::time::Instant::now();
    loop {
        let epoch = std::fs::read(&state)
            .ok()
            .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok())
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v["state"].as_str()?).ok())
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or(0);
        if epoch >= 2 {
            break;
        }
        assert!(start.elapsed().as_secs() < 300, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        !b.join("model.safetensors").exists(),
        "killed before the end"
    );
    let mut resume = args(&b);
    resume.push("--resume".into());
    let out = whisker(home.path()).args(resume).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from epoch"));
    let ma = whisker::train::model_file::TrainedModel::load(&a.join("model.safetensors")).unwrap();
    let mb = whisker::train::model_file::TrainedModel::load(&b.join("model.safetensors")).unwrap();
    assert_eq!(ma.head, mb.head);
    assert!(
        ma.backbone_weights.as_ref().map(|s| &s.tensors)
            == mb.backbone_weights.as_ref().map(|s| &s.tensors)
    );
    assert_eq!(
        ma.meta.settings["fit"]["history"],
        mb.meta.settings["fit"]["history"]
    );
}

#[test]
fn featuremap_cam_and_attack_commands() {
    let home = home_with_weights();
    let out = whisker(home.path())
        .args(["featuremap", "--list-layers"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(layers.len(), 18);
    assert_eq!((layers[0].as_str(), layers[17].as_str()), ("stem", "head"));
    let png = home.path().join("fm.png");
    let out = whisker(home.path())
        .args([
            "featuremap",
            "--layer",
            "_blocks.2",
            "--channels",
            "9",
            "--out",
        ])
        .arg(&png)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).unwrap();
    assert!(img.width() > img.height(), "input beside a 3×3 grid");
    let out = whisker(home.path())
        .args(["featuremap", "--layer", "nope", "--out"])
        .arg(&png)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no layer `nope`"));
    // where it looked: the cat's Grad-CAM at the photo's size, JSON with the peak; a file that
    // is not an image is reported by name and the others still done (exit 1)
    let cams = home.path().join("cams");
    let out = whisker(home.path())
        .args(["cam", "--json", "--out"])
        .arg(&cams)
        .arg(testdata("chelsea.png"))
        .arg(home.path().join("fm.png"))
        .arg("Cargo.toml")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &r["results"][0];
    assert_eq!(
        (c["label"].as_str(), c["layer"].as_str()),
        (Some("tiger cat"), Some("head"))
    );
    assert_eq!(c["map"].as_array().unwrap().len(), 7);
    let (px, py) = (
        c["peak"]["x"].as_u64().unwrap(),
        c["peak"]["y"].as_u64().unwrap(),
    );
    assert!(
        (100..=350).contains(&px) && (40..=270).contains(&py),
        "peak ({px}, {py})"
    );
    let img = image::open(cams.join("chelsea.cam.png")).unwrap();
    assert_eq!((img.width(), img.height()), (451, 300));
    assert!(cams.join("fm.cam.png").is_file(), "any photo is explained");
    assert!(r["results"][2]["error"]
        .as_str()
        .unwrap()
        .contains("Cargo.toml"));
    let out = whisker(home.path())
        .args(["cam", "--layer", "nope", "--out"])
        .arg(&cams)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no layer `nope`"));
    // espresso → zebra within 4/255, then `classify` on the saved file agrees
    let adv = home.path().join("adv.png");
    let sbs = home.path().join("sbs.png");
    let out = whisker(home.path())
        .args(["attack", "--json", "--target", "zebra", "--side-by-side"])
        .arg(&sbs)
        .arg("--out")
        .arg(&adv)
        .arg(testdata("coffee.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["success"], true);
    assert!(r["linf_255"].as_u64().unwrap() <= 4);
    // the side-by-side shows the 600×400 photo in 448×299 cells (three, a row), nothing
    // drawn over the pictures (issue 25, item 15: it was 640×304 with a red line over each)
    let sheet = image::open(&sbs).unwrap().to_rgb8();
    assert_eq!(
        sheet.dimensions(),
        (3 * (448 + 10) + 10, 299 + 54 + 10 + 40)
    );
    let red = sheet
        .pixels()
        .filter(|p| p[0] > 180 && p[1] < 40 && p[2] < 40)
        .count();
    assert!(red < 50, "{red} pure-red pixels");
    let out = whisker(home.path())
        .args(["classify", "--json", "-k", "1"])
        .arg(&adv)
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["results"][0]["top"][0]["label"], "zebra");
    // robustness of a zoo backbone on a folder whose classes are ImageNet labels
    let ds = home.path().join("inet");
    for (class, photo) in [("tiger cat", "chelsea.png"), ("espresso", "coffee.png")] {
        std::fs::create_dir_all(ds.join(class)).unwrap();
        std::fs::copy(testdata(photo), ds.join(class).join(photo)).unwrap();
    }
    let plot = home.path().join("rob.png");
    let out = whisker(home.path())
        .args([
            "robustness",
            "efficientnet_lite0",
            "--json",
            "--eps",
            "0,4/255",
            "--steps",
            "3",
            "--out",
        ])
        .arg(&plot)
        .arg(&ds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["n"], 2);
    assert_eq!(r["clean_accuracy"], 1.0);
    assert_eq!(r["rows"][0]["robust_accuracy"], 1.0);
    assert_eq!(
        r["rows"][1]["robust_accuracy"], 0.0,
        "PGD at 4/255 breaks both"
    );
    assert!(plot.is_file());
    // the plot is not overwritten without --force (issue 25, item 15), and nothing runs
    let before = std::fs::read(&plot).unwrap();
    let out = whisker(home.path())
        .args(["robustness", "efficientnet_lite0", "--eps", "0", "--out"])
        .arg(&plot)
        .arg(&ds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&plot).unwrap(), before);
}

/// `--precision bf16|f16` (mixed precision, for GPUs) emulated on the CPU with burn's
/// operations: the logits move by the reduced precision's rounding (real Lite0 weights), the
/// ranking holds, and the feature cache keeps each precision's features apart. With the CPU
/// engine the flag changes nothing and says so.
#[test]
fn mixed_precision_is_emulated_on_burns_operations_and_cached_apart() {
    let home = home_with_weights();
    let classify = |engine: &str, precision: &str| -> (Vec<Vec<(u64, f64)>>, String) {
        let out = whisker(home.path())
            .env("WHISKER_ENGINE", engine)
            .args(["--precision", precision, "classify", "--json", "-k", "1000"])
            .arg(testdata("chelsea.png"))
            .arg(testdata("rocket.jpg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut v: Vec<(u64, f64)> = r["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| (t["index"].as_u64().unwrap(), t["logit"].as_f64().unwrap()))
                    .collect();
                v.sort_by_key(|p| p.0);
                assert_eq!(v.len(), 1000);
                v
            })
            .collect();
        (rows, stderr(&out))
    };
    let top5 = |v: &[(u64, f64)]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut t: Vec<u64> = s[..5].iter().map(|p| p.0).collect();
        t.sort();
        t
    };
    let (f32s, _) = classify("auto", "fp32");
    // measured: bf16 0.086 (chelsea) and 0.27 (rocket), f16 0.014 and 0.037 (burn-flex sums
    // half in half); the head alone in reduced precision (features from the f32 cache) moves
    // them by ≤ 0.027 / 0.004
    for (precision, lo, hi) in [("bf16", 0.04, 0.6), ("f16", 0.006, 0.1)] {
        let (got, _) = classify("burn", precision);
        for (a, b) in f32s.iter().zip(&got) {
            let d = a
                .iter()
                .zip(b)
                .fold(0f64, |m, (p, q)| m.max((p.1 - q.1).abs()));
            assert!(d > lo && d < hi, "{precision}: max |Δlogit| {d}");
            assert_eq!(top5(a), top5(b), "{precision}: the top five");
        }
    }
    // the CPU engine computes in f32 whatever the flag: the same numbers, and a warning
    let (same, err) = classify("auto", "bf16");
    assert_eq!(same, f32s);
    assert!(err.contains("applies to GPU devices"), "{err}");
    let caches = std::fs::read_dir(home.path().join("features"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("efficientnet_lite0-")
        })
        .count();
    assert_eq!(caches, 3, "f32, bf16 and f16 features apart");
}

/// DINOv2 end to end from a checkpoint file: `whisker train DIR -b dinov2_vits14 --weights
/// FILE` (a feature extractor's checkpoint, no ImageNet head) fits a probe on the class
/// token + mean patch token (768 values) and its run predicts; the same file as an ImageNet
/// classifier is refused with the reason.
#[test]
fn dinov2_probe_trains_from_a_weights_file() {
    let home = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    let b = whisker::Backbone::with_formula_weights("dinov2_vits14", &device).unwrap();
    let mut sd = b.state_dict().unwrap();
    sd.tensors.retain(|k, _| !k.starts_with("linear_head."));
    let w = home.path().join("dinov2_vits14_pretrain.safetensors");
    sd.save_safetensors(&w).unwrap();
    let data = digits(home.path(), &["0", "1"], 6);
    let run = home.path().join("run");
    let o = whisker(home.path())
        .args(["train", "-b", "dinov2_vits14", "--weights"])
        .arg(&w)
        .args(["--test-split", "0.3", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = whisker::train::model_file::TrainedModel::load(&run.join("model.safetensors")).unwrap();
    assert_eq!(m.meta.backbone, "dinov2_vits14");
    match &m.head {
        whisker::train::model_file::Head::Linear(h) => assert_eq!(h.dim, 768),
        other => panic!("a probe's head: {other:?}"),
    }
    assert_eq!(m.meta.interpolation, whisker::data::resize::Filter::Bicubic);
    let one = std::fs::read_dir(data.join("1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let predict = || {
        whisker(home.path())
            .args(["predict", "--json"])
            .arg(&run)
            .arg(&one)
            .output()
            .unwrap()
    };
    // the run needs the weights it was trained on: not cached yet, it says how
    let o = predict();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("weights fetch dinov2_vits14 --from"),
        "{}",
        stderr(&o)
    );
    let o = whisker(home.path())
        .args(["weights", "fetch", "dinov2_vits14", "--from"])
        .arg(&w)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = predict();
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // a training image: the probe fitted it
    assert_eq!(doc["results"][0]["top"][0]["label"], "1", "{doc}");
    let o = whisker(home.path())
        .args(["classify", "-b", "dinov2_vits14", "--weights"])
        .arg(&w)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no ImageNet classifier") && stderr(&o).contains("whisker train"),
        "{}",
        stderr(&o)
    );
    // its maps need no classifier: the last block's attention, one channel per head
    let png = home.path().join("attn.png");
    let o = whisker(home.path())
        .args(["featuremap", "-b", "dinov2_vits14", "--weights"])
        .arg(&w)
        .args(["--layer", "blocks.11.attn", "--out"])
        .arg(&png)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(line.contains("[6 channels, 16×16]"), "{line}");
    assert!(png.exists());
}
