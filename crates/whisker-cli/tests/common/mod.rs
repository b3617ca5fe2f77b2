//! Helpers of the command-line tests: the real test data, the binary with its own
//! $WHISKER_HOME, real digits as an image folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file of the real test data (tools/fetch-testdata.sh).
pub fn testdata(name: &str) -> PathBuf {
    let dir = std::env::var_os("WHISKER_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.testdata"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run tools/fetch-testdata.sh",
        p.display()
    );
    p
}

/// The `whisker` binary with `$WHISKER_HOME` set to `home`, quiet.
pub fn whisker(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisker"));
    c.env("WHISKER_HOME", home).arg("--quiet");
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh $WHISKER_HOME with the real EfficientNet-Lite0 weights imported.
pub fn home_with_weights() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = whisker(home.path())
        .args(["weights", "fetch", "efficientnet_lite0", "--from"])
        .arg(testdata("efficientnet-lite0-57934424.pth"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    home
}

/// An image folder of real digits under `dir`: `per_class` images of each of `classes`.
pub fn digits(dir: &Path, classes: &[&str], per_class: usize) -> PathBuf {
    let all = dir.join("all-digits");
    let csv = std::fs::read(testdata("digits.csv.gz")).unwrap();
    whisker::data::digits::write_image_folder(&csv, &all, Some(400)).unwrap();
    let data = dir.join("digits");
    for c in classes {
        std::fs::create_dir_all(data.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(all.join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, data.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
    data
}
