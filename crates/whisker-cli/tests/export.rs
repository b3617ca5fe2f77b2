//! `whisker export` end to end: a trained run and a zoo backbone to ONNX (the declared
//! input and outputs, the classes and preprocessing in the metadata, no dangling input or
//! unused weight), and refusals that name the reason and write nothing. The models' numbers
//! are checked with ONNX Runtime and OpenVINO by tools/py/check_export*.py.

mod common;
use common::*;

use whisker::export::onnx::summary;

fn ok(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_run_and_a_backbone_export_to_onnx() {
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
