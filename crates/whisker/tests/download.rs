//! `whisker data download`: archives in the real Oxford-IIIT Pet and PetImages layouts,
//! served from a local HTTP server: resumed after an interruption, checked, extracted, and
//! no archive entry may escape the target directory.

mod common;

use std::collections::HashMap;
use std::io::Write;

use common::*;
use whisker::data::datasets::{Dataset, Format, Labels};
use whisker::data::download::{download_archives, extract_archive, Archive};

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts: zip::write::SimpleFileOptions = Default::default();
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn md5(b: &[u8]) -> &'static str {
    use md5::Digest;
    Box::leak(hex::encode(md5::Md5::digest(b)).into_boxed_str())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn oxford_pets_download_resumes_checks_and_extracts() {
    let cat = std::fs::read(testdata("chelsea.png")).unwrap();
    let dog = std::fs::read(testdata("rocket.jpg")).unwrap();
    let images = tar_gz(&[
        ("images/Abyssinian_1.jpg", cat.clone()),
        ("images/Abyssinian_2.jpg", cat),
        ("images/american_bulldog_1.jpg", dog.clone()),
        ("images/american_bulldog_2.jpg", dog),
    ]);
    let list = "#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nAbyssinian_2 1 1 1\namerican_bulldog_1 2 2 1\namerican_bulldog_2 2 2 1\n";
    let annotations = tar_gz(&[
        ("annotations/list.txt", list.as_bytes().to_vec()),
        (
            "annotations/trainval.txt",
            b"Abyssinian_1 1 1 1\namerican_bulldog_1 2 2 1\n".to_vec(),
        ),
        (
            "annotations/test.txt",
            b"Abyssinian_2 1 1 1\namerican_bulldog_2 2 2 1\n".to_vec(),
        ),
    ]);
    let files = HashMap::from([
        ("/images.tar.gz".to_string(), images.clone()),
        ("/annotations.tar.gz".to_string(), annotations.clone()),
    ]);
    let (base, _, ranged) = serve(files, 1);
    let archives = [
        Archive {
            url: leak(format!("{base}/images.tar.gz")),
            md5: Some(md5(&images)),
        },
        Archive {
            url: leak(format!("{base}/annotations.tar.gz")),
            md5: Some(md5(&annotations)),
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let e = download_archives(&archives, dir.path(), None, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("resume"), "{e}");
    let n = download_archives(&archives, dir.path(), None, &|_, _| {}).unwrap();
    assert_eq!(n, 7);
    assert_eq!(
        ranged.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second run resumed"
    );
    assert!(!dir.path().join(".downloads").exists());
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    assert_eq!(ds.format, Format::OxfordPets);
    assert_eq!(ds.items.len(), 4);
    assert_eq!(ds.official_test.as_ref().map(Vec::len), Some(2));

    // a corrupted archive fails its checksum and leaves nothing half-written
    let (base2, _, _) = serve(
        HashMap::from([("/images.tar.gz".to_string(), b"not the archive".to_vec())]),
        0,
    );
    let bad = [Archive {
        url: leak(format!("{base2}/images.tar.gz")),
        md5: Some(md5(&images)),
    }];
    let dir2 = tempfile::tempdir().unwrap();
    let e = download_archives(&bad, dir2.path(), None, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("md5"), "{e}");
    assert!(!dir2.path().join("images").exists());
    assert!(!dir2.path().join(".downloads/images.tar.gz").exists());
}

#[test]
fn petimages_zip_via_mirror() {
    let cat = std::fs::read(testdata("chelsea.png")).unwrap();
    let dog = std::fs::read(testdata("rocket.jpg")).unwrap();
    let z = zip_of(&[
        ("PetImages/Cat/0.jpg", cat),
        ("PetImages/Cat/666.jpg", vec![]),
        ("PetImages/Cat/Thumbs.db", vec![0xD0, 0xCF, 0x11, 0xE0]),
        ("PetImages/Dog/0.jpg", dog),
    ]);
    let (base, _, _) = serve(
        HashMap::from([("/kagglecatsanddogs_5340.zip".to_string(), z)]),
        0,
    );
    let dir = tempfile::tempdir().unwrap();
    let n = whisker::data::download::download("cats-vs-dogs", dir.path(), Some(&base), &|_, _| {})
        .unwrap();
    assert_eq!(n, 4);
    let ds = Dataset::open(dir.path(), None, Labels::Breed).unwrap();
    assert_eq!(ds.format, Format::CatsVsDogs);
    assert_eq!(ds.items.len(), 2);
    assert_eq!(ds.skipped.len(), 2);
}

#[test]
fn archive_entries_cannot_escape() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("data");
    for (name, bytes) in [
        (
            "evil.zip",
            zip_of(&[("ok.txt", b"x".to_vec()), ("../escape.txt", b"x".to_vec())]),
        ),
        ("evil.tar.gz", {
            // tar::Builder refuses `..`; write the header name by hand
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..13].copy_from_slice(b"../escape.txt");
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            let mut raw = h.as_bytes().to_vec();
            raw.extend_from_slice(&[b'x'; 512][..512]);
            raw.extend_from_slice(&[0u8; 1024]);
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap()
        }),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = extract_archive(&p, &dest).unwrap_err().to_string();
        assert!(e.contains("../escape.txt") && e.contains("escape"), "{e}");
        assert!(!dir.path().join("escape.txt").exists());
    }
}
