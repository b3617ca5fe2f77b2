//! whisker's decoding against Pillow's on Pillow's own test images (issue 25, item 5): every
//! file of the Pillow 13.0.0 sdist's `Tests/images` in a format whisker reads, decoded by
//! whisker and compared with `Image.open(p).convert("RGB")` (the table made by
//! `tools/pillow_reference.py`, committed as `tests/golden/pillow_images.tsv`; the images
//! are unpacked by `tools/fetch-testdata.sh`).
//!
//! Each file is one of: the same pixels as Pillow (sha256 of the RGB bytes), other pixels,
//! refused by whisker though Pillow decodes it, decoded by whisker though Pillow refuses it,
//! or refused by both. The test prints the table and holds the line: every file whisker
//! and Pillow both decode gives Pillow's pixels, except the few listed below with the
//! reason, and whisker refuses nothing Pillow decodes beyond the listed ones.

mod common;

use std::collections::BTreeMap;

use common::testdata;
use sha2::{Digest, Sha256};

/// Files whose pixels differ from Pillow's, and why (each a known, understood difference).
const DIFFERENT: &[(&str, &str)] = &[];

/// Files Pillow decodes and whisker refuses, and why.
const REFUSED: &[(&str, &str)] = &[];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Same,
    Different,
    RefusedByWhisker,
    RefusedByPillow,
    RefusedByBoth,
}

#[test]
fn decoding_agrees_with_pillow_on_its_own_test_images() {
    let dir = testdata("pillow-images");
    let table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pillow_images.tsv"),
    )
    .unwrap();
    let mut by: BTreeMap<Outcome, Vec<String>> = BTreeMap::new();
    let mut per_format: BTreeMap<(String, Outcome), usize> = BTreeMap::new();
    let mut n = 0;
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, format, status) = (f[0], f[1], f[2]);
        let path = dir.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        n += 1;
        let mine = whisker::data::decode_file(&path);
        let outcome = match (status, &mine) {
            ("ok", Ok(img)) => {
                let h = hex::encode(Sha256::digest(img.as_raw()));
                let size = format!("{}\t{}", img.width(), img.height());
                if h[..16] == *f[5] && size == format!("{}\t{}", f[3], f[4]) {
                    Outcome::Same
                } else {
                    Outcome::Different
                }
            }
            ("ok", Err(_)) => Outcome::RefusedByWhisker,
            (_, Ok(_)) => Outcome::RefusedByPillow,
            (_, Err(_)) => Outcome::RefusedByBoth,
        };
        let shown = match (&mine, outcome) {
            (Err(e), Outcome::RefusedByWhisker) => format!("{name} ({format}): {e}"),
            _ => format!("{name} ({format})"),
        };
        by.entry(outcome).or_default().push(shown);
        *per_format.entry((format.to_string(), outcome)).or_default() += 1;
    }
    println!("{n} files of Pillow's Tests/images in formats whisker reads:");
    for ((fmt, o), c) in &per_format {
        println!("  {fmt:<5} {o:?}: {c}");
    }
    for (o, files) in &by {
        if *o != Outcome::Same {
            println!("{o:?} ({}):", files.len());
            for f in files {
                println!("  {f}");
            }
        }
    }
    let listed = |list: &[(&str, &str)], s: &str| list.iter().any(|(n, _)| s.starts_with(n));
    let unexplained_diff: Vec<&String> = by
        .get(&Outcome::Different)
        .map(|v| v.iter().filter(|s| !listed(DIFFERENT, s)).collect())
        .unwrap_or_default();
    let unexplained_refusal: Vec<&String> = by
        .get(&Outcome::RefusedByWhisker)
        .map(|v| v.iter().filter(|s| !listed(REFUSED, s)).collect())
        .unwrap_or_default();
    assert!(
        unexplained_diff.is_empty() && unexplained_refusal.is_empty(),
        "pixels other than Pillow's: {unexplained_diff:#?}\nrefused though Pillow decodes them: {unexplained_refusal:#?}"
    );
    assert!(n > 700, "only {n} files in the table");
}
