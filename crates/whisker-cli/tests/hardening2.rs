//! Hardening II (issue 25) at the command line: each test is named after the item of the
//! issue it reproduces; every hostile input gets a clear error naming the file, the right
//! exit code, never a hang or a panic, and a refused command changes nothing.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run with a deadline: a hang fails the test instead of blocking it.
fn run_with_deadline(mut c: Command, secs: u64) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("no answer within {secs} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
}

/// Every file under `dir` with its content (what a refused command must leave as it was).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// A zip archive with one deflated entry `name` holding `data`, whose headers declare
/// `declared` bytes uncompressed (written by hand: the sizes are the attack).
fn zip_declaring(name: &str, data: &[u8], declared: u32) -> Vec<u8> {
    let mut z = Vec::new();
    let le16 = |v: u16| v.to_le_bytes();
    let le32 = |v: u32| v.to_le_bytes();
    let n = name.len() as u16;
    z.extend(le32(0x0403_4b50));
    for v in [20u16, 0, 8, 0, 0] {
        z.extend(le16(v));
    }
    z.extend(le32(0)); // crc
    z.extend(le32(data.len() as u32));
    z.extend(le32(declared));
    z.extend(le16(n));
    z.extend(le16(0));
    z.extend(name.as_bytes());
    z.extend(data);
    let cd = z.len() as u32;
    z.extend(le32(0x0201_4b50));
    for v in [20u16, 20, 0, 8, 0, 0] {
        z.extend(le16(v));
    }
    z.extend(le32(0));
    z.extend(le32(data.len() as u32));
    z.extend(le32(declared));
    z.extend(le16(n));
    for v in [0u16, 0, 0, 0] {
        z.extend(le16(v));
    }
    z.extend(le32(0)); // external attributes
    z.extend(le32(0)); // local header offset
    z.extend(name.as_bytes());
    let cd_len = z.len() as u32 - cd;
    z.extend(le32(0x0605_4b50));
    for v in [0u16, 0, 1, 1] {
        z.extend(le16(v));
    }
    z.extend(le32(cd_len));
    z.extend(le32(cd));
    z.extend(le16(0));
    z
}

/// Item 6: a 1 MB zip declaring 4 GB is refused before anything of that size is allocated,
/// the error names the user's file (not a temporary copy), and the weights cache keeps no
/// temporary file.
#[test]
fn item6_zip_bombs_are_refused_and_leave_no_temporaries() {
    let home = tempfile::tempdir().unwrap();
    let bomb = home.path().join("zipbomb.pth");
    std::fs::write(
        &bomb,
        zip_declaring("archive/data.pkl", &vec![0u8; 1 << 20], 0xF000_0000),
    )
    .unwrap();
    let mut c = whisker(home.path());
    c.args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(&bomb);
    let o = run_with_deadline(c, 60);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("zipbomb.pth")
            && e.contains("zip bomb")
            && !e.contains("weights/efficientnet_lite0"),
        "{e}"
    );
    let dir = home.path().join("weights").join("efficientnet_lite0");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the weights cache: {left:?}");
    // a damaged checkpoint's error names the user's file too
    let junk = home.path().join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    let mut c = whisker(home.path());
    c.args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(&junk);
    let o = run_with_deadline(c, 60);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("junk.pth") && !stderr(&o).contains("weights/efficientnet_lite0"),
        "{}",
        stderr(&o)
    );
    let left = std::fs::read_dir(&dir).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(left, 0, "a temporary was left in the weights cache");
}

/// Item 8: no reader blocks on a FIFO or reads a device forever: weights given by path
/// (fetch --from, classify --weights) and the files a run's marker lists; and a marker's
/// paths must stay inside the run.
#[cfg(unix)]
#[test]
fn item8_fifos_and_devices_are_refused_by_every_reader() {
    let home = home_with_weights();
    let fifo = home.path().join("weights.pth");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let zero = Path::new("/dev/zero");
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "weights".into(),
            "fetch".into(),
            "efficientnet_lite0".into(),
            "--from".into(),
            fifo.clone().into(),
        ],
        vec![
            "weights".into(),
            "fetch".into(),
            "efficientnet_lite0".into(),
            "--from".into(),
            zero.into(),
        ],
        vec![
            "classify".into(),
            "--weights".into(),
            fifo.clone().into(),
            testdata("chelsea.png").into(),
        ],
        vec![
            "classify".into(),
            "--weights".into(),
            zero.into(),
            testdata("chelsea.png").into(),
        ],
    ];
    for args in cases {
        let mut c = whisker(home.path());
        c.args(&args);
        let o = run_with_deadline(c, 60);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not a regular file"),
            "{args:?}: {}",
            stderr(&o)
        );
    }

    // a complete run, then its marker edited to list a device, a FIFO, a path outside
    let data = digits(home.path(), &["0", "1"], 6);
    let run = home.path().join("run");
    let o = whisker(home.path())
        .args(["train", "--test-split", "0.3", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let marker = run.join("run.json");
    let original = std::fs::read_to_string(&marker).unwrap();
    let in_run_fifo = run.join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&in_run_fifo)
        .status()
        .unwrap()
        .success());
    for (entry, expect) in [
        ("/dev/zero", "outside the run"),
        ("../../etc/passwd", "outside the run"),
        ("pipe", "not a regular file"),
    ] {
        let mut doc: serde_json::Value = serde_json::from_str(&original).unwrap();
        doc["files"][entry] = serde_json::json!("00");
        std::fs::write(&marker, serde_json::to_vec(&doc).unwrap()).unwrap();
        let mut c = whisker(home.path());
        c.arg("predict").arg(&run).arg(testdata("chelsea.png"));
        let o = run_with_deadline(c, 60);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{entry}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{entry}: {}", stderr(&o));
    }
    // the marker as it was: the run reads again
    std::fs::write(&marker, &original).unwrap();
    let o = whisker(home.path())
        .arg("predict")
        .arg(&run)
        .arg(
            data.join("0")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Item 3: a model whose metadata or tensors cannot give sane numbers (input.std 0 with a
/// valid checksum, an unknown head kind, a preprocessing that is not its backbone's, a
/// newer version) is refused by predict with exit 2, never printed as NaN probabilities.
#[test]
fn item3_model_files_are_validated_on_load() {
    use whisker::train::model_file::TrainedModel;
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1"], 6);
    let run = home.path().join("run");
    let o = whisker(home.path())
        .args(["train", "--test-split", "0.3", "--out"])
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let good = TrainedModel::load(&run.join("model.safetensors")).unwrap();
    let alone = home.path().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    type Edit = Box<dyn Fn(&mut TrainedModel)>;
    let edits: Vec<(&str, Edit, &str)> = vec![
        (
            "std0",
            Box::new(|m| {
                if let whisker::train::model_file::Head::Linear(h) = &mut m.head {
                    h.std[3] = 0.0;
                }
            }),
            "input.std[3]",
        ),
        (
            "head",
            Box::new(|m| m.meta.head = "transformer".into()),
            "unknown head kind",
        ),
        ("resize", Box::new(|m| m.meta.resize = 0), "preprocessing"),
        ("version", Box::new(|m| m.meta.version = 99), "version 99"),
        (
            "backbone",
            Box::new(|m| m.meta.backbone = "resnet9000".into()),
            "resnet9000",
        ),
        (
            "classes",
            Box::new(|m| m.meta.classes[1] = m.meta.classes[0].clone()),
            "listed twice",
        ),
    ];
    let img = data
        .join("1")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for (name, edit, expect) in edits {
        let mut m = good.clone();
        edit(&mut m);
        let p = alone.join(format!("{name}.safetensors"));
        m.save(&p).unwrap(); // a valid checksum: only the content is wrong
        for cmd in [vec!["predict"], vec!["predict", "--tta"]] {
            let o = whisker(home.path())
                .args(&cmd)
                .arg(&p)
                .arg(&img)
                .output()
                .unwrap();
            no_panic(&o);
            assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains(expect) && e.contains(&format!("{name}.safetensors")),
                "{name}: {e}"
            );
            assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));
        }
    }
    // a head whose outputs overflow (finite weights, infinite logits): an error per image,
    // exit 1, no NaN printed
    let mut m = good.clone();
    if let whisker::train::model_file::Head::Linear(h) = &mut m.head {
        h.w.iter_mut().for_each(|w| *w = 3e38);
    }
    let p = alone.join("overflow.safetensors");
    m.save(&p).unwrap();
    let o = whisker(home.path())
        .args(["predict", "--json"])
        .arg(&p)
        .arg(&img)
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = doc["results"][0]["error"].as_str().unwrap();
    let name = img.file_name().unwrap().to_string_lossy().to_string();
    assert!(e.contains("not finite") && e.contains(&name), "{e}");
    assert!(doc["results"][0].get("top").is_none());
    // as text: the error, no "NaN%" probabilities
    let o = whisker(home.path())
        .arg("predict")
        .arg(&p)
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));
    assert!(stderr(&o).contains("not finite"), "{}", stderr(&o));
}

/// Item 4: `--resume` continues a run only with the settings it was made with; otherwise an
/// error naming the difference, and the run is left exactly as it was (still complete).
#[test]
fn item4_a_resume_with_other_settings_is_refused_and_changes_nothing() {
    let home = home_with_weights();
    let data = digits(home.path(), &["0", "1"], 6);
    let train = |run: &Path, extra: &[&str]| -> Output {
        whisker(home.path())
            .args(["train", "--test-split", "0.3", "--out"])
            .arg(run)
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    let head = home.path().join("head");
    let o = train(&head, &["--mode", "head", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let probe = home.path().join("probe");
    let o = train(&probe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        // no --mode: a probe over the finished head run
        (
            &head,
            vec!["--resume"],
            "mode: the run has \"head\", this command \"probe\"",
        ),
        (
            &head,
            vec!["--resume", "--mode", "head", "--epochs", "3"],
            "epochs",
        ),
        (&probe, vec!["--resume", "--mode", "head"], "mode"),
        (&probe, vec!["--resume", "--seed", "5"], "seed"),
    ];
    for (run, extra, expect) in cases {
        let before = snapshot(run);
        let o = train(run, &extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("other settings") && e.contains(expect),
            "{extra:?}: {e}"
        );
        assert!(
            snapshot(run) == before,
            "{extra:?}: the refused resume changed the run"
        );
        let o = whisker(home.path())
            .args(["eval"])
            .arg(run)
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
    }
    // nothing to resume: refused, nothing created
    let empty = home.path().join("empty");
    let o = train(&empty, &["--resume", "--mode", "head"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing to resume"), "{}", stderr(&o));
    assert!(!empty.exists(), "a refused resume created its directory");
    // the same settings continue (a finished run: the same model)
    let o = train(&head, &["--resume", "--mode", "head", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
