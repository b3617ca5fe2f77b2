//! Every torchvision-architecture backbone against PyTorch, with deterministic formula
//! weights computed identically on both sides (`tools/reference/make_golden.py`), on a real
//! photo: logits and pooled features within 1e-4 relative to their scale, the parameter
//! count torchvision reports, and the input gradient for resnet18 and mobilenet_v2.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::plan::{Isa, Plan, PlanOptions};
use whisker::backbones::Taps;
use whisker::data::resize::resize_shorter;
use whisker::data::transforms::{center_crop, to_tensor};
use whisker::Backbone;

fn check(name: &str) {
    let device = Device::flex();
    let b = golden_backbone(name, &device);
    assert_eq!(b.num_params(), b.spec.params, "{name}: parameter count");
    let img = b.preprocess().load(&testdata("chelsea.png")).unwrap();
    let x = to_tensor(&[img], &device);
    let g = golden(&format!("{name}.safetensors"));
    let (want, wf) = (&g["logits"].1, &g["features"].1);
    let rel = |got: &[f32], want: &[f32]| max_abs_diff(got, want) / max_abs(want);
    // burn's operations (the reference path, used for gradients and other devices)
    let f = b
        .net
        .features(b.spec.norm.normalize(x.clone()), &mut Taps::none());
    let logits = to_vec(b.net.classifier(f.clone()));
    let feats = to_vec(f);
    assert_eq!(feats.len(), b.spec.feature_dim);
    let (dl, df) = (rel(&logits, want), rel(&feats, wf));
    println!("{name} [burn]: max|Δlogit|/max|logit| = {dl:.2e}, max|Δfeat|/max|feat| = {df:.2e} (max |logit| {})", max_abs(want));
    assert!(dl <= 1e-4, "{name}: relative logit error {dl}");
    assert!(df <= 1e-4, "{name}: relative feature error {df}");
    // the CPU engine, chosen automatically for this forward pass, on every ISA path
    assert!(
        b.plan_for(&x).is_some(),
        "{name}: the CPU engine does not serve this pass"
    );
    let auto = to_vec(b.forward(x.clone(), &mut Taps::none()).logits);
    assert!(
        rel(&auto, want) <= 1e-5,
        "{name}: engine logits {}",
        rel(&auto, want)
    );
    let dims = x.dims();
    let pixels = to_vec(x);
    // (Winograd serves 3×3 convolutions only: a transformer's plan is the same without it)
    let transformer = name.starts_with("vit") || name.starts_with("dinov2");
    let winograds: &[bool] = if transformer {
        &[false]
    } else {
        &[false, true]
    };
    for isa in Isa::available() {
        for &winograd in winograds {
            let opts = PlanOptions {
                winograd,
                ..Default::default()
            };
            let plan = Plan::compile_with(&b, opts).unwrap().with_isa(isa);
            // the inverted residual blocks without squeeze-excitation run fused
            let fused = match name {
                "mobilenet_v2" => 17,
                "mobilenet_v3_large" => 7,
                "mobilenet_v3_small" => 2,
                n if n.starts_with("efficientnet_lite") => {
                    let v = n["efficientnet_lite".len()..].parse().unwrap();
                    whisker::backbones::efficientnet_lite::blocks(v)
                        .unwrap()
                        .len()
                }
                _ => 0,
            };
            assert_eq!(plan.fused_blocks(), fused, "{name}: fused blocks");
            let out = plan
                .run(&pixels, dims, false, true, &mut Taps::none(), &device)
                .unwrap();
            let (dl, df) = (
                rel(out.logits.as_ref().unwrap(), want),
                rel(&out.features, wf),
            );
            let path = if winograd { " winograd" } else { "" };
            println!("{name} [engine {}{path}]: max|Δlogit|/max|logit| = {dl:.2e}, max|Δfeat|/max|feat| = {df:.2e}", isa.name());
            assert!(
                dl <= 1e-5,
                "{name} on {isa:?}{path}: relative logit error {dl}"
            );
            assert!(
                df <= 1e-5,
                "{name} on {isa:?}{path}: relative feature error {df}"
            );
        }
    }
}

fn check_grad(name: &str) {
    let device = Device::flex().autodiff();
    let frozen = golden_backbone(name, &device);
    assert!(
        !frozen.is_trainable(),
        "{name}: a loaded backbone starts frozen"
    );
    let g = golden(&format!("{name}.safetensors"));
    // the reference uses a smaller input (resize 128, crop 112) to keep the golden file small
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let img = center_crop(&resize_shorter(&img, 128), 112);
    // frozen: the CPU engine's input gradient; trainable: burn's autodiff
    for (path, b) in [
        ("engine", frozen),
        ("burn", golden_backbone(name, &device).set_trainable(true)),
    ] {
        let x = b
            .spec
            .norm
            .normalize(to_tensor(std::slice::from_ref(&img), &device))
            .detach()
            .require_grad();
        let out = b.forward_normalized(x.clone(), &mut Taps::none());
        let grads = out.logits.slice([0..1, 281..282]).sum().backward();
        let grad = to_vec(x.grad(&grads).unwrap());
        let r = rel_l2(&grad, &g["grad"].1);
        println!("{name} [{path}]: input gradient relative L2 error {r:.2e}");
        assert!(
            r <= 1e-5,
            "{name} [{path}]: input gradient relative L2 error {r}"
        );
    }
}

#[test]
fn resnet18() {
    check("resnet18");
}
#[test]
fn resnet34() {
    check("resnet34");
}
#[test]
fn resnet50() {
    check("resnet50");
}
#[test]
fn resnet101() {
    check("resnet101");
}
#[test]
fn resnet152() {
    check("resnet152");
}
#[test]
fn vgg16() {
    check("vgg16");
}
#[test]
fn vgg19() {
    check("vgg19");
}
#[test]
fn vgg16_bn() {
    check("vgg16_bn");
}
#[test]
fn vgg19_bn() {
    check("vgg19_bn");
}
#[test]
fn mobilenet_v2() {
    check("mobilenet_v2");
}
#[test]
fn mobilenet_v3_large() {
    check("mobilenet_v3_large");
}
#[test]
fn mobilenet_v3_small() {
    check("mobilenet_v3_small");
}
#[test]
fn resnet18_input_gradient() {
    check_grad("resnet18");
}
#[test]
fn mobilenet_v2_input_gradient() {
    check_grad("mobilenet_v2");
}
#[test]
fn convnext_tiny() {
    check("convnext_tiny");
}
#[test]
fn convnext_small() {
    check("convnext_small");
}
#[test]
fn convnext_base() {
    check("convnext_base");
}
#[test]
fn convnext_large() {
    check("convnext_large");
}
#[test]
fn convnext_tiny_input_gradient() {
    check_grad("convnext_tiny");
}
#[test]
fn efficientnet_lite1() {
    check("efficientnet_lite1");
}
#[test]
fn efficientnet_lite2() {
    check("efficientnet_lite2");
}
#[test]
fn efficientnet_lite3() {
    check("efficientnet_lite3");
}
#[test]
fn efficientnet_lite4() {
    check("efficientnet_lite4");
}

/// Inference with BatchNorm folded into the convolutions gives the same logits (to float
/// rounding) for every family.
#[test]
fn folded_batchnorm_matches() {
    let device = Device::flex();
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    for name in [
        "resnet18",
        "resnet50",
        "vgg16_bn",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_lite0",
    ] {
        let b = Backbone::with_formula_weights(name, &device).unwrap();
        let x = to_tensor(&[b.preprocess().apply(&img)], &device);
        let a = to_vec(b.forward(x.clone(), &mut Taps::none()).logits);
        let f = to_vec(b.fold_batchnorm().forward(x, &mut Taps::none()).logits);
        let d = max_abs_diff(&a, &f) / max_abs(&a);
        assert!(
            d < 1e-5,
            "{name}: folded BatchNorm changes the logits by {d} (relative)"
        );
    }
}

/// The formula-weight networks must depend on their input (else the parity test would not
/// see preprocessing or early-layer errors): two photos give clearly different logits.
#[test]
fn formula_networks_depend_on_the_input() {
    let device = Device::flex();
    let a = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let c = whisker::data::decode_file(&testdata("coffee.png")).unwrap();
    for m in whisker::models() {
        // (with the BatchNorm statistics the parity goldens measured, where they did)
        let b = golden_backbone(m.name, &device);
        let pre = b.preprocess();
        let la = to_vec(
            b.forward(to_tensor(&[pre.apply(&a)], &device), &mut Taps::none())
                .logits,
        );
        let lc = to_vec(
            b.forward(to_tensor(&[pre.apply(&c)], &device), &mut Taps::none())
                .logits,
        );
        let d = max_abs_diff(&la, &lc) / max_abs(&la);
        println!(
            "{}: relative logit change between two photos {d:.3e}",
            m.name
        );
        assert!(d > 1e-3, "{}: {d}", m.name);
    }
}
#[test]
fn efficientnet_v2_s() {
    check("efficientnet_v2_s");
}
#[test]
fn efficientnet_v2_m() {
    check("efficientnet_v2_m");
}
#[test]
fn efficientnet_v2_l() {
    check("efficientnet_v2_l");
}
#[test]
fn efficientnet_v2_s_input_gradient() {
    check_grad("efficientnet_v2_s");
}
#[test]
fn regnet_y_400mf() {
    check("regnet_y_400mf");
}
#[test]
fn regnet_y_800mf() {
    check("regnet_y_800mf");
}
#[test]
fn regnet_y_1_6gf() {
    check("regnet_y_1_6gf");
}
#[test]
fn regnet_y_3_2gf() {
    check("regnet_y_3_2gf");
}
#[test]
fn regnet_y_8gf() {
    check("regnet_y_8gf");
}
#[test]
fn regnet_y_16gf() {
    check("regnet_y_16gf");
}
#[test]
fn regnet_y_32gf() {
    check("regnet_y_32gf");
}
#[test]
fn regnet_y_400mf_input_gradient() {
    check_grad("regnet_y_400mf");
}

/// A vision transformer at another input size than its weights': 112 px, the position
/// embeddings resampled to its grid (7×7 or 8×8) as timm does, on burn and on the engine's every path.
fn check_resampled(name: &str) {
    let device = Device::flex();
    let b = golden_backbone(name, &device);
    let g = golden(&format!("{name}.safetensors"));
    let want = &g["logits_112"].1;
    let rel = |got: &[f32]| max_abs_diff(got, want) / max_abs(want);
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let x = to_tensor(&[center_crop(&resize_shorter(&img, 128), 112)], &device);
    let f = b
        .net
        .features(b.spec.norm.normalize(x.clone()), &mut Taps::none());
    let d = rel(&to_vec(b.net.classifier(f)));
    println!("{name} [burn, 112 px]: max|Δlogit|/max|logit| = {d:.2e}");
    assert!(d <= 1e-5, "{name} at 112 px on burn: {d}");
    let (dims, pixels) = (x.dims(), to_vec(x));
    for isa in Isa::available() {
        let plan = Plan::compile(&b).unwrap().with_isa(isa);
        let out = plan
            .run(&pixels, dims, false, true, &mut Taps::none(), &device)
            .unwrap();
        let d = rel(out.logits.as_ref().unwrap());
        println!(
            "{name} [engine {}, 112 px]: max|Δlogit|/max|logit| = {d:.2e}",
            isa.name()
        );
        assert!(d <= 1e-5, "{name} at 112 px on {isa:?}: {d}");
    }
}

#[test]
fn vit_b_16() {
    check("vit_b_16");
    check_resampled("vit_b_16");
}
#[test]
fn vit_b_32() {
    check("vit_b_32");
    check_resampled("vit_b_32");
}
#[test]
fn vit_l_16() {
    check("vit_l_16");
}
#[test]
fn vit_b_16_input_gradient() {
    check_grad("vit_b_16");
}

// DINOv2 against timm's (position embeddings learnt for 518 px, resampled to 224 and 112
// px as timm does; the feature is the class token + the mean patch token, the ImageNet
// linear head on it)
#[test]
fn dinov2_vits14() {
    check("dinov2_vits14");
    check_resampled("dinov2_vits14");
}
#[test]
fn dinov2_vitb14() {
    check("dinov2_vitb14");
}
#[test]
fn dinov2_vitl14() {
    check("dinov2_vitl14");
}
#[test]
fn dinov2_vits14_reg() {
    check("dinov2_vits14_reg");
    check_resampled("dinov2_vits14_reg");
}
#[test]
fn dinov2_vitb14_reg() {
    check("dinov2_vitb14_reg");
}
#[test]
fn dinov2_vitl14_reg() {
    check("dinov2_vitl14_reg");
}
#[test]
fn dinov2_vits14_input_gradient() {
    check_grad("dinov2_vits14");
}
#[test]
fn dinov2_vits14_reg_input_gradient() {
    check_grad("dinov2_vits14_reg");
}
// timm's ViT-B/16 (its keys mapped to torchvision's; bicubic, mean/std 0.5)
#[test]
fn vit_base_patch16_224_augreg2_in21k_ft_in1k() {
    check("vit_base_patch16_224.augreg2_in21k_ft_in1k");
    check_resampled("vit_base_patch16_224.augreg2_in21k_ft_in1k");
}

/// The attention maps of a vision transformer (the class token's attention to each patch,
/// one channel per head: the DINO figures) of DINOv2's last block against timm's, on burn and
/// on the engine's every path; registers and the class token take the rest of each row.
#[test]
fn dinov2_vits14_reg_attention_maps() {
    let device = Device::flex();
    let name = "blocks.11.attn";
    let b = golden_backbone("dinov2_vits14_reg", &device);
    assert!(b.layer_names().iter().any(|n| n == name));
    let g = golden("dinov2_vits14_reg.safetensors");
    let want = &g["attention"].1;
    assert_eq!(g["attention"].0, vec![6, 16, 16]);
    let rows: Vec<f32> = want.chunks(256).map(|r| r.iter().sum()).collect();
    assert!(rows.iter().all(|&s| s > 0.0 && s < 1.0), "{rows:?}");
    let img = b.preprocess().load(&testdata("chelsea.png")).unwrap();
    let x = to_tensor(&[img], &device);
    let check = |taps: &Taps, path: &str| {
        let map = taps
            .get(name)
            .unwrap_or_else(|| panic!("{path}: no {name}"));
        assert_eq!(map.dims(), [1, 6, 16, 16], "{path}");
        let got = to_vec(map.clone());
        let d = max_abs_diff(&got, want) / max_abs(want);
        println!("{name} [{path}]: max|Δ|/max = {d:.2e}");
        assert!(d <= 1e-5, "{path}: {d}");
    };
    let mut taps = Taps::only(&[name]);
    let _ = b.net.features(b.spec.norm.normalize(x.clone()), &mut taps);
    check(&taps, "burn");
    let (dims, pixels) = (x.dims(), to_vec(x));
    for isa in Isa::available() {
        let plan = Plan::compile(&b).unwrap().with_isa(isa);
        let mut taps = Taps::only(&[name]);
        plan.run(&pixels, dims, false, true, &mut taps, &device)
            .unwrap();
        check(&taps, isa.name());
    }
}
