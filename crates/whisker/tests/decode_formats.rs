//! Every supported format and pixel mode decodes to the RGB bytes Pillow's
//! `Image.open(f).convert("RGB")` gives (fixtures: tools/reference/make_decode_fixtures.py),
//! and bad files give errors naming the file.

mod common;

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode")
}

#[test]
fn formats_decode_like_pillow() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("pillow.json")).unwrap()).unwrap();
    let mut report = Vec::new();
    for (name, info) in expected.as_object().unwrap() {
        let img = whisker::data::decode_file(&dir().join(name)).unwrap_or_else(|e| panic!("{e}"));
        let size: Vec<u32> = serde_json::from_value(info["size"].clone()).unwrap();
        assert_eq!([img.width(), img.height()], [size[0], size[1]], "{name}");
        let want = std::fs::read(dir().join(format!("{name}.rgb"))).unwrap();
        let diff = img
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        report.push(format!("{name}: max |Δ| = {diff}"));
        // CMYK JPEGs go through the pure-Rust decoder and its CMYK→RGB conversion, which
        // differs from Pillow's by rounding. Everything else must be byte-exact.
        let tol = if name == "cmyk.jpg" { 1 } else { 0 };
        assert!(
            diff <= tol,
            "{name}: decoded pixels differ from Pillow by up to {diff} (allowed {tol})\n{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
}

#[test]
fn bad_files_are_errors_that_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let real = std::fs::read(common::testdata("rocket.jpg")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.jpg", vec![], "empty"),
        (
            "Thumbs.db",
            vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0, 0, 0],
            "not a recognised image format",
        ),
        (
            "truncated.jpg",
            real[..real.len() / 3].to_vec(),
            "truncated",
        ),
        ("header_only.jpg", real[..200].to_vec(), "JPEG"),
        (
            "text.png",
            b"hello".to_vec(),
            "not a recognised image format",
        ),
        (
            "bad.png",
            [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 40][..]].concat(),
            "Png",
        ),
    ];
    for (name, bytes, reason) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = whisker::data::decode_file(&p).expect_err(name).to_string();
        assert!(e.contains(name), "{e}");
        assert!(e.contains(reason), "{name}: {e}");
    }
    let e = whisker::data::decode_file(&tmp.path().join("missing.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jpg"), "{e}");
}
