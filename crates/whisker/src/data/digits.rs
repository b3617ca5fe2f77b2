//! scikit-learn's handwritten digits (1,797 real 8×8 grey images, 10 classes, from the UCI
//! "Optical Recognition of Handwritten Digits" set), obtained from the scikit-learn wheel on
//! PyPI and written as an image folder (`DIR/0/0000.png` …). A small real dataset from a very
//! different domain than ImageNet, reachable wherever PyPI is.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// Write the digits from `digits.csv.gz` (64 values in 0..=16, then the label, per line) as
/// 8×8 grey PNGs under `dir/<label>/` (the first `limit` of them if given). Returns the
/// number of images.
pub fn write_image_folder(csv_gz: &[u8], dir: &Path, limit: Option<usize>) -> Result<usize> {
    let corrupt = |reason: String| Error::Corrupt {
        path: "digits.csv.gz".into(),
        reason,
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(csv_gz)
        .read_to_string(&mut text)
        .map_err(|e| corrupt(format!("not gzip text: {e}")))?;
    let mut n = 0;
    for (i, line) in text.lines().take(limit.unwrap_or(usize::MAX)).enumerate() {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| corrupt(format!("line {}: {e}", i + 1)))?;
        if v.len() != 65 {
            return Err(corrupt(format!(
                "line {}: {} values, expected 65",
                i + 1,
                v.len()
            )));
        }
        let label = v[64] as usize;
        let px: Vec<u8> = v[..64]
            .iter()
            .map(|p| (p * 255.0 / 16.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let img = image::GrayImage::from_raw(8, 8, px).expect("64 pixels");
        let d = dir.join(label.to_string());
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        let p = d.join(format!("{i:04}.png"));
        img.save(&p).map_err(|e| Error::Corrupt {
            path: p.clone(),
            reason: format!("cannot write the image: {e}"),
        })?;
        n += 1;
    }
    Ok(n)
}

/// `pip download` the scikit-learn wheel and write its digits as an image folder.
pub fn fetch(dir: &Path, limit: Option<usize>) -> Result<usize> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (prog, args) = crate::io::pip_command();
    let cmd = format!(
        "{prog} {} download --no-deps --only-binary=:all: scikit-learn",
        args.join(" ")
    );
    let out = Command::new(&prog)
        .args(&args)
        .args(["download", "--no-deps", "--only-binary=:all:", "-q", "-d"])
        .arg(tmp.path())
        .arg("scikit-learn")
        .output()
        .map_err(|e| Error::Command {
            command: cmd.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: cmd,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let whl = fs::read_dir(tmp.path())
        .map_err(|e| Error::io(tmp.path(), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| Error::Command {
            command: cmd.clone(),
            reason: "no wheel downloaded".into(),
        })?;
    let f = fs::File::open(&whl).map_err(|e| Error::io(&whl, e))?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| Error::Corrupt {
        path: whl.clone(),
        reason: format!("not a wheel (zip): {e}"),
    })?;
    let mut m = z
        .by_name("sklearn/datasets/data/digits.csv.gz")
        .map_err(|e| Error::Corrupt {
            path: whl.clone(),
            reason: format!("no digits.csv.gz: {e}"),
        })?;
    let mut bytes = Vec::new();
    m.read_to_end(&mut bytes).map_err(|e| Error::io(&whl, e))?;
    write_image_folder(&bytes, dir, limit)
}
