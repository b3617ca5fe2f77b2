//! A bounded, deterministic mutation fuzzer over the three parsers of untrusted input: the
//! image decoder (with the resize behind it), the checkpoint readers (torch zip, legacy torch
//! pickle, safetensors) and the dataset scanner. Seeds are real files; each mutant must give a
//! result or a clean error — never a panic, a hang or a silently wrong value (an image over the
//! pixel limit, a tensor whose data does not fit its shape, a non-finite weight).
//!
//! `WHISKER_FUZZ_ITERS` sets the mutants per seed (default 150: a few seconds in CI);
//! `WHISKER_FUZZ_SEED` the random seed. A long run:
//! `WHISKER_FUZZ_ITERS=20000 cargo test --release -p whisker --test fuzz -- --nocapture`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use whisker::data::datasets::{Dataset, Labels, SplitMix64};
use whisker::data::decode::{decode_bytes_limited, DecodeFailure};
use whisker::data::transforms::{Normalization, Preprocess};

fn iters() -> usize {
    std::env::var("WHISKER_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

fn seed() -> u64 {
    std::env::var("WHISKER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED)
}

/// Mutate `input` like a coverage-blind fuzzer: bit flips, interesting bytes and integers,
/// insertions, deletions, truncation, duplicated blocks; 1 to 4 of them.
fn mutate(input: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = v.len().max(1);
        let at = rng.below(n);
        match rng.below(8) {
            0 => {
                if !v.is_empty() {
                    let i = at.min(v.len() - 1);
                    v[i] ^= 1 << rng.below(8)
                }
            }
            1 => {
                if !v.is_empty() {
                    let b = [0u8, 0xFF, 0x7F, 0x80, 0x01][rng.below(5)];
                    let i = at.min(v.len() - 1);
                    v[i] = b;
                }
            }
            2 => {
                // a 16- or 32-bit field set to an extreme value (sizes, lengths, offsets)
                let x: u32 = [0, 1, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 60000, 1 << 20][rng.below(7)];
                let b = if rng.below(2) == 0 {
                    x.to_le_bytes()
                } else {
                    x.to_be_bytes()
                };
                let w = if rng.below(2) == 0 { 2 } else { 4 };
                for (k, byte) in b.iter().take(w).enumerate() {
                    if let Some(slot) = v.get_mut(at + k) {
                        *slot = *byte;
                    }
                }
            }
            3 => {
                let len = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                let at = at.min(v.len());
                v.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            5 => v.truncate(at),
            6 => {
                let end = (at + 1 + rng.below(256)).min(v.len());
                if at < end {
                    let block = v[at..end].to_vec();
                    let to = rng.below(v.len() + 1);
                    v.splice(to..to, block);
                }
            }
            _ => {
                if !v.is_empty() {
                    let i = at.min(v.len() - 1);
                    v[i] = rng.below(256) as u8;
                }
            }
        }
    }
    v
}

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    ok: usize,
    clean_errors: usize,
    panics: usize,
    hangs: usize,
    wrong: usize,
}

impl Tally {
    fn report(&self, what: &str) {
        println!(
            "fuzz {what}: {} inputs, {} accepted, {} clean errors, {} panics, {} hangs, {} silently wrong",
            self.inputs, self.ok, self.clean_errors, self.panics, self.hangs, self.wrong
        );
        assert_eq!(
            (self.panics, self.hangs, self.wrong),
            (0, 0, 0),
            "{what}: {self:?}"
        );
        assert_eq!(self.inputs, self.ok + self.clean_errors);
    }
}

/// Run `f` on one input; record the outcome. `f` returns Ok(true) for an accepted input that
/// passed its checks, Ok(false) for an accepted input that is silently wrong, Err for a clean
/// error.
fn one(t: &mut Tally, label: &str, limit: Duration, f: impl FnOnce() -> Result<bool, String>) {
    t.inputs += 1;
    let start = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    if start.elapsed() > limit {
        t.hangs += 1;
        eprintln!("{label}: took {:?}", start.elapsed());
    }
    match r {
        Ok(Ok(true)) => t.ok += 1,
        Ok(Ok(false)) => {
            t.ok += 1;
            t.wrong += 1;
            eprintln!("{label}: accepted but wrong");
        }
        Ok(Err(_)) => t.clean_errors += 1,
        Err(_) => {
            t.panics += 1;
            t.clean_errors += 1;
            eprintln!("{label}: panicked");
        }
    }
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

#[test]
fn fuzz_image_decoder() {
    quiet_panics();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.to_string_lossy().ends_with(".rgb") && p.extension().is_some_and(|e| e != "json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    // bitmaps of every kind whisker's own BMP decoder reads: RLE4, RLE8 (top-down, with
    // deltas), 5-6-5 bitfields, an OS/2 v2 header, a DIB without a file header, icons, a float map, TIFFs of the tiff-crate path (2/4-bit grey, BigTIFF, YCbCr JPEG)
    let pillow = testdata("pillow-images");
    for name in [
        "bmp/g/pal4rle.bmp",
        "bmp/q/pal4rletrns.bmp",
        "bmp/b/rletopdown.bmp",
        "bmp/g/rgb16-565.bmp",
        "bmp/q/pal8os2v2.bmp",
        "bmp/g/pal1.bmp",
        "hopper_unexpected.ico",
        "black_and_white.ico",
        "hopper_mask.ico",
        "hopper_be.pfm",
        "tiff_gray_2_4_bpp/hopper2R.tif",
        "tiff_gray_2_4_bpp/hopper4I.tif",
        "hopper_bigtiff.tif",
        "child_ifd.tiff",
    ] {
        seeds.push((name.into(), std::fs::read(pillow.join(name)).unwrap()));
    }
    let dib = std::fs::read(pillow.join("clipboard.dib")).unwrap();
    // the DIB's header and a few rows (a truncated raster is a clean refusal too)
    seeds.push(("clipboard.dib".into(), dib[..4096].to_vec()));
    seeds.sort();
    assert!(seeds.len() >= 25, "seeds: {}", seeds.len());
    let pre = Preprocess {
        resize: 40,
        crop: 32,
        norm: Normalization::ImageNet,
        filter: whisker::data::resize::Filter::Bilinear,
    };
    // a small pixel limit, so that mutated sizes hit it often
    let limit = 4_000_000u64;
    let mut rng = SplitMix64(seed());
    let mut t = Tally::default();
    for (name, bytes) in &seeds {
        for i in 0..iters() {
            let m = mutate(bytes, &mut rng);
            one(
                &mut t,
                &format!("{name} #{i}"),
                Duration::from_secs(5),
                || match decode_bytes_limited(&m, limit) {
                    Ok(img) => {
                        let within = (img.width() as u64) * (img.height() as u64) <= limit;
                        let out = pre.apply(&img);
                        Ok(within && out.dimensions() == (32, 32))
                    }
                    Err(DecodeFailure::TooLarge { width, height, .. }) => {
                        if width * height <= limit {
                            Ok(false)
                        } else {
                            Err("too large".into())
                        }
                    }
                    Err(e) => Err(e.to_string()),
                },
            );
        }
    }
    t.report("image decoder");
}

#[test]
fn fuzz_checkpoint_readers() {
    quiet_panics();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    // a small safetensors file written by whisker (with its checksum) and one without
    let mut sd = whisker::weights::StateDict::from_file(&fixtures.join("tiny_zip.pth")).unwrap();
    let st = dir.path().join("seed.safetensors");
    sd.save_safetensors(&st).unwrap();
    let plain = dir.path().join("plain.safetensors");
    {
        let t: Vec<(String, Vec<u8>, Vec<usize>)> = sd
            .tensors
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    whisker::weights::f32_to_le(&v.data),
                    v.shape.clone(),
                )
            })
            .collect();
        let views: Vec<_> = t
            .iter()
            .map(|(k, b, s)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(&plain, safetensors::serialize(views, &None).unwrap()).unwrap();
    }
    sd.tensors.clear();
    let seeds: Vec<PathBuf> = vec![
        fixtures.join("tiny_zip.pth"),
        fixtures.join("tiny_nested.pth"),
        fixtures.join("tiny_f16.pth"),
        fixtures.join("tiny_legacy.pth"),
        fixtures.join("evil.pth"),
        st,
        plain,
    ];
    // every seed but the malicious one reads
    for s in &seeds[..seeds.len() - 1] {
        if !s.ends_with("evil.pth") {
            whisker::weights::StateDict::from_file(s).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut rng = SplitMix64(seed() ^ 1);
    let mut t = Tally::default();
    let path = dir.path().join("mutant");
    for s in &seeds {
        let bytes = std::fs::read(s).unwrap();
        for i in 0..iters() {
            std::fs::write(&path, mutate(&bytes, &mut rng)).unwrap();
            one(
                &mut t,
                &format!("{} #{i}", s.display()),
                Duration::from_secs(5),
                || match whisker::weights::StateDict::from_file(&path) {
                    Ok(sd) => Ok(sd.tensors.values().all(|v| {
                        v.data.len() == v.shape.iter().product::<usize>()
                            && v.data.iter().all(|x| x.is_finite())
                    })),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
    }
    t.report("checkpoint readers");
}

/// Random trees of class folders with images, non-images, empty files, links (to files, to
/// folders, loops) and odd names: the scan ends, and every file it returns is counted once.
#[cfg(unix)]
#[test]
fn fuzz_dataset_scanner() {
    quiet_panics();
    let png = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode/palette.png"),
    )
    .unwrap();
    let mut rng = SplitMix64(seed() ^ 2);
    let mut t = Tally::default();
    let n = (iters() / 3).max(20);
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ds");
        build_tree(&root, &png, &mut rng);
        one(
            &mut t,
            &format!("tree #{i}"),
            Duration::from_secs(10),
            || match Dataset::open(&root, None, Labels::Breed) {
                Ok(ds) => {
                    let mut seen = std::collections::HashSet::new();
                    let once = ds
                        .items
                        .iter()
                        .all(|it| seen.insert(std::fs::canonicalize(&it.path).unwrap()));
                    let labels_ok = ds.items.iter().all(|it| it.label < ds.classes.len());
                    // every item is read (FIFOs among them would block a careless reader)
                    let read = ds
                        .items
                        .iter()
                        .all(|it| whisker::data::decode_file(&it.path).is_ok());
                    Ok(once && labels_ok && read)
                }
                Err(e) => Err(e.to_string()),
            },
        );
    }
    t.report("dataset scanner");
}

fn build_tree(root: &Path, png: &[u8], rng: &mut SplitMix64) {
    use std::os::unix::ffi::OsStrExt;
    let mut dirs = vec![root.to_path_buf()];
    std::fs::create_dir_all(root).unwrap();
    for _ in 0..2 + rng.below(3) {
        let d = root.join(format!("class{}", rng.below(5)));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("seed.png"), png).unwrap();
        dirs.push(d);
    }
    for k in 0..25 {
        let parent = dirs[rng.below(dirs.len())].clone();
        let name = match rng.below(6) {
            0 => std::ffi::OsString::from(format!("img{k}.png")),
            1 => std::ffi::OsStr::from_bytes(&[b'x', 0xE9, b'0' + (k % 10) as u8]).to_os_string(),
            2 => std::ffi::OsString::from(format!(".hidden{k}")),
            _ => std::ffi::OsString::from(format!("f{k}.jpg")),
        };
        let p = parent.join(&name);
        let r = match rng.below(9) {
            // a FIFO without a writer: a reader that opened it blocking would hang
            8 => std::process::Command::new("mkfifo")
                .arg(&p)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|_| ()),
            0 => std::fs::create_dir_all(&p).map(|_| dirs.push(p.clone())),
            1 => std::os::unix::fs::symlink(".", &p),
            2 => std::os::unix::fs::symlink("..", &p),
            3 => {
                let target = dirs[rng.below(dirs.len())].clone();
                std::os::unix::fs::symlink(target, &p)
            }
            4 => std::fs::write(&p, b""),
            5 => std::fs::write(&p, b"not an image"),
            6 => std::os::unix::fs::symlink("missing-target", &p),
            _ => std::fs::write(&p, png),
        };
        let _ = r;
    }
}

/// A JPEG cut into its segments: each marker segment, and each scan with its entropy-coded
/// data, as one piece (SOI first, EOI last).
fn jpeg_segments(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![b[..2].to_vec()];
    let mut i = 2;
    while i + 4 <= b.len() {
        let marker = b[i + 1];
        if marker == 0xD9 {
            break;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let mut end = i + 2 + len;
        if marker == 0xDA {
            // the entropy-coded data runs to the next marker that is not a stuffed 0xFF00
            // or a restart marker
            while end + 1 < b.len()
                && !(b[end] == 0xFF && b[end + 1] != 0 && !(0xD0..=0xD7).contains(&b[end + 1]))
            {
                end += 1;
            }
        }
        out.push(b[i..end.min(b.len())].to_vec());
        i = end;
    }
    out.push(vec![0xFF, 0xD9]);
    out
}

/// The structures behind the bombs of issue 25, generated rather than mutated byte by byte:
/// progressive JPEGs whose scans are repeated (up to thousands of times), dropped or
/// reordered under declared sizes up to 20000×20000 (item 7), and torch zip checkpoints
/// whose local and central directory records declare sizes, offsets and counts up to 4 GB
/// (item 6). Each must be decoded or refused within the time bound, never a panic, never an
/// allocation of what the file only declares.
#[test]
fn fuzz_bomb_structures() {
    quiet_panics();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let prog = std::fs::read(fixtures.join("decode/progressive.jpg")).unwrap();
    let segs = jpeg_segments(&prog);
    assert_eq!(
        segs.concat(),
        prog,
        "the segments put back together are the file"
    );
    let scans: Vec<usize> = (0..segs.len())
        .filter(|&i| segs[i].starts_with(&[0xFF, 0xDA]))
        .collect();
    assert!(scans.len() >= 2, "{} scans", scans.len());
    let mut rng = SplitMix64(seed() ^ 3);
    let mut t = Tally::default();
    let limit = 4_000_000u64;
    for i in 0..(iters() / 3).max(30) {
        let mut out: Vec<u8> = Vec::new();
        for (k, seg) in segs.iter().enumerate() {
            let mut seg = seg.clone();
            // a frame header declaring another size
            if seg.len() > 9 && (seg[1] == 0xC2 || seg[1] == 0xC0) && rng.below(2) == 0 {
                let side = [16u16, 1000, 8000, 20000][rng.below(4)];
                seg[5..7].copy_from_slice(&side.to_be_bytes());
                seg[7..9].copy_from_slice(&side.to_be_bytes());
            }
            let copies = if scans.contains(&k) {
                match rng.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => 1 + rng.below(50),
                    _ => 1 + rng.below(3000),
                }
            } else {
                1
            };
            for _ in 0..copies {
                out.extend_from_slice(&seg);
            }
        }
        one(
            &mut t,
            &format!("jpeg scans #{i}"),
            Duration::from_secs(5),
            || match decode_bytes_limited(&out, limit) {
                Ok(img) => Ok((img.width() as u64) * (img.height() as u64) <= limit),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    t.report("JPEG scan structures");

    let zip = std::fs::read(fixtures.join("tiny_zip.pth")).unwrap();
    let find = |sig: &[u8]| -> Vec<usize> {
        (0..zip.len().saturating_sub(3))
            .filter(|&i| &zip[i..i + 4] == sig)
            .collect()
    };
    // (record start, field offsets of 32-bit sizes/offsets, of 16-bit counts)
    let mut fields: Vec<(usize, u8)> = Vec::new();
    for at in find(b"PK\x03\x04") {
        fields.extend([(at + 18, 4), (at + 22, 4), (at + 26, 2), (at + 28, 2)]);
    }
    for at in find(b"PK\x01\x02") {
        fields.extend([(at + 20, 4), (at + 24, 4), (at + 42, 4), (at + 28, 2)]);
    }
    for at in find(b"PK\x05\x06") {
        fields.extend([(at + 8, 2), (at + 10, 2), (at + 12, 4), (at + 16, 4)]);
    }
    assert!(fields.len() >= 12, "{} zip fields", fields.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.pth");
    let mut t = Tally::default();
    for i in 0..(iters() / 2).max(40) {
        let mut z = zip.clone();
        for _ in 0..1 + rng.below(3) {
            let (at, width) = fields[rng.below(fields.len())];
            let v: u32 = [u32::MAX, 0x7FFF_FFFF, 4 << 30 >> 2, 1 << 20, 0, 1][rng.below(6)];
            if width == 4 {
                z[at..at + 4].copy_from_slice(&v.to_le_bytes());
            } else {
                z[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
            }
        }
        std::fs::write(&path, &z).unwrap();
        one(
            &mut t,
            &format!("zip records #{i}"),
            Duration::from_secs(5),
            || match whisker::weights::StateDict::from_file(&path) {
                Ok(sd) => Ok(sd
                    .tensors
                    .values()
                    .all(|v| v.data.len() == v.shape.iter().product::<usize>())),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    t.report("zip records");
}

#[test]
fn legacy_seed_reads_as_written() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_legacy.pth");
    let sd = whisker::weights::StateDict::from_file(&p).unwrap();
    let w = &sd.tensors["conv.weight"];
    assert_eq!(w.shape, vec![2, 3]);
    assert_eq!(w.data, vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
    assert_eq!(sd.tensors["conv.bias"].data, vec![0.25, -0.75]);
    let _ = testdata;
}
