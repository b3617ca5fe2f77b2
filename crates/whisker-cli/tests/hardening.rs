//! The hardening issue at the command line: every hostile input of the adversarial review
//! gets a clear error and the right exit code, never a panic, a hang or a wrong number.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Numeric arguments out of range are refused by the parser, at once, with the range.
#[test]
fn defect8_bad_arguments_are_refused_at_parse_time() {
    let home = tempfile::tempdir().unwrap();
    let img = testdata("chelsea.png");
    let img = img.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["robustness", "run", "ds", "--eps", "inf"],
            "not a finite number",
        ),
        (
            &["robustness", "run", "ds", "--eps", "0,1/0"],
            "divides by zero",
        ),
        (
            &[
                "attack", img, "--target", "zebra", "--out", "x.png", "--eps", "nan",
            ],
            "not a finite number",
        ),
        (
            &[
                "train", "ds", "--out", "r", "--mode", "head", "--hidden", "0",
            ],
            "1..=65536",
        ),
        (
            &[
                "dream", "--class", "zebra", "--out", "x.png", "--size", "100000",
            ],
            "32..=2048",
        ),
        (
            &["train", "ds", "--out", "r", "--lr", "nan"],
            "not a finite number",
        ),
        (
            &["train", "ds", "--out", "r", "--lr", "0"],
            "outside (0, 10]",
        ),
        (
            &["train", "ds", "--out", "r", "--lr-mult", "0"],
            "outside (0, 1000000]",
        ),
        (
            &["train", "ds", "--out", "r", "--val-split", "1.5"],
            "[0, 1)",
        ),
        (
            &["train", "ds", "--out", "r", "--val-split", "nan"],
            "not a finite number",
        ),
        (&["train", "ds", "--out", "r", "--dropout", "1.5"], "[0, 1)"),
        (
            &["train", "ds", "--out", "r", "--label-smoothing", "2"],
            "[0, 1)",
        ),
        (&["classify", img, "--batch-size", "0"], "outside 1..=1024"),
        (&["--threads", "0", "classify", img], "outside 1..=1024"),
        (
            &[
                "attack",
                img,
                "--target",
                "zebra",
                "--out",
                "x.png",
                "--confidence",
                "2",
            ],
            "[0, 1]",
        ),
    ];
    for (args, want) in cases {
        let mut c = whisker(home.path());
        c.args(*args);
        let o = run_with_deadline(c, 30);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        no_panic(&o);
    }
    // an L∞ budget given in 0–255 units gets a hint, before any model is loaded
    let o = run_with_deadline(
        {
            let mut c = whisker(home.path());
            c.args([
                "attack", img, "--target", "zebra", "--out", "x.png", "--eps", "4",
            ]);
            c
        },
        30,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean --eps 4/255"),
        "{}",
        stderr(&o)
    );
    // val + test leaving nothing to train on
    let o = whisker(home.path())
        .args([
            "train",
            "ds",
            "--out",
            "r",
            "--val-split",
            "0.5",
            "--test-split",
            "0.5",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("nothing is left to train on"),
        "{}",
        stderr(&o)
    );
}

/// `classify … | head`: the reader goes away; whisker ends quietly, no panic.
#[cfg(unix)]
#[test]
fn defect8_broken_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let home = home_with_weights();
    let mut child = whisker(home.path())
        .arg("classify")
        .args(std::iter::repeat_n(testdata("chelsea.png"), 4))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    no_panic(&o);
    assert!(
        o.status.success() || o.status.signal() == Some(13),
        "{:?}: {}",
        o.status,
        stderr(&o)
    );
}

/// A FIFO given as an image is refused at once instead of blocking forever.
#[cfg(unix)]
#[test]
fn defect8_a_fifo_is_not_read_as_an_image() {
    let home = home_with_weights();
    let fifo = home.path().join("pipe.jpg");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut c = whisker(home.path());
    c.args(["classify", "--json"])
        .arg(&fifo)
        .arg(testdata("chelsea.png"));
    let o = run_with_deadline(c, 60);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = doc["results"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("pipe.jpg") && err.contains("not a regular file"),
        "{err}"
    );
    assert_eq!(doc["results"][1]["top"][0]["label"], "tiger cat");
}

/// Every decompression bomb is refused under a 2 GB address-space limit with a clear error
/// naming the file, exit 1; the real photo beside them is classified, and so is a 1 × 20,000
/// strip (whose full resize would be 3.9 GB).
#[cfg(unix)]
#[test]
fn defect2_bombs_are_refused_under_a_2gb_memory_ceiling() {
    let home = home_with_weights();
    let dir = home.path().join("bombs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, bytes) in bombs() {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        files.push(p);
    }
    let strip = image::RgbImage::from_fn(1, 20000, |_, y| image::Rgb([(y % 251) as u8, 9, 99]));
    let sp = dir.join("strip.png");
    strip.save(&sp).unwrap();
    files.push(sp);
    files.push(testdata("chelsea.png"));
    let list: Vec<String> = files.iter().map(|p| format!("'{}'", p.display())).collect();
    let script = format!(
        "ulimit -v 2097152 && exec '{}' --quiet classify --json {}",
        env!("CARGO_BIN_EXE_whisker"),
        list.join(" ")
    );
    let mut c = Command::new("sh");
    c.env("WHISKER_HOME", home.path()).args(["-c", &script]);
    let o = run_with_deadline(c, 120);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    for (r, (name, _)) in results.iter().zip(bombs()) {
        let e = r["error"].as_str().unwrap_or_default();
        assert!(
            e.contains(name) && e.contains("decompression bomb"),
            "{name}: {r}"
        );
    }
    assert!(results[4]["top"].is_array(), "{}", results[4]);
    assert_eq!(results[5]["top"][0]["label"], "tiger cat");
}

/// The library's bomb fixtures (`crates/whisker/tests/fixtures/bombs`).
fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../whisker/tests/fixtures/bombs");
    ["bomb.png", "bomb.jpg", "bomb.gif", "bomb.bmp"]
        .into_iter()
        .map(|n| (n, std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

/// A file name that is not UTF-8: classify reports it (lossily) instead of panicking, and
/// train skips it with a reason and writes the whole run.
#[cfg(unix)]
#[test]
fn defect3_non_utf8_file_names_do_not_panic() {
    use std::os::unix::ffi::OsStrExt;
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1"], 8);
    let odd = data
        .join("0")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::copy(testdata("chelsea.png"), &odd).unwrap();
    let o = whisker(home.path())
        .args(["classify", "--json"])
        .arg(&odd)
        .output()
        .unwrap();
    no_panic(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc["results"][0]["image"]
        .as_str()
        .unwrap()
        .contains("caf\u{FFFD}.png"));
    let run = home.path().join("run");
    let o = whisker(home.path())
        .args(["train", "--test-split", "0.25", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    no_panic(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.safetensors",
        "split.json",
        "skipped.json",
        "run.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let skipped = std::fs::read_to_string(run.join("skipped.json")).unwrap();
    assert!(skipped.contains("not valid UTF-8"), "{skipped}");
}

/// Weights holding NaN are refused by classify and by the cache import.
#[test]
fn defect5_nan_weights_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let mut sd =
        whisker::weights::StateDict::from_file(&testdata("efficientnet-lite0-57934424.pth"))
            .unwrap();
    let key = "_fc.weight".to_string();
    sd.tensors.get_mut(&key).unwrap().data[0] = f32::NAN;
    let p = home.path().join("nan.safetensors");
    sd.save_safetensors(&p).unwrap();
    let o = whisker(home.path())
        .args(["classify", "--weights"])
        .arg(&p)
        .arg(testdata("chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("_fc.weight") && stderr(&o).contains("non-finite"));
    let o = whisker(home.path())
        .args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
}

/// An un-fitted probe (`--max-iter 0`) is not reported as 100 % accurate; a diverging head
/// stops with an error and leaves no model; a run directory has one writer, is never
/// overwritten without --force, and an incomplete one is refused by its readers.
#[test]
fn defects1_8_9_honest_results_and_whole_runs() {
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1", "2"], 8);
    let train = |run: &Path, extra: &[&str]| -> Output {
        whisker(home.path())
            .args(["train", "--json", "--test-split", "0.25", "--out"])
            .arg(run)
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    let run = home.path().join("untrained");
    let o = train(&run, &["--max-iter", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["metrics"]["test"]["accuracy"], 0.0, "every class tied");
    let o = whisker(home.path())
        .args(["eval", "--json"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["accuracy"], 0.0);

    // a second train into the same directory: refused without --force
    let o = train(&run, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // while another process writes it: refused
    {
        let _lock = whisker::run::RunWriter::open(
            &home.path().join("busy"),
            whisker::run::Start::Fresh { force: false },
        )
        .unwrap();
        let o = train(&home.path().join("busy"), &["--force"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("another whisker process"),
            "{}",
            stderr(&o)
        );
    }
    // an incomplete run (no marker) is refused by eval
    std::fs::remove_file(run.join("run.json")).unwrap();
    let o = whisker(home.path())
        .args(["eval"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("incomplete"), "{}", stderr(&o));

    // divergence: an error, no model, no marker
    let run = home.path().join("diverged");
    // (the largest learning rate the flag takes, 10, with weight decay 100: AdamW's decay
    // step multiplies the weights by −999 a step)
    let o = train(
        &run,
        &[
            "--mode",
            "head",
            "--lr",
            "10",
            "--weight-decay",
            "100",
            "--head-batch-size",
            "4",
            "--epochs",
            "3",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("diverged"), "{}", stderr(&o));
    assert!(!run.join("model.safetensors").exists());
    assert!(!run.join("run.json").exists());
}
