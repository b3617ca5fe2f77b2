//! `whisker export --format torch`: the model as a PyTorch state dict under torchvision's or
//! timm's key names ([`crate::backbones::pytorch`]), a run's head in the classifier's place
//! (its feature standardisation folded into the first linear layer, in f64), and the Python
//! that rebuilds it. Written as safetensors (with whisker's metadata) or as a `.pth` file in
//! `torch.save`'s zip format, which `torch.load(…, weights_only=True)` reads.

use std::collections::BTreeMap;

use crate::backbones::{Library, PyTorch};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::model_file::Head;
use crate::weights::RawTensor;

/// The file format, from the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    /// `.safetensors`: the tensors and whisker's metadata (classes, preprocessing, the
    /// rebuild code); `safetensors.torch.load_file`.
    Safetensors,
    /// `.pth` / `.pt`: `torch.save`'s zip format of an `OrderedDict`; `torch.load`.
    Pth,
}

impl TorchFormat {
    /// The format a file name asks for.
    pub fn of(path: &std::path::Path) -> Result<TorchFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(TorchFormat::Safetensors),
            Some("pth") | Some("pt") => Ok(TorchFormat::Pth),
            _ => Err(Error::Invalid(format!(
                "{}: a PyTorch export is written as .safetensors or .pth (.pt); name the file so",
                path.display()
            ))),
        }
    }
}

/// One tensor of the state dict.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    F32(RawTensor),
    /// A BatchNorm's `num_batches_tracked` (an int64 scalar in PyTorch).
    Count(i64),
}

/// A model as PyTorch holds it.
#[derive(Debug, Clone)]
pub struct TorchModel {
    /// Key → tensor, in the library's names.
    pub tensors: BTreeMap<String, Entry>,
    /// Which model holds them.
    pub pytorch: PyTorch,
    /// The Python that rebuilds the model from the file and classifies a photo.
    pub python: String,
    /// What the model outputs: `logits` or `features` (a headless feature extractor).
    pub output: &'static str,
    /// How many classes the logits have (0 for features).
    pub classes: usize,
    /// Metadata (safetensors only): classes, preprocessing, provenance.
    pub metadata: BTreeMap<String, String>,
}

/// `model` as a PyTorch state dict and its rebuild code, for a file named `file` (as the
/// code names it). `model` must not have folded BatchNorm into its convolutions
/// ([`Model::for_inference`]): the state dict has every BatchNorm layer.
pub fn torch_model(model: &Model, file: &str, format: TorchFormat) -> Result<TorchModel> {
    let b = model.backbone();
    let mut keys = b.state_dict()?.tensors;
    let pytorch = crate::backbones::pytorch(b.spec, &mut keys);
    let slot = pytorch.classifier.clone();
    let head = model.trained().map(|t| &t.head);
    if let Some(h) = head {
        let pre = format!("{slot}.");
        keys.retain(|k, _| !k.starts_with(&pre));
        for (k, t) in folded_head(h) {
            keys.insert(format!("{slot}.{k}"), t);
        }
    }
    let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
    for (k, t) in keys {
        if let Some(p) = k.strip_suffix(".running_mean") {
            tensors.insert(format!("{p}.num_batches_tracked"), Entry::Count(0));
        }
        tensors.insert(k, Entry::F32(t));
    }
    let has_logits = head.is_some() || b.net.has_imagenet_head();
    let kind = match head {
        Some(Head::Linear(h)) => HeadKind::Linear(h.dim, h.classes),
        Some(Head::Mlp(h)) => HeadKind::Mlp(h.dim, h.hidden, h.classes),
        None if has_logits => HeadKind::ImageNet,
        None => HeadKind::None,
    };
    let pre = model.preprocess();
    let classes: &[String] = if has_logits { model.labels() } else { &[] };
    let python = rebuild(&Rebuild {
        p: &pytorch,
        slot: &slot,
        kind,
        file,
        format,
        pre: &pre,
        classes,
        feature_dim: b.spec.feature_dim,
    });
    let mut metadata = BTreeMap::new();
    metadata.insert("format".into(), "pt".into());
    metadata.insert("whisker.backbone".into(), b.spec.name.to_string());
    metadata.insert(
        "whisker.weights_sha256".into(),
        model.weights_sha256().to_string(),
    );
    if let Some(s) = model.finetuned_sha256() {
        metadata.insert("whisker.finetuned_model_sha256".into(), s.to_string());
    }
    let (mean, std) = pre.norm.mean_std();
    let preprocessing = super::preprocessing(
        &pre,
        "normalised N×3×crop×crop: RGB in [0, 1] (shorter side resized to `resize`, then the centre crop), minus `mean`, divided by `std` (torchvision's ToTensor, Normalize)",
        serde_json::json!({ "mean": mean, "std": std }),
    );
    metadata.insert("whisker.preprocessing".into(), preprocessing.to_string());
    if has_logits {
        metadata.insert(
            "whisker.classes".into(),
            serde_json::to_string(classes).unwrap_or_default(),
        );
    }
    metadata.insert("whisker.python".into(), python.clone());
    metadata.insert(
        "whisker.version".into(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    Ok(TorchModel {
        tensors,
        pytorch,
        python,
        output: if has_logits { "logits" } else { "features" },
        classes: classes.len(),
        metadata,
    })
}

/// A trained head as PyTorch layers: `weight` `[out, in]` and `bias`, the standardisation
/// `(f − mean) / std` folded into the first layer (in f64): `W'ᵢⱼ = Wⱼᵢ / stdⱼ`,
/// `b'ᵢ = bᵢ − Σⱼ W'ᵢⱼ meanⱼ`. Linear: `weight`, `bias`; MLP: `0.*` and `2.*` (a
/// `Sequential(Linear, ReLU, Linear)`).
fn folded_head(h: &Head) -> Vec<(String, RawTensor)> {
    /// `[inp, out]` row-major (whisker's) → `[out, inp]`, each input scaled by `scale`, and
    /// the bias minus the weights times `shift` (per input).
    fn layer(
        w: &[f32],
        b: &[f32],
        inp: usize,
        out: usize,
        norm: Option<(&[f32], &[f32])>,
    ) -> (RawTensor, RawTensor) {
        let mut wt = vec![0f32; inp * out];
        let mut bias = vec![0f32; out];
        for o in 0..out {
            let mut shift = 0f64;
            for i in 0..inp {
                let mut v = w[i * out + o] as f64;
                if let Some((mean, std)) = norm {
                    v /= std[i] as f64;
                    shift += v * mean[i] as f64;
                }
                wt[o * inp + i] = v as f32;
            }
            bias[o] = (b[o] as f64 - shift) as f32;
        }
        (
            RawTensor {
                shape: vec![out, inp],
                data: wt,
            },
            RawTensor {
                shape: vec![out],
                data: bias,
            },
        )
    }
    match h {
        Head::Linear(h) => {
            let (w, b) = layer(&h.w, &h.b, h.dim, h.classes, Some((&h.mean, &h.std)));
            vec![("weight".into(), w), ("bias".into(), b)]
        }
        Head::Mlp(h) => {
            let (w1, b1) = layer(&h.w1, &h.b1, h.dim, h.hidden, Some((&h.mean, &h.std)));
            let (w2, b2) = layer(&h.w2, &h.b2, h.hidden, h.classes, None);
            vec![
                ("0.weight".into(), w1),
                ("0.bias".into(), b1),
                ("2.weight".into(), w2),
                ("2.bias".into(), b2),
            ]
        }
    }
}

/// What sits in the classifier's place.
#[derive(Debug, Clone, Copy)]
enum HeadKind {
    /// The backbone's own ImageNet classifier.
    ImageNet,
    /// No classifier: the model outputs the features.
    None,
    Linear(usize, usize),
    Mlp(usize, usize, usize),
}

/// Python source of the head module for `kind`, or `None` when the constructor's own
/// classifier (its `num_classes`) holds it.
fn head_module(kind: HeadKind) -> Option<String> {
    match kind {
        HeadKind::ImageNet => None,
        HeadKind::None => Some("torch.nn.Identity()".into()),
        HeadKind::Linear(d, k) => Some(format!("torch.nn.Linear({d}, {k})")),
        HeadKind::Mlp(d, h, k) => Some(format!(
            "torch.nn.Sequential(torch.nn.Linear({d}, {h}), torch.nn.ReLU(), torch.nn.Linear({h}, {k}))"
        )),
    }
}

/// A Python string literal.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// What the rebuild code says.
struct Rebuild<'a> {
    p: &'a PyTorch,
    /// The classifier's key prefix.
    slot: &'a str,
    kind: HeadKind,
    /// The file, as the code names it.
    file: &'a str,
    format: TorchFormat,
    pre: &'a crate::data::transforms::Preprocess,
    /// Empty for a headless feature extractor.
    classes: &'a [String],
    feature_dim: usize,
}

/// The Python that rebuilds the model from `file` and classifies a photo with it.
fn rebuild(r: &Rebuild<'_>) -> String {
    let Rebuild {
        p,
        slot,
        kind,
        file,
        format,
        pre,
        classes,
        feature_dim,
    } = *r;
    let mut s = String::from("import torch\n");
    match p.library {
        Library::Torchvision => s.push_str("import torchvision\n"),
        Library::Timm => s.push_str("import timm\n"),
    }
    if format == TorchFormat::Safetensors {
        s.push_str("from safetensors.torch import load_file\n");
    }
    s.push_str("from PIL import Image\nfrom torchvision import transforms as T\n\n");
    let construct = |num_classes: Option<usize>| {
        let mut args: Vec<String> = Vec::new();
        let call = match p.library {
            Library::Torchvision => format!("torchvision.models.{}", p.constructor),
            Library::Timm => {
                args.push(py_str(&p.constructor));
                args.push("pretrained=False".into());
                "timm.create_model".to_string()
            }
        };
        if let Some(k) = num_classes {
            args.push(format!("num_classes={k}"));
        }
        args.extend(p.kwargs.iter().cloned());
        format!("{call}({})", args.join(", "))
    };
    if p.token_probe {
        // the library's model gives tokens: whisker's feature is made here
        s.push_str(&format!(
            "class Dinov2Classifier(torch.nn.Module):\n    \"\"\"DINOv2's linear-probe feature (the class token ⊕ the mean patch token, after the final LayerNorm), then `linear_head` (the layout of DINOv2's torch hub classifiers).\"\"\"\n\n    def __init__(self, head):\n        super().__init__()\n        self.backbone = {}\n        self.linear_head = head\n\n    def forward(self, x):\n        t = self.backbone.forward_features(x)\n        p = self.backbone.num_prefix_tokens\n        return self.linear_head(torch.cat([t[:, 0], t[:, p:].mean(dim=1)], dim=1))\n\n\n",
            construct(Some(0))
        ));
        // (the ImageNet classifier of a checkpoint that has one: `linear_head`, 1000 classes)
        let head = head_module(kind)
            .unwrap_or_else(|| format!("torch.nn.Linear({feature_dim}, {})", classes.len()));
        s.push_str(&format!("model = Dinov2Classifier({head})\n"));
    } else {
        match kind {
            HeadKind::ImageNet => s.push_str(&format!("model = {}\n", construct(None))),
            HeadKind::Linear(_, k) => s.push_str(&format!("model = {}\n", construct(Some(k)))),
            HeadKind::None | HeadKind::Mlp(..) => {
                s.push_str(&format!("model = {}\n", construct(None)));
                s.push_str(&format!(
                    "model.set_submodule({}, {})\n",
                    py_str(slot),
                    head_module(kind).unwrap_or_default()
                ));
            }
        }
    }
    let load = match format {
        TorchFormat::Safetensors => format!("load_file({})", py_str(file)),
        TorchFormat::Pth => format!("torch.load({}, weights_only=True)", py_str(file)),
    };
    s.push_str(&format!("model.load_state_dict({load})\nmodel.eval()\n\n"));
    let (mean, std) = pre.norm.mean_std();
    let list = |v: [f64; 3]| {
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let filter = format!("{:?}", pre.filter).to_uppercase();
    s.push_str(&format!(
        "normalize = T.Normalize(mean=[{}], std=[{}])\npreprocess = T.Compose([T.Resize({}, interpolation=T.InterpolationMode.{filter}), T.CenterCrop({}), T.ToTensor(), normalize])\n",
        list(mean),
        list(std),
        pre.resize,
        pre.crop
    ));
    s.push_str("x = preprocess(Image.open(\"photo.jpg\").convert(\"RGB\")).unsqueeze(0)\n");
    if classes.is_empty() {
        s.push_str("with torch.no_grad():\n    features = model(x)\n");
        return s;
    }
    if classes.len() <= 100 {
        let names: Vec<String> = classes.iter().map(|c| py_str(c)).collect();
        s.push_str(&format!("classes = [{}]\n", names.join(", ")));
    } else if format == TorchFormat::Safetensors {
        s.push_str(&format!(
            "import json\nfrom safetensors import safe_open\nwith safe_open({}, \"pt\") as f:\n    classes = json.loads(f.metadata()[\"whisker.classes\"])\n",
            py_str(file)
        ));
    } else {
        s.push_str(&format!(
            "classes = [str(i) for i in range({})]  # their names: a .safetensors export holds them (metadata whisker.classes)\n",
            classes.len()
        ));
    }
    s.push_str("with torch.no_grad():\n    probs = model(x).softmax(dim=1)[0]\nprint(classes[int(probs.argmax())], float(probs.max()))\n");
    s
}

/// The safetensors file of `m`: float32 tensors, int64 counts, and the metadata.
pub fn safetensors_bytes(m: &TorchModel) -> Result<Vec<u8>> {
    let bytes: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = m
        .tensors
        .iter()
        .map(|(k, e)| match e {
            Entry::F32(t) => (
                k.clone(),
                safetensors::Dtype::F32,
                t.shape.clone(),
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Entry::Count(n) => (
                k.clone(),
                safetensors::Dtype::I64,
                Vec::new(),
                n.to_le_bytes().to_vec(),
            ),
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    let metadata: std::collections::HashMap<String, String> = m
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))
}

/// Pickle (protocol 2) of what `torch.save(state_dict)` writes: an `OrderedDict` of tensors
/// rebuilt by `torch._utils._rebuild_tensor_v2` from storages named by persistent ids
/// `("storage", torch.FloatStorage, "i", "cpu", numel)` — only what `torch.load`'s
/// `weights_only` unpickler allows.
struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: u64) {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, 8 bytes (positive: < 2⁶³)
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn tuple(&mut self, v: &[usize]) {
        self.0.push(b'(');
        for &x in v {
            self.int(x as u64);
        }
        self.0.push(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")R");
    }
}

/// The `.pth` file of `m`: `torch.save`'s zip layout (`archive/data.pkl`, one record per
/// storage under `archive/data/`, 64-byte aligned, `archive/version`).
pub fn pth_bytes(m: &TorchModel) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut p = Pickle(vec![0x80, 2]);
    p.ordered_dict();
    p.0.push(b'(');
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (k, e) in &m.tensors {
        let (storage, shape, bytes): (&str, &[usize], Vec<u8>) = match e {
            Entry::F32(t) => (
                "FloatStorage",
                &t.shape,
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Entry::Count(n) => ("LongStorage", &[], n.to_le_bytes().to_vec()),
        };
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        p.str(k);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(b'(');
        p.0.push(b'(');
        p.str("storage");
        p.global("torch", storage);
        p.str(&storages.len().to_string());
        p.str("cpu");
        p.int(numel as u64);
        p.0.extend_from_slice(b"tQ");
        p.int(0);
        p.tuple(shape);
        p.tuple(&stride);
        p.0.push(0x89); // NEWFALSE: requires_grad
        p.ordered_dict(); // backward hooks
        p.0.extend_from_slice(b"tR");
        storages.push(bytes);
    }
    p.0.extend_from_slice(b"u.");
    let zerr = |e: zip::result::ZipError| Error::Internal(format!("writing the .pth archive: {e}"));
    let ioerr = |e: std::io::Error| Error::Internal(format!("writing the .pth archive: {e}"));
    let total: usize = storages.iter().map(|s| s.len()).sum::<usize>() + p.0.len();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(total + 4096)));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(total as u64 >= u32::MAX as u64);
    let mut put = |name: &str, b: &[u8]| -> Result<()> {
        z.start_file(format!("archive/{name}"), opts)
            .map_err(zerr)?;
        z.write_all(b).map_err(ioerr)
    };
    put("data.pkl", &p.0)?;
    put("byteorder", b"little")?;
    for (i, s) in storages.iter().enumerate() {
        put(&format!("data/{i}"), s)?;
    }
    put("version", b"3\n")?;
    Ok(z.finish().map_err(zerr)?.into_inner())
}
