//! Shared helpers of the integration tests: test data, golden files, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};

/// Where `tools/fetch-testdata.sh` put the real photos and weights.
pub fn testdata(name: &str) -> PathBuf {
    let dir = std::env::var_os("WHISKER_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.testdata"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "test data {} is missing: run tools/fetch-testdata.sh first",
        p.display()
    );
    p
}

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// All float tensors of a golden safetensors file (f32, or f16 widened exactly), as (shape,
/// f32 values).
pub fn golden(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(golden_path(name)).expect("golden file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .filter_map(|(k, v)| {
            let data = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                _ => return None,
            };
            Some((k.to_string(), (v.shape().to_vec(), data)))
        })
        .collect()
}

/// An IEEE half's value (every half is exact in f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    sign * match e {
        0 => m * 2f32.powi(-24),
        31 if m == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The BatchNorm statistics a golden file carries (`<prefix>bn.<key>`, measured on real
/// photos by the generator), as a state dict for
/// [`whisker::Backbone::with_formula_weights_except`]; `None` when it has none.
pub fn golden_bn(
    g: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
) -> Option<whisker::weights::StateDict> {
    let tensors: std::collections::BTreeMap<_, _> = g
        .iter()
        .filter_map(|(k, (shape, data))| {
            let key = k.strip_prefix(prefix)?.strip_prefix("bn.")?;
            Some((
                key.to_string(),
                whisker::weights::RawTensor {
                    shape: shape.clone(),
                    data: data.clone(),
                },
            ))
        })
        .collect();
    (!tensors.is_empty()).then(|| whisker::weights::StateDict {
        source: "golden BatchNorm statistics".into(),
        tensors,
    })
}

/// The formula-weights backbone a golden file was computed with (its measured BatchNorm
/// statistics, when it has them).
pub fn golden_backbone(name: &str, device: &burn::tensor::Device) -> whisker::Backbone {
    let g = golden(&format!("{name}.safetensors"));
    whisker::Backbone::with_formula_weights_except(name, golden_bn(&g, ""), device).unwrap()
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 data")
}

pub fn tensor4(shape: &[usize], data: Vec<f32>, device: &burn::tensor::Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(data, [shape[0], shape[1], shape[2], shape[3]]),
        device,
    )
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// ‖a − b‖₂ / ‖b‖₂
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for a set of files (by path, e.g. "/x.tar.gz"), with
/// Range support. The first `cut` requests send only half of the body and close, to
/// simulate an interrupted download. Returns the base URL and counters (requests, ranged).
pub fn serve(
    files: HashMap<String, Vec<u8>>,
    cut: usize,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    serve_cutting(files, cut, "")
}

/// [`serve`], where only requests whose path contains `cutting` count towards the `cut`
/// interrupted ones.
pub fn serve_cutting(
    files: HashMap<String, Vec<u8>>,
    cut: usize,
    cutting: &'static str,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let ranged = Arc::new(AtomicUsize::new(0));
    let (rq, rg) = (requests.clone(), ranged.clone());
    std::thread::spawn(move || {
        let mut cuttable = 0;
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            rq.fetch_add(1, Ordering::SeqCst);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let k = if path.contains(cutting) {
                cuttable += 1;
                cuttable - 1
            } else {
                usize::MAX
            };
            let Some(body) = files.get(&path) else {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let start = req
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(|r| r.trim_end_matches('-').parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let (status, part) = if start > 0 {
                rg.fetch_add(1, Ordering::SeqCst);
                ("206 Partial Content", &body[start..])
            } else {
                ("200 OK", &body[..])
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = s.write_all(head.as_bytes());
            let send = if k < cut {
                &part[..part.len() / 2]
            } else {
                part
            };
            let _ = s.write_all(send);
            let _ = s.flush();
        }
    });
    (format!("http://{addr}"), requests, ranged)
}

/// A `.tar.gz` archive of `(name, bytes)` entries.
pub fn tar_gz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(enc);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, &data[..]).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap()
}

/// `n` real digits of each of the classes 0, 1 and 2 (scikit-learn's, as 8×8 images scaled
/// up by `whisker data digits`), decoded, with their labels.
pub fn digits(n: usize) -> (Vec<image::RgbImage>, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    whisker::data::digits::write_image_folder(
        &std::fs::read(testdata("digits.csv.gz")).unwrap(),
        dir.path(),
        Some(200),
    )
    .unwrap();
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    for class in 0..3 {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(class.to_string()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.into_iter().take(n) {
            imgs.push(whisker::data::decode_file(&f).unwrap());
            labels.push(class);
        }
    }
    (imgs, labels)
}

/// EfficientNet-Lite0 with its real ImageNet weights on `device`.
pub fn lite0(device: &burn::tensor::Device) -> whisker::Backbone {
    whisker::Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        device,
    )
    .unwrap()
}
