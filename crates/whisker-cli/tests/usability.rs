//! What a new user ran into (the library/CLI issue): runs found again whatever way the
//! dataset path is typed, empty evaluations refused, folders and CSV for classify, TTA output
//! labelled as such, options that do not apply refused, class names suggested.

mod common;
use common::*;

use std::process::Output;

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn err(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn runs_datasets_and_outputs_behave() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&whisker(h)
        .args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(testdata("efficientnet-lite0-57934424.pth"))
        .output()
        .unwrap());
    let csv = std::fs::read(testdata("digits.csv.gz")).unwrap();
    let data = h.join("digits");
    whisker::data::digits::write_image_folder(&csv, &data, Some(60)).unwrap();
    let run = h.join("run");
    let t = ok(&whisker(h)
        .args(["train", "--json", "--test-split", "0.3", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap());
    let acc = t["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert!(run.join("history.csv").exists() || t["settings"]["mode"] == "probe");
    // eval with the dataset path typed differently (relative, with ./) finds the same split
    let ev = ok(&whisker(h)
        .current_dir(h)
        .args(["eval", "--json", "run", "./digits"])
        .output()
        .unwrap());
    assert_eq!(ev["n"], t["metrics"]["n_test"]);
    assert_eq!(ev["accuracy"].as_f64().unwrap(), acc);
    assert!(ev["most_confused"].is_array());
    // another folder with the same classes but none of the run's images: an error, not 0 %
    let other = h.join("other");
    for c in ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"] {
        std::fs::create_dir_all(other.join(c)).unwrap();
        std::fs::copy(testdata("chelsea.png"), other.join(c).join("x.png")).unwrap();
    }
    let e = err(&whisker(h)
        .arg("eval")
        .arg(&run)
        .arg(&other)
        .output()
        .unwrap());
    assert!(e.contains("no image of the run's test split"), "{e}");
    let e = err(&whisker(h)
        .args(["robustness", "--eps", "0,1/255", "--steps", "1"])
        .arg(&run)
        .arg(&other)
        .output()
        .unwrap());
    assert!(e.contains("nothing to evaluate"), "{e}");
    // --epochs does not apply to a probe
    let e = err(&whisker(h)
        .args(["train", "--epochs", "5", "--force", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap());
    assert!(e.contains("--epochs does not apply"), "{e}");
    // predict with TTA: probabilities, no "logit" column
    let p = ok(&whisker(h)
        .args(["predict", "--json", "--tta", "-k", "2"])
        .arg(&run)
        .arg(data.join("3/0003.png"))
        .output()
        .unwrap());
    assert_eq!(p["tta"], true);
    assert!(p["results"][0]["top"][0].get("logit").is_none());
    assert!(p["results"][0]["top"][0]["prob"].as_f64().unwrap() > 0.0);
    // classify a folder recursively, with a CSV
    let photos = h.join("photos/sub");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(testdata("chelsea.png"), photos.join("cat.png")).unwrap();
    std::fs::write(photos.join("notes.txt"), "not an image").unwrap();
    let csv_path = h.join("out.csv");
    // a file in the folder that is not an image is listed with its reason (issue 25, item
    // 12: it was silently left out), in the JSON and the CSV, and the exit code is 1
    let o = whisker(h)
        .args(["classify", "--json", "-k", "1", "--csv"])
        .arg(&csv_path)
        .arg(h.join("photos"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["results"].as_array().unwrap().len(), 2);
    assert_eq!(c["results"][0]["top"][0]["label"], "tiger cat");
    let e = c["results"][1]["error"].as_str().unwrap();
    assert!(
        e.contains("notes.txt") && e.contains("not a recognised image format"),
        "{e}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 2 files could not be classified"));
    let text = std::fs::read_to_string(&csv_path).unwrap();
    assert!(
        text.starts_with("image,rank,index,label,probability,error\n"),
        "{text}"
    );
    assert!(text.contains("cat.png,1,282,tiger cat,"), "{text}");
    assert!(
        text.contains("notes.txt,,,,,") && text.contains("not a recognised image format"),
        "{text}"
    );
    // a device this build lacks is an error, by flag or by environment
    let e = err(&whisker(h)
        .args(["--device", "cuda", "classify"])
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap());
    assert!(
        e.contains("built without CUDA") && e.contains("--features cuda"),
        "{e}"
    );
    let e = err(&whisker(h)
        .env("WHISKER_DEVICE", "cuda:1")
        .arg("classify")
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap());
    assert!(e.contains("built without CUDA"), "{e}");
    let e = err(&whisker(h)
        .args(["--device", "tpu", "models"])
        .output()
        .unwrap());
    assert!(e.contains("device `tpu`: unknown device"), "{e}");
    let e = err(&whisker(h)
        .args(["--device", "wgpu", "models"])
        .output()
        .unwrap());
    assert!(
        e.contains("built without wgpu") && e.contains("--features wgpu"),
        "{e}"
    );
    let e = err(&whisker(h)
        .args(["--device", "cuda:x", "models"])
        .output()
        .unwrap());
    assert!(e.contains("`x` is not a device index"), "{e}");
    // class names and indices
    let o = whisker(h).args(["classes", "tiger"]).output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(" 282  tiger cat") && text.contains(" 292  tiger"),
        "{text}"
    );
    let c = ok(&whisker(h)
        .args(["classes", "--json", "--model"])
        .arg(&run)
        .output()
        .unwrap());
    assert_eq!(c.as_array().unwrap().len(), 10);
    // a misspelt backbone name gets suggestions
    let e = err(&whisker(h)
        .args(["classify", "-b", "resnet5"])
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap());
    assert!(e.contains("did you mean resnet50"), "{e}");
    // a misspelt class name gets suggestions
    let e = err(&whisker(h)
        .args(["attack", "--target", "zebar", "--out"])
        .arg(h.join("adv.png"))
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap());
    assert!(e.contains("did you mean") && e.contains("zebra"), "{e}");
}

/// `lr-find` and `dream` end to end (they had no test).
#[test]
fn lr_find_and_dream_commands() {
    let home = home_with_weights();
    let h = home.path();
    let data = digits(h, &["0", "1", "2"], 10);
    let c = ok(&whisker(h)
        .args([
            "lr-find", "--json", "--steps", "30", "--hidden", "32", "--out",
        ])
        .arg(h)
        .arg(&data)
        .output()
        .unwrap());
    let curve = c["curve"].as_array().unwrap();
    assert!(!curve.is_empty() && curve.len() <= 30, "{}", curve.len());
    let lrs: Vec<f64> = curve.iter().map(|p| p[0].as_f64().unwrap()).collect();
    assert!(
        lrs.windows(2).all(|w| w[1] > w[0]),
        "learning rates increase"
    );
    assert!(lrs[0] >= 1e-7 * 0.999 && *lrs.last().unwrap() <= 10.0 * 1.001);
    let steep = c["steepest"].as_f64().unwrap();
    assert!((lrs[0]..=*lrs.last().unwrap()).contains(&steep));
    assert!(h.join("lr_find.png").is_file());
    let e = err(&whisker(h)
        .args(["lr-find", "--start-lr", "1", "--end-lr", "0.1"])
        .arg(&data)
        .output()
        .unwrap());
    assert!(e.contains("must be below"), "{e}");
    // a few steps of dream: a picture, and the probability it is then classified with
    let out = h.join("zebra.png");
    let d = ok(&whisker(h)
        .args([
            "dream", "--json", "--class", "zebra", "--steps", "3", "--size", "224", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(d["class"], 340);
    let p = d["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{p}");
    // the probability is recorded every 40 steps and at the last one
    assert_eq!(d["history"], serde_json::json!([[3, d["probability"]]]));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
    // smaller than the model's input: an error, not a silently bigger picture
    let e = err(&whisker(h)
        .args([
            "dream", "--class", "zebra", "--steps", "1", "--size", "64", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert!(e.contains("image size 64") && e.contains("224"), "{e}");
}

/// Every option and argument of every command says what it is, and every command shows an
/// example.
#[test]
fn bench_measures_eval_and_training_steps() {
    let home = tempfile::tempdir().unwrap();
    let o = whisker(home.path())
        .args(["--threads", "2", "bench", "mobilenet_v3_small"])
        .args([
            "--batch",
            "1,2",
            "--train-batch",
            "2",
            "--min-seconds",
            "0.01",
        ])
        .args(["--warmup", "0", "--json"])
        .output()
        .unwrap();
    let d = ok(&o);
    assert_eq!(d["device"], "cpu");
    assert_eq!(d["threads"], 2);
    let r = d["results"].as_array().unwrap();
    let got: Vec<(&str, u64)> = r
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["batch"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("eval", 1), ("eval", 2), ("train", 2)]);
    for c in r {
        assert_eq!(c["model"], "mobilenet_v3_small");
        assert_eq!(c["size"], 224);
        let (ms, ips) = (
            c["ms_per_batch"].as_f64().unwrap(),
            c["images_per_s"].as_f64().unwrap(),
        );
        let b = c["batch"].as_f64().unwrap();
        assert!(ms > 0.0 && c["iters"].as_u64().unwrap() >= 2, "{c}");
        // images/s and ms/batch describe the same time (both rounded to 0.01)
        assert!((ips * ms / 1000.0 - b).abs() < 0.02 * b, "{c}");
    }
    let e = err(&whisker(home.path())
        .args(["bench", "resnet9000"])
        .output()
        .unwrap());
    assert!(e.contains("unknown backbone `resnet9000`"), "{e}");
    let e = err(&whisker(home.path())
        .args(["bench", "resnet18", "--batch", "100000000000"])
        .output()
        .unwrap());
    assert!(e.contains("outside 0..=1024"), "{e}");
}

#[test]
fn every_option_has_help_and_every_command_an_example() {
    let home = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &["models"],
        &["classes"],
        &["weights", "fetch"],
        &["weights", "list"],
        &["classify"],
        &["data", "download"],
        &["data", "digits"],
        &["train"],
        &["eval"],
        &["predict"],
        &["lr-find"],
        &["featuremap"],
        &["robustness"],
        &["dream"],
        &["attack"],
        &["cam"],
        &["report"],
        &["serve"],
        &["bench"],
    ];
    let mut missing = Vec::new();
    for cmd in commands {
        let o = whisker(home.path())
            .args(*cmd)
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd:?}");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let mut in_list = false;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if *line == "Options:" || *line == "Arguments:" {
                in_list = true;
                continue;
            }
            if line.is_empty() {
                in_list = false;
                continue;
            }
            let t = line.trim_start();
            let flag = t.starts_with('-') || t.starts_with('<') || t.starts_with('[');
            if in_list && line.starts_with("  ") && flag {
                // the flag, then its description: on the same line after two spaces, or (long
                // help) on the next, more indented line
                let words = |x: &str| -> bool {
                    // text other than clap's own "[default: …]" / "[possible values: …]"
                    let mut depth = 0;
                    x.chars().any(|c| {
                        match c {
                            '[' => depth += 1,
                            ']' => depth -= 1,
                            _ => {}
                        }
                        depth == 0 && c.is_alphanumeric()
                    })
                };
                let same_line = t.find("  ").is_some_and(|k| words(&t[k..]));
                let next_line = lines.get(i + 1).is_some_and(|n| {
                    let nt = n.trim_start();
                    n.len() - nt.len() > line.len() - t.len() && words(nt) && !nt.starts_with('-')
                });
                if !same_line && !next_line {
                    missing.push(format!("{cmd:?}: {t}"));
                }
            }
        }
        if cmd.len() == 1 || cmd[0] == "weights" || cmd[0] == "data" {
            let parent = if cmd.len() == 2 { &cmd[..1] } else { &cmd[..] };
            let o = whisker(home.path())
                .args(parent)
                .arg("--help")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(text.contains("Example"), "{parent:?} shows no example");
        }
    }
    assert!(
        missing.is_empty(),
        "options without help:\n{}",
        missing.join("\n")
    );
}
