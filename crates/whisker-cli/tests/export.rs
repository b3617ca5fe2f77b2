//! `whisker export` end to end: a trained run and a zoo backbone to ONNX (the declared
//! input and outputs, the classes and preprocessing in the metadata, no dangling input or
//! unused weight) and to PyTorch (the probe folded into timm's classifier, both file
//! formats, the printed rebuild code), and refusals that name the reason and write nothing.
//! The models' numbers are checked with PyTorch, ONNX Runtime and OpenVINO by
//! tools/py/check_export*.py.

mod common;
use common::*;

use whisker::export::onnx::summary;

fn ok(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// A probe trained on digits 3, 5 and 7 (EfficientNet-Lite0's real weights): the home, the
/// folder that holds it, the run.
fn probe_run() -> (tempfile::TempDir, tempfile::TempDir, std::path::PathBuf) {
    let home = home_with_weights();
    let dir = tempfile::tempdir().unwrap();
    let data = digits(dir.path(), &["3", "5", "7"], 10);
    let run = dir.path().join("run");
    ok(&whisker(home.path())
        .arg("train")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap());
    (home, dir, run)
}

#[test]
fn a_run_and_a_backbone_export_to_onnx() {
    let (home, dir, run) = probe_run();
    let out = dir.path().join("models").join("digits.onnx");
    let j = ok(&whisker(home.path())
        .arg("export")
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap());
    assert_eq!(j["outputs"], serde_json::json!(["logits", "features"]));
    assert_eq!(j["classes"], 3);
    assert_eq!(j["input"], serde_json::json!([3, 224, 224]));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(j["bytes"], bytes.len());
    let s = summary(&bytes).unwrap();
    assert_eq!(s.inputs, vec![("pixels".into(), vec![-1, 3, 224, 224])]);
    assert_eq!(
        s.outputs,
        vec![
            ("logits".into(), vec![-1, 3]),
            ("features".into(), vec![-1, 1280])
        ]
    );
    assert_eq!(s.metadata["whisker.classes"], r#"["3","5","7"]"#);
    assert!(s.metadata["whisker.weights_sha256"].starts_with("579344248a93"));
    let pre: serde_json::Value =
        serde_json::from_str(&s.metadata["whisker.preprocessing"]).unwrap();
    assert_eq!(
        (pre["resize"].as_u64(), pre["crop"].as_u64()),
        (Some(256), Some(224))
    );
    assert_eq!(pre["interpolation"], "bilinear");
    assert!(s.dangling.is_empty() && s.unused.is_empty());
    // (a probe adds its 3 × 1280 weights, 3 biases and the standardisation to the backbone)
    let zoo = dir.path().join("lite0.onnx");
    let j = ok(&whisker(home.path())
        .args(["export", "efficientnet_lite0", "--json", "--out"])
        .arg(&zoo)
        .output()
        .unwrap());
    assert_eq!(j["classes"], 1000);
    let z = summary(&std::fs::read(&zoo).unwrap()).unwrap();
    assert_eq!(z.outputs[0], ("logits".into(), vec![-1, 1000]));
    assert_eq!(
        s.weights - (z.weights - 1000 * 1280 - 1000),
        3 * 1280 + 3 + 2 * 1280
    );
    // plain output names what was written
    let o = whisker(home.path())
        .args(["export", "efficientnet_lite0", "--out"])
        .arg(&zoo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("efficientnet_lite0 →") && text.contains("outputs logits, features"),
        "{text}"
    );
}

#[test]
fn refused_exports_say_why_and_write_nothing() {
    let home = home_with_weights();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let refuse = |args: &[&str], want: &str| {
        let o = whisker(home.path()).args(args).output().unwrap();
        assert!(!o.status.success());
        no_panic(&o);
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    };
    let o = out.to_str().unwrap();
    refuse(
        &["export", "nosuchnet", "--out", o],
        "neither a run (no such file or folder) nor a backbone of the zoo",
    );
    // a run folder given --weights, and a folder that is not a run
    let notrun = dir.path().join("notrun");
    std::fs::create_dir(&notrun).unwrap();
    let n = notrun.to_str().unwrap();
    refuse(
        &["export", n, "--weights", o, "--out", o],
        "--weights is for a zoo backbone",
    );
    refuse(&["export", n, "--out", o], "notrun");
    // weights that are not a checkpoint
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    refuse(
        &[
            "export",
            "efficientnet_lite0",
            "--weights",
            bad.to_str().unwrap(),
            "--out",
            o,
        ],
        "bad.pth",
    );
    // the output is a folder: it stays as it was
    let folder = dir.path().join("folder.onnx");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"x").unwrap();
    let ob = whisker(home.path())
        .args(["export", "efficientnet_lite0", "--out"])
        .arg(&folder)
        .output()
        .unwrap();
    assert!(!ob.status.success());
    no_panic(&ob);
    assert!(stderr(&ob).contains("folder.onnx"), "{}", stderr(&ob));
    assert_eq!(std::fs::read(folder.join("keep")).unwrap(), b"x");
    // a PyTorch export needs a .safetensors or .pth name
    refuse(
        &[
            "export",
            "efficientnet_lite0",
            "--format",
            "torch",
            "--out",
            o,
        ],
        "a PyTorch export is written as .safetensors or .pth",
    );
    // an unknown format is refused by the parser
    refuse(
        &[
            "export",
            "efficientnet_lite0",
            "--format",
            "tflite",
            "--out",
            o,
        ],
        "tflite",
    );
}

#[test]
fn a_run_exports_to_pytorch_in_both_formats() {
    let (home, dir, run) = probe_run();
    let mut read = Vec::new();
    for name in ["m.safetensors", "m.pth"] {
        let out = dir.path().join(name);
        let j = ok(&whisker(home.path())
            .args(["export", "--format", "torch", "--json", "--out"])
            .arg(&out)
            .arg(&run)
            .output()
            .unwrap());
        assert_eq!(j["outputs"], serde_json::json!(["logits"]));
        assert_eq!(j["classes"], 3);
        assert_eq!(j["pytorch_model"], "timm:tf_efficientnet_lite0");
        assert_eq!(j["format"], &name[2..]);
        let py = j["python"].as_str().unwrap();
        for want in [
            "timm.create_model(\"tf_efficientnet_lite0\", pretrained=False, num_classes=3)",
            &format!("{:?}", out.display().to_string()),
            "classes = [\"3\", \"5\", \"7\"]",
            "T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224)",
        ] {
            assert!(py.contains(want), "{want} not in\n{py}");
        }
        assert_eq!(j["bytes"], std::fs::metadata(&out).unwrap().len());
        read.push(
            whisker::weights::StateDict::from_file(&out)
                .unwrap()
                .tensors,
        );
    }
    // both files hold the same tensors, under timm's names
    assert_eq!(read[0], read[1]);
    let sd = &read[0];
    assert!(sd.contains_key("conv_stem.weight") && sd.contains_key("blocks.6.0.conv_pwl.weight"));
    // the probe in the classifier's place, its standardisation folded in:
    // W'[k, j] = W[j, k] / std[j], b'[k] = b[k] − Σⱼ W'[k, j] · mean[j]
    // (the run's own file: the backbone's weights are in the test's home, not this process's)
    let trained =
        whisker::train::model_file::TrainedModel::load(&whisker::run::model_file(&run)).unwrap();
    let whisker::train::model_file::Head::Linear(h) = &trained.head else {
        panic!("a probe")
    };
    let (w, b) = (&sd["classifier.weight"], &sd["classifier.bias"]);
    assert_eq!((w.shape.clone(), b.shape.clone()), (vec![3, 1280], vec![3]));
    for k in 0..3 {
        let mut shift = 0f64;
        for j in 0..1280 {
            let want = h.w[j * 3 + k] as f64 / h.std[j] as f64;
            let got = w.data[k * 1280 + j] as f64;
            assert!(
                (got - want).abs() <= 1e-7 * want.abs().max(1e-3),
                "W'[{k}, {j}]"
            );
            shift += want * h.mean[j] as f64;
        }
        let want = h.b[k] as f64 - shift;
        assert!((b.data[k] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0));
    }
}
