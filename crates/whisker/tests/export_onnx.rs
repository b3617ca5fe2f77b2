//! `whisker export`'s ONNX models of every backbone (formula weights, BatchNorm statistics
//! measured on real photos: `tests/golden/`): each model is written and its structure
//! checked here (input, outputs, metadata, every weight present once); with
//! `WHISKER_EXPORT_DIR` set, the models named in `WHISKER_EXPORT_WRITE` (a comma-separated
//! list, or `all`) are also left there with a batch of 7 real photos and whisker's logits and
//! features for them, for `tools/py/check_export.py` to run with ONNX Runtime and OpenVINO
//! (`tools/test.sh` does both, for one backbone of each family), and their PyTorch state
//! dicts (`NAME.safetensors`, the rebuild code in `NAME.torch.py`) for
//! `tools/py/check_export_torch.py`. Every backbone's PyTorch export is also read back here,
//! in both formats, by whisker's own checkpoint reader (which maps torchvision's, timm's and
//! lukemelas' names to the family's): the same weights come back.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::models;
use whisker::data::transforms::to_tensor;
use whisker::export::onnx::{summary, Summary};
use whisker::model::Model;

/// A little-endian float32 `.npy` of `shape`.
fn write_npy(path: &std::path::Path, shape: &[usize], v: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

/// Seven real photos at the backbone's input size: the four test photos and three of them
/// mirrored.
fn photos(b: &whisker::Backbone) -> Vec<image::RgbImage> {
    let pre = b.preprocess();
    let mut v: Vec<image::RgbImage> = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|p| pre.load(&testdata(p)).unwrap())
        .collect();
    for i in 0..3 {
        v.push(image::imageops::flip_horizontal(&v[i]));
    }
    v
}

fn check(name: &str, dir: Option<&std::path::Path>) {
    let device = Device::flex();
    let b = golden_backbone(name, &device);
    let model = Model::from_backbone(b, format!("formula weights of {name}"));
    let b = model.backbone();
    let bytes = whisker::export::onnx_bytes(&model).unwrap();
    let s: Summary = summary(&bytes).unwrap();
    let crop = b.spec.input_size as i64;
    assert_eq!(
        s.inputs,
        vec![("pixels".to_string(), vec![-1, 3, crop, crop])]
    );
    let dim = b.spec.feature_dim as i64;
    let mut outputs = vec![("features".to_string(), vec![-1, dim])];
    if b.net.has_imagenet_head() {
        outputs.insert(0, ("logits".to_string(), vec![-1, 1000]));
    }
    assert_eq!(s.outputs, outputs, "{name}");
    assert_eq!(s.opset, 17);
    assert_eq!(s.metadata["whisker.backbone"], name);
    let pre: serde_json::Value =
        serde_json::from_str(&s.metadata["whisker.preprocessing"]).unwrap();
    assert_eq!(pre["crop"], b.spec.input_size);
    assert_eq!(pre["resize"], b.spec.resize);
    assert_eq!(
        s.metadata.contains_key("whisker.classes"),
        b.net.has_imagenet_head()
    );
    // every node's inputs are computed before it or are weights, and every weight is used
    assert!(
        s.dangling.is_empty(),
        "{name}: inputs never computed: {:?}",
        s.dangling
    );
    assert!(
        s.unused.is_empty(),
        "{name}: weights never used: {:?}",
        s.unused
    );
    let Some(dir) = dir else { return };
    let file = dir.join(format!("{name}.safetensors"));
    let done = whisker::export::torch(&model, &file).unwrap();
    std::fs::write(dir.join(format!("{name}.torch.py")), done.python.unwrap()).unwrap();
    let imgs = photos(b);
    let x = to_tensor(&imgs, &device);
    let pixels = to_vec(x.clone());
    let out = b.forward(x, &mut whisker::backbones::Taps::none());
    let n = imgs.len();
    let c = b.spec.input_size;
    std::fs::write(dir.join(format!("{name}.onnx")), &bytes).unwrap();
    write_npy(
        &dir.join(format!("{name}.pixels.npy")),
        &[n, 3, c, c],
        &pixels,
    );
    let feats = to_vec(out.features);
    write_npy(
        &dir.join(format!("{name}.features.npy")),
        &[n, feats.len() / n],
        &feats,
    );
    if b.net.has_imagenet_head() {
        let l = to_vec(out.logits);
        write_npy(
            &dir.join(format!("{name}.logits.npy")),
            &[n, l.len() / n],
            &l,
        );
    }
}

#[test]
fn every_backbone_exports_to_onnx() {
    let dir = std::env::var_os("WHISKER_EXPORT_DIR").map(std::path::PathBuf::from);
    if let Some(d) = &dir {
        std::fs::create_dir_all(d).unwrap();
    }
    let write = std::env::var("WHISKER_EXPORT_WRITE").unwrap_or_default();
    let written = |name: &str| write == "all" || write.split(',').any(|n| n == name);
    // WHISKER_EXPORT_ONLY=a,b: just these (by hand)
    let only = std::env::var("WHISKER_EXPORT_ONLY").ok();
    let mut done = 0;
    for spec in models() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == spec.name))
        {
            continue;
        }
        check(spec.name, dir.as_deref().filter(|_| written(spec.name)));
        done += 1;
    }
    assert!(done > 0);
}

/// Every backbone's PyTorch state dict (but the ViT-L's: `WHISKER_EXPORT_ONLY`): every
/// BatchNorm has its `num_batches_tracked`, the classifier its place; those of
/// [`ROUND_TRIP`] are written as safetensors and as `.pth` and read back by whisker's
/// checkpoint reader and the family's key mapping: every weight and BatchNorm statistic comes
/// back (exactly, but DINOv2-with-registers' class token, which timm's layout stores with its
/// position embedding added).
#[test]
fn every_backbone_exports_to_pytorch_and_reads_back() {
    use whisker::export::torch::{pth_bytes, safetensors_bytes, torch_model, Entry, TorchFormat};
    let device = Device::flex();
    let only = std::env::var("WHISKER_EXPORT_ONLY").ok();
    let dir = tempfile::tempdir().unwrap();
    let mut done = 0;
    for spec in models() {
        let name = spec.name;
        // (the ViT-L's, > 250 M parameters, named as their smaller siblings, by hand only:
        // 9 s each)
        let wanted = match only.as_deref() {
            Some(o) => o.split(',').any(|n| n == name),
            None => spec.params < 250_000_000,
        };
        if !wanted {
            continue;
        }
        let b = golden_backbone(name, &device);
        let want = effective(b.state_dict().unwrap().tensors);
        let model = Model::from_backbone(b, format!("formula weights of {name}"));
        // written and read back: see ROUND_TRIP (any, by hand, with WHISKER_EXPORT_ONLY)
        let formats: &[TorchFormat] = if ROUND_TRIP.contains(&name) {
            &[TorchFormat::Safetensors, TorchFormat::Pth]
        } else if only.is_some() {
            &[TorchFormat::Safetensors]
        } else {
            &[]
        };
        let m = torch_model(&model, "model", TorchFormat::Safetensors).unwrap();
        let running = m
            .tensors
            .keys()
            .filter(|k| k.ends_with(".running_mean"))
            .count();
        let counts = m
            .tensors
            .iter()
            .filter(|(k, e)| k.ends_with(".num_batches_tracked") && **e == Entry::Count(0))
            .count();
        assert_eq!(counts, running, "{name}");
        assert_eq!(m.tensors.len(), want.len() + running, "{name}");
        let has_head = model.backbone().net.has_imagenet_head();
        assert_eq!(m.output, if has_head { "logits" } else { "features" });
        let slot = &m.pytorch.classifier;
        assert_eq!(
            m.tensors.contains_key(&format!("{slot}.weight")),
            has_head,
            "{name}: {slot}.weight among {:?}",
            m.tensors.keys().rev().take(4).collect::<Vec<_>>()
        );
        for &format in formats {
            let m = torch_model(&model, "model", format).unwrap();
            let (bytes, path) = match format {
                TorchFormat::Safetensors => (
                    safetensors_bytes(&m).unwrap(),
                    dir.path().join("m.safetensors"),
                ),
                TorchFormat::Pth => (pth_bytes(&m).unwrap(), dir.path().join("m.pth")),
            };
            std::fs::write(&path, &bytes).unwrap();
            let sd = whisker::weights::StateDict::from_file(&path).unwrap();
            let back = whisker::Backbone::from_state_dict(name, sd, &device)
                .unwrap_or_else(|e| panic!("{name} {format:?}: {e}"));
            let got = effective(back.state_dict().unwrap().tensors);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}"
            );
            for (k, w) in &want {
                let g = &got[k];
                assert_eq!(g.shape, w.shape, "{name} {k}");
                let d = max_abs_diff(&g.data, &w.data);
                let tol = if k == "cls_token" {
                    1e-6 * max_abs(&w.data).max(1.0)
                } else {
                    0.0
                };
                assert!(d <= tol, "{name} {format:?} {k}: |Δ| {d}");
            }
        }
        done += 1;
    }
    assert!(done > 0);
}

/// A model whose BatchNorm was folded for inference (other parameters than it was loaded
/// with) has no state dict: the export says so, it does not write a partial one.
#[test]
fn a_folded_model_is_refused() {
    let device = Device::flex();
    let model = Model::from_backbone(golden_backbone("resnet18", &device), "formula".into())
        .for_inference();
    let e = whisker::export::torch::torch_model(
        &model,
        "m.safetensors",
        whisker::export::torch::TorchFormat::Safetensors,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("BatchNorm folded"), "{e}");
}

/// DINOv2 with registers: the class token with its position embedding added, that
/// embedding zero (timm's layout and the official one hold the same sum).
fn effective(
    mut t: std::collections::BTreeMap<String, whisker::weights::RawTensor>,
) -> std::collections::BTreeMap<String, whisker::weights::RawTensor> {
    if !t.contains_key("register_tokens") {
        return t;
    }
    let (Some(pos), Some(cls)) = (t.get("pos_embed").cloned(), t.get_mut("cls_token")) else {
        return t;
    };
    let c = cls.data.len();
    cls.data
        .iter_mut()
        .zip(&pos.data)
        .for_each(|(a, b)| *a += b);
    if let Some(p) = t.get_mut("pos_embed") {
        p.data[..c].iter_mut().for_each(|v| *v = 0.0);
    }
    t
}

/// Written and read back in both formats: the families whose PyTorch names are not whisker's
/// (EfficientNet-Lite under timm's, DINOv2 with and without registers), and two whose names
/// are (for the writers).
const ROUND_TRIP: [&str; 6] = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_lite0",
    "efficientnet_lite3",
    "dinov2_vits14",
    "dinov2_vits14_reg",
];
