//! Fine-tuning steps against PyTorch (`tools/reference/make_train_golden.py`): every parameter
//! trainable, BatchNorm in eval mode (frozen statistics, trainable affine), cross-entropy over
//! the backbone's 1000 classes, SGD with momentum 0.9, two 96-pixel photos. Per family —
//! resnet18, vgg16_bn, mobilenet_v2, mobilenet_v3_small (formula weights) and
//! EfficientNet-Lite0 (real weights) — every parameter's gradient at the first step (its
//! norm, its sum of absolute values and 256 strided elements) and the loss before each of
//! three steps and after them.
//!
//! The reference is PyTorch in float64; whisker (float32) must be within 1e-5 of it, or — where
//! float32 itself cannot be (sums that cancel: PyTorch's own float32 is 1.5e-3 off on VGG's
//! first layer, 5e-3 on Lite0's first depthwise weight) — within 4× PyTorch float32's error.
//! Whole gradients would be hundreds of MB: each is checked by its norm, its dot products with
//! 8 pseudo-random sign vectors (their relative error estimates the whole tensor's) and 256
//! strided elements.
//!
//! Both paths of fine-tuning: the CPU engine (`train_features`, the default) and burn's
//! operations; and the engine's weight gradients on every ISA path (`Plan::backward`).
//!
//! BatchNorm in training mode (`--train-bn`: batch statistics, running ones updated with the
//! family's momentum; goldens from `make_train_golden.py --bn train`, four 128-pixel photos):
//! the same checks on the engine, and every BatchNorm's running mean and variance after the
//! three steps.

mod common;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor};
use common::*;
use whisker::backbones::plan::{Isa, Plan, PlanOptions};
use whisker::backbones::{Backbone, Taps};
use whisker::data::transforms::{to_tensor, Preprocess};

fn grad_values(
    gp: &GradientsParams,
    id: burn::module::ParamId,
    rank: usize,
    transposed: bool,
) -> Vec<f32> {
    match rank {
        1 => to_vec(gp.get::<1>(id).expect("a gradient")),
        2 => {
            let g: Tensor<2> = gp.get::<2>(id).expect("a gradient");
            to_vec(if transposed { g.transpose() } else { g })
        }
        3 => to_vec(gp.get::<3>(id).expect("a gradient")),
        4 => to_vec(gp.get::<4>(id).expect("a gradient")),
        r => panic!("a parameter of rank {r}"),
    }
}

/// ±1 for element `i` of projection `j` (tools/reference/make_train_golden.py's `signs`).
fn sign(i: u64, j: u64) -> f64 {
    const M32: u64 = 0xFFFF_FFFF;
    let mut h = (i
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(j.wrapping_mul(0x85EB_CA6B))
        .wrapping_add(0x1656_67B1))
        & M32;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D) & M32;
    h ^= h >> 12;
    if h & 1 == 1 {
        1.0
    } else {
        -1.0
    }
}

/// How one gradient compares with the float64 golden: (norm rel., projections rel. L2 — an
/// estimate of the whole tensor's relative L2 error —, strided elements rel. L2) and the
/// bounds: 1e-5, or 4× PyTorch float32's own error where that is larger (8× and 2e-5 for
/// the 256 elements, a small sample of often small values).
fn compare(
    g: &[f32],
    want: &serde_json::Value,
    samples_want: &[f32],
    k: usize,
) -> Result<(f64, f64, f64), String> {
    let wn = want["norm"].as_f64().unwrap();
    let norm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let rn = (norm - wn).abs() / wn.max(1e-30);
    let wp: Vec<f64> = want["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (mut num, mut den) = (0f64, 0f64);
    for (j, w) in wp.iter().enumerate() {
        let p: f64 = g
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * sign(i as u64, j as u64))
            .sum();
        num += (p - w).powi(2);
        den += w * w;
    }
    let rp = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    let n = g.len();
    let kk = k.min(n);
    let samples: Vec<f32> = (0..kk).map(|i| g[i * n / kk]).collect();
    // a dead input channel can make every sampled element zero on both sides
    let zero = |v: &[f32]| v.iter().all(|x| *x == 0.0);
    let rs = if zero(&samples) && zero(samples_want) {
        0.0
    } else {
        rel_l2(&samples, samples_want)
    };
    let t = |key: &str| want[key].as_f64().unwrap();
    let bound = 1e-5f64.max(4.0 * t("torch_f32_rel_l2").max(t("torch_f32_projections_rel_l2")));
    // 256 elements of a tensor are as accurate as float32 can be on the whole of it
    let sample_bound = 2e-5f64.max(8.0 * t("torch_f32_samples_rel_l2").max(t("torch_f32_rel_l2")));
    if rn <= bound && rp <= bound && rs <= sample_bound {
        Ok((rn, rp, rs))
    } else {
        Err(format!(
            "norm rel. {rn:.1e}, projections rel. L2 {rp:.1e} (bound {bound:.1e}), elements rel. L2 {rs:.1e} (bound {sample_bound:.1e})"
        ))
    }
}

/// A family's case: the goldens, its settings, the trainable backbone and the two photos.
struct Case {
    manifest: serde_json::Value,
    golden: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    labels: Vec<usize>,
    /// Strided elements per gradient.
    k: usize,
    b: Backbone,
    imgs: Vec<image::RgbImage>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case::from(name, "train")
    }

    /// The case of goldens `stem` (`train`: BatchNorm eval; `train_bn`: training mode).
    fn from(name: &str, stem: &str) -> Case {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden_path(&format!("{stem}.json"))).unwrap())
                .unwrap();
        let us = |k: &str| manifest[k].as_u64().unwrap() as usize;
        let device = Device::flex().autodiff();
        let b = if name == "efficientnet_lite0" {
            Backbone::from_file(name, &testdata("efficientnet-lite0-57934424.pth"), &device)
                .unwrap()
        } else {
            // formula weights, with the BatchNorm statistics the goldens were computed with
            let g = golden(&format!("{stem}.safetensors"));
            let bn = golden_bn(&g, &format!("{name}."));
            Backbone::with_formula_weights_except(name, bn, &device).unwrap()
        }
        .set_trainable(true);
        let pre = Preprocess {
            resize: us("resize"),
            crop: us("size"),
            norm: b.spec.norm,
            filter: b.spec.interpolation,
        };
        // the goldens' photos (the BatchNorm-eval goldens predate the list: two photos)
        let photos: Vec<String> = match manifest["photos"].as_array() {
            Some(list) => list
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
            None => vec!["chelsea.png".into(), "coffee.png".into()],
        };
        let imgs = photos
            .iter()
            .map(|f| pre.load(&testdata(f)).unwrap())
            .collect();
        Case {
            labels: manifest["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect(),
            k: us("samples"),
            golden: golden(&format!("{stem}.safetensors")),
            manifest,
            b,
            imgs,
        }
    }

    fn model(&self, name: &str) -> &serde_json::Value {
        &self.manifest["models"][name]
    }
}

/// Fine-tuning steps on `path`: the default (the engine on the CPU) or burn's operations.
fn check(name: &str, burn: bool) {
    check_with(name, burn, false)
}

/// The values of every parameter (buffers included) by id.
fn param_values(
    net: &whisker::backbones::Net,
) -> std::collections::HashMap<burn::module::ParamId, Vec<f32>> {
    struct V(std::collections::HashMap<burn::module::ParamId, Vec<f32>>);
    impl burn::module::ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0.insert(p.id, to_vec(p.val()));
        }
    }
    let mut v = V(Default::default());
    burn::module::Module::visit(net, &mut v);
    v.0
}

/// [`check`], with BatchNorm in training mode when `bn_train` (then also the running
/// statistics after the steps).
fn check_with(name: &str, burn: bool, bn_train: bool) {
    check_from(
        name,
        if bn_train { "train_bn" } else { "train" },
        burn,
        bn_train,
    )
}

/// [`check_with`] on the goldens `stem`.
fn check_from(name: &str, stem: &str, burn: bool, bn_train: bool) {
    let Case {
        manifest,
        golden,
        labels,
        k,
        b,
        imgs,
    } = Case::from(name, stem);
    let m = &manifest["models"][name];
    let (lr, momentum) = (
        manifest["lr"].as_f64().unwrap(),
        manifest["momentum"].as_f64().unwrap(),
    );
    let steps = manifest["steps"].as_u64().unwrap() as usize;
    let device = Device::flex().autodiff();
    let norm = b.spec.norm;
    let x = norm.normalize(to_tensor(&imgs, &device));
    let params: Vec<_> = b.param_info.iter().filter(|p| !p.buffer).cloned().collect();
    let want_grads = m["grads"].as_array().unwrap();
    assert_eq!(params.len(), want_grads.len(), "{name}: parameter count");
    let buffers: Vec<_> = b.param_info.iter().filter(|p| p.buffer).cloned().collect();
    let mut net = b.net;
    if bn_train {
        for bn in net.batchnorms() {
            bn.enable_train_stats();
        }
    }
    let mut opt = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .init();
    let want_losses: Vec<f64> = m["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want_losses32: Vec<f64> = m["losses_torch_f32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (mut worst_norm, mut worst_samples, mut zero) = (0f64, 0f64, 0);
    for step in 0..=steps {
        let f = if burn {
            net.features(x.clone(), &mut Taps::none())
        } else {
            whisker::backbones::train_features(&net, norm, x.clone(), bn_train)
        };
        let logits = net.classifier(f);
        let loss = whisker::train::head::cross_entropy(logits, &labels, 1000, 0.0, &device);
        let l = loss.clone().into_scalar::<f32>() as f64;
        let rel = (l - want_losses[step]).abs() / want_losses[step].abs();
        let torch_rel = (want_losses32[step] - want_losses[step]).abs() / want_losses[step].abs();
        println!(
            "{name} step {step}: loss {l:.7} (float64 {:.7}, rel. {rel:.1e}; PyTorch float32 rel. {torch_rel:.1e})",
            want_losses[step]
        );
        assert!(
            rel <= 1e-5f64.max(4.0 * torch_rel),
            "{name}: loss {l} at step {step}, float64 {}",
            want_losses[step]
        );
        if step == steps {
            break;
        }
        let mut grads = loss.backward();
        let gp = GradientsParams::from_module(&mut grads, &net);
        if step == 0 {
            for want in want_grads {
                let key = want["key"].as_str().unwrap();
                let info = params
                    .iter()
                    .find(|p| p.key == key)
                    .unwrap_or_else(|| panic!("{name}: no parameter {key}"));
                let rank = want["shape"].as_array().unwrap().len();
                let g = grad_values(&gp, info.id, rank, info.transposed);
                let ws = &golden[&format!("{name}.{key}.samples")].1;
                match compare(&g, want, ws, k) {
                    // a gradient that is zero but for rounding (a convolution's bias before
                    // a BatchNorm with batch statistics: PyTorch float32 is 1e8 "off" too)
                    // passes by its absolute error, kept out of the summary
                    Ok(_) if want["torch_f32_rel_l2"].as_f64().unwrap() > 1.0 => zero += 1,
                    Ok((rn, rp, rs)) => {
                        worst_norm = worst_norm.max(rn.max(rp));
                        worst_samples = worst_samples.max(rs);
                    }
                    Err(e) => panic!("{name} {key}: {e}"),
                }
            }
        }
        net = opt.step(lr, net, gp);
    }
    println!(
        "{name}: {} gradients, worst norm / projections rel. {worst_norm:.1e}, worst elements rel. L2 {worst_samples:.1e} ({zero} zero but for rounding)",
        want_grads.len()
    );
    if bn_train {
        // the running statistics after the steps, each against PyTorch float64's
        for bn in net.batchnorms() {
            bn.commit_train_stats();
        }
        let values = param_values(&net);
        let running = m["running"].as_array().unwrap();
        assert!(
            !running.is_empty(),
            "{name}: no running statistics in the goldens"
        );
        let mut worst = 0f64;
        for r in running {
            let key = r["key"].as_str().unwrap();
            let info = buffers
                .iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("{name}: no buffer {key}"));
            let want = &golden[&format!("{name}.{key}")].1;
            // a mean's error in units of the values' spread (√variance) where the mean is
            // the smaller: means near zero (Lite0's are 1/1800 of their spread) have no
            // meaningful relative error
            let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let scale = match key.strip_suffix("running_mean") {
                Some(stem) => {
                    let var = &golden[&format!("{name}.{stem}running_var")].1;
                    let sd: Vec<f32> = var.iter().map(|v| v.max(0.0).sqrt()).collect();
                    (norm(&sd) / norm(want).max(1e-30)).max(1.0)
                }
                None => 1.0,
            };
            let rel = rel_l2(&values[&info.id], want) / scale;
            worst = worst.max(rel);
            // as the gradients: 1e-5, or 4× PyTorch float32's own error (after three steps
            // of batch statistics, float32 drifts from float64 on MobileNetV2)
            let torch = r["torch_f32_rel_l2"].as_f64().unwrap() / scale;
            let bound = 1e-5f64.max(4.0 * torch);
            assert!(
                rel <= bound,
                "{name} {key}: running statistic rel. L2 {rel:.1e} (bound {bound:.1e})"
            );
        }
        println!(
            "{name}: {} running statistics, worst rel. L2 {worst:.1e}",
            running.len()
        );
    }
}

#[test]
fn resnet18_fine_tuning_steps_match_pytorch() {
    check("resnet18", false);
}

#[test]
fn vgg16_bn_fine_tuning_steps_match_pytorch() {
    check("vgg16_bn", false);
}

#[test]
fn mobilenet_v2_fine_tuning_steps_match_pytorch() {
    check("mobilenet_v2", false);
}

#[test]
fn mobilenet_v3_small_fine_tuning_steps_match_pytorch() {
    check("mobilenet_v3_small", false);
}

#[test]
fn efficientnet_lite0_fine_tuning_steps_match_pytorch() {
    check("efficientnet_lite0", false);
}

// burn's operations (other devices, `--train-bn`, `WHISKER_ENGINE=burn`): their weight
// gradients are less accurate than PyTorch's float32 in the first layers (measured 2026-11-28
// against float64, whole-tensor relative L2 estimated by projections): resnet18 conv1.weight
// 6.0e-4 (PyTorch float32: 4.8e-7), vgg16_bn features.0.weight 3.4e-2 (9.5e-4).
#[test]
#[ignore = "burn-flex's conv1 weight gradient is 6.0e-4 off float64 (PyTorch float32: 4.8e-7)"]
fn resnet18_fine_tuning_steps_on_burn_match_pytorch() {
    check("resnet18", true);
}

#[test]
fn mobilenet_v3_small_fine_tuning_steps_on_burn_match_pytorch() {
    check("mobilenet_v3_small", true);
}

#[test]
fn efficientnet_lite0_fine_tuning_steps_on_burn_match_pytorch() {
    check("efficientnet_lite0", true);
}

/// The CPU engine's weight gradients (`Plan::backward`) at the first step, against the same
/// float64 goldens: the features' gradient from the classifier and the loss (burn), then every
/// backbone parameter's gradient from the engine's backward pass, on every ISA path.
fn check_engine(name: &str) {
    check_engine_from(name, "train")
}

/// [`check_engine`] on the goldens `stem`.
fn check_engine_from(name: &str, stem: &str) {
    let c = Case::from(name, stem);
    let (m, golden, labels, k, b) = (c.model(name), &c.golden, &c.labels, c.k, &c.b);
    let size = c.manifest["size"].as_u64().unwrap() as usize;
    let device = Device::flex().autodiff();
    let imgs = &c.imgs;
    let x = to_vec(b.spec.norm.normalize(to_tensor(imgs, &Device::flex())));
    let dims = [2, 3, size, size];
    let want_grads = m["grads"].as_array().unwrap();
    for isa in Isa::available() {
        let plan = Plan::compile_with(
            b,
            PlanOptions {
                weight_grads: true,
                ..Default::default()
            },
        )
        .unwrap()
        .with_isa(isa);
        let tape = plan.forward_tape(&x, dims, true).unwrap();
        let fd = tape.features().len() / 2;
        let f = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(tape.features().to_vec(), [2, fd]),
            &device,
        )
        .require_grad();
        let logits = b.net.classifier(f.clone());
        let loss = whisker::train::head::cross_entropy(logits, labels, 1000, 0.0, &device);
        let l = loss.clone().into_scalar::<f32>() as f64;
        let want_loss = m["losses"][0].as_f64().unwrap();
        assert!(
            (l - want_loss).abs() / want_loss < 1e-5,
            "{name}: loss {l} vs {want_loss}"
        );
        let mut grads = loss.backward();
        let df = to_vec(f.grad(&grads).unwrap());
        let classifier = GradientsParams::from_module(&mut grads, &b.net);
        let (_, engine) = plan.backward(&tape, &df, false, true).unwrap();
        let (mut worst, mut worst_key, mut checked) = (0f64, String::new(), 0);
        for want in want_grads {
            let key = want["key"].as_str().unwrap();
            let info = b
                .param_info
                .iter()
                .find(|p| p.key == key && !p.buffer)
                .unwrap_or_else(|| panic!("{name}: no parameter {key}"));
            let rank = want["shape"].as_array().unwrap().len();
            let g = match engine.iter().find(|g| g.id == info.id) {
                Some(g) if info.transposed => {
                    let (r, c) = (g.dims[0], g.dims[1]);
                    let mut t = vec![0f32; g.values.len()];
                    for i in 0..r {
                        for j in 0..c {
                            t[j * r + i] = g.values[i * c + j];
                        }
                    }
                    t
                }
                Some(g) => g.values.clone(),
                None => grad_values(&classifier, info.id, rank, info.transposed),
            };
            let ws = &golden[&format!("{name}.{key}.samples")].1;
            match compare(&g, want, ws, k) {
                Ok((_, rp, _)) if rp > worst => {
                    worst = rp;
                    worst_key = key.to_string();
                }
                Ok(_) => {}
                Err(e) => panic!("{name} [{}] {key}: the engine's gradient: {e}", isa.name()),
            }
            checked += 1;
        }
        println!(
            "{name} [{}]: {checked} gradients ({} from the engine), worst whole-tensor rel. L2 (projections) {worst:.1e} ({worst_key})",
            isa.name(),
            engine.len()
        );
    }
}

// ConvNeXt: LayerNorm, GELU, layer scale (goldens `train_convnext`)
#[test]
fn convnext_tiny_fine_tuning_steps_match_pytorch() {
    check_from("convnext_tiny", "train_convnext", false, false);
}

#[test]
fn engine_weight_gradients_match_pytorch_convnext_tiny() {
    check_engine_from("convnext_tiny", "train_convnext");
}

#[test]
fn engine_weight_gradients_match_pytorch_resnet18() {
    check_engine("resnet18");
}

#[test]
fn engine_weight_gradients_match_pytorch_vgg16_bn() {
    check_engine("vgg16_bn");
}

#[test]
fn engine_weight_gradients_match_pytorch_mobilenet_v2() {
    check_engine("mobilenet_v2");
}

#[test]
fn engine_weight_gradients_match_pytorch_mobilenet_v3_small() {
    check_engine("mobilenet_v3_small");
}

#[test]
fn engine_weight_gradients_match_pytorch_efficientnet_lite0() {
    check_engine("efficientnet_lite0");
}

// BatchNorm in training mode (`--train-bn`), on the engine
#[test]
fn resnet18_fine_tuning_steps_with_batch_statistics_match_pytorch() {
    check_with("resnet18", false, true);
}

#[test]
fn vgg16_bn_fine_tuning_steps_with_batch_statistics_match_pytorch() {
    check_with("vgg16_bn", false, true);
}

#[test]
fn mobilenet_v2_fine_tuning_steps_with_batch_statistics_match_pytorch() {
    check_with("mobilenet_v2", false, true);
}

#[test]
fn mobilenet_v3_small_fine_tuning_steps_with_batch_statistics_match_pytorch() {
    check_with("mobilenet_v3_small", false, true);
}

#[test]
fn efficientnet_lite0_fine_tuning_steps_with_batch_statistics_match_pytorch() {
    check_with("efficientnet_lite0", false, true);
}

/// `--unfreeze K` on the engine: asked for the top units' parameters only, the backward pass
/// gives exactly those (the same values as the full pass) and stops below them.
#[test]
fn engine_gives_only_the_wanted_gradients() {
    for (name, top) in [
        ("resnet18", "layer4.1."),
        ("mobilenet_v3_small", "features.11."),
    ] {
        let c = Case::new(name);
        let b = &c.b;
        let size = c.manifest["size"].as_u64().unwrap() as usize;
        let x = to_vec(b.spec.norm.normalize(to_tensor(&c.imgs, &Device::flex())));
        let opts = PlanOptions {
            weight_grads: true,
            ..Default::default()
        };
        let plan = Plan::compile_with(b, opts).unwrap();
        let tape = plan.forward_tape(&x, [2, 3, size, size], true).unwrap();
        // any feature gradient will do: a fixed pattern
        let df: Vec<f32> = (0..tape.features().len())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let (_, all) = plan.backward(&tape, &df, false, true).unwrap();
        let wanted: std::collections::HashSet<_> = b
            .param_info
            .iter()
            .filter(|p| p.key.starts_with(top) && !p.buffer)
            .map(|p| p.id)
            .collect();
        assert!(!wanted.is_empty(), "{name}: no parameter under {top}");
        let pick = |id| wanted.contains(&id);
        let (_, some) = plan.backward_for(&tape, &df, false, Some(&pick)).unwrap();
        let got: std::collections::HashSet<_> = some.iter().map(|g| g.id).collect();
        assert_eq!(got, wanted, "{name}: the gradients given");
        for g in &some {
            let full = all.iter().find(|a| a.id == g.id).unwrap();
            assert_eq!(g.values, full.values, "{name}: a top gradient differs");
        }
        // nothing asked for: nothing computed
        let none = |_| false;
        let (_, nothing) = plan.backward_for(&tape, &df, false, Some(&none)).unwrap();
        assert!(nothing.is_empty(), "{name}: gradients nobody asked for");
    }
}

// EfficientNetV2: fused MBConv, SiLU, squeeze-excitation with a sigmoid gate (goldens
// `train_efficientnet_v2`; BatchNorm statistics measured on real photos)
#[test]
fn efficientnet_v2_s_fine_tuning_steps_match_pytorch() {
    check_from("efficientnet_v2_s", "train_efficientnet_v2", false, false);
}

#[test]
fn engine_weight_gradients_match_pytorch_efficientnet_v2_s() {
    check_engine_from("efficientnet_v2_s", "train_efficientnet_v2");
}

// RegNetY: grouped convolutions, squeeze-excitation with ReLU and sigmoid, ReLU after the
// shortcut sum (goldens `train_regnet`; BatchNorm statistics measured on real photos)
#[test]
fn regnet_y_400mf_fine_tuning_steps_match_pytorch() {
    check_from("regnet_y_400mf", "train_regnet", false, false);
}

#[test]
fn engine_weight_gradients_match_pytorch_regnet_y_400mf() {
    check_engine_from("regnet_y_400mf", "train_regnet");
}

// ViT: attention, tokens (position embeddings resampled to the 96-pixel input's 6×6 grid),
// LayerNorm over tokens, GELU MLP (goldens `train_vit`)
#[test]
fn vit_b_16_fine_tuning_steps_match_pytorch() {
    check_from("vit_b_16", "train_vit", false, false);
}

#[test]
fn engine_weight_gradients_match_pytorch_vit_b_16() {
    check_engine_from("vit_b_16", "train_vit");
}

// DINOv2: layer scales (folded into the pointwise layers on the engine), position embeddings
// resampled from the 37×37 grid to a 98-pixel input's 7×7, the class token + mean patch
// token feature under the ImageNet linear head (goldens `train_dinov2`, timm's model)
#[test]
fn dinov2_vits14_fine_tuning_steps_match_pytorch() {
    check_from("dinov2_vits14", "train_dinov2", false, false);
}

#[test]
fn engine_weight_gradients_match_pytorch_dinov2_vits14() {
    check_engine_from("dinov2_vits14", "train_dinov2");
}
