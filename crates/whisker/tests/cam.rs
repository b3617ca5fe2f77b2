//! Class-activation maps against PyTorch (`tools/reference/make_cam_golden.py`): Grad-CAM and
//! Grad-CAM++ on chelsea.png, EfficientNet-Lite0 with its real weights (two layers) and two
//! torchvision families with formula weights; and the overlay's peak lies on the cat.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::Backbone;
use whisker::inspect::cam::{self, CamOptions, Method};

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

fn lite0(device: &Device) -> Backbone {
    Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        device,
    )
    .expect("load the real EfficientNet-Lite0 weights")
}

#[test]
fn grad_cam_matches_pytorch() {
    let device = Device::flex().autodiff();
    let g = golden("cam.safetensors");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden_path("cam.json")).unwrap()).unwrap();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let layer = case["layer"].as_str().unwrap();
        let b = if name == "efficientnet_lite0" {
            lite0(&device)
        } else {
            Backbone::with_formula_weights(name, &device).unwrap()
        };
        let crop = b.preprocess().load(&testdata("chelsea.png")).unwrap();
        let other = b.preprocess().load(&testdata("coffee.png")).unwrap();
        for (method, tag) in [
            (Method::GradCam, "gradcam"),
            (Method::GradCamPlusPlus, "gradcam++"),
        ] {
            let opts = CamOptions {
                method,
                class: None,
                layer: Some(layer.to_string()),
            };
            let c = cam::grad_cam(&b, &crop, &opts).unwrap();
            let (shape, want) = &g[&format!("{name}.{layer}.{tag}")];
            assert_eq!(vec![c.h, c.w], *shape, "{name} {layer}");
            assert_eq!(
                c.class as u64,
                case["class"].as_u64().unwrap(),
                "{name} top-1"
            );
            let r = pearson(&c.map, want);
            let e = rel_l2(&c.map, want);
            println!("{name} {layer} {tag}: correlation {r:.9}, rel. L2 {e:.2e}");
            assert!(r >= 0.99, "{name} {layer} {tag}: correlation {r}");
            assert!(e <= 1e-4, "{name} {layer} {tag}: rel. L2 {e}");
            // in a batch (as the report draws them), beside another photo and another class:
            // the same map
            let both = cam::grad_cams(&b, &[other.clone(), crop.clone()], &[Some(7), None], &opts)
                .unwrap();
            assert_eq!(both[0].class, 7);
            let (cb, eb) = (&both[1], rel_l2(&both[1].map, &c.map));
            assert_eq!((cb.class, cb.top1, cb.h, cb.w), (c.class, c.top1, c.h, c.w));
            assert!(eb <= 1e-5, "{name} {layer} {tag}: batched rel. L2 {eb}");
            let alone = cam::grad_cam(
                &b,
                &other,
                &CamOptions {
                    class: Some(7),
                    ..opts.clone()
                },
            )
            .unwrap();
            let eo = rel_l2(&both[0].map, &alone.map);
            assert!(
                eo <= 1e-5,
                "{name} {layer} {tag}: batched class 7 rel. L2 {eo}"
            );
        }
    }
}

#[test]
fn the_cats_cam_peaks_on_the_cat() {
    let device = Device::flex().autodiff();
    let b = lite0(&device);
    let photo = whisker::data::decode::decode_file(&testdata("chelsea.png")).unwrap();
    let pre = b.preprocess();
    let c = cam::grad_cam(&b, &pre.apply(&photo), &CamOptions::default()).unwrap();
    assert_eq!(c.layer, "head", "the default layer is the last block");
    assert_eq!(c.class, 282, "tiger cat");
    let o = cam::overlay(&photo, &pre, &c, 0.5);
    assert_eq!(
        o.image.dimensions(),
        photo.dimensions(),
        "the photo's own size"
    );
    // the cat's head fills the photo but for the background on the right and the top-left
    // corner; the peak must be on it (eyes to nose: x 120–340, y 60–250)
    let (x, y) = o.peak;
    println!("peak at ({x}, {y}) of {:?}", photo.dimensions());
    assert!(
        (100..=350).contains(&x) && (40..=270).contains(&y),
        "peak ({x}, {y}) is off the cat's face"
    );
    // greyed outside the 224-pixel crop the model saw: chelsea 451×300 → 385×256 → crop
    // x 80..304 of the resized image, i.e. x < 94 of the photo is outside
    let left = o.image.get_pixel(5, 150).0;
    assert!(
        left[0] == left[1] && left[1] == left[2],
        "outside the crop is grey, got {left:?}"
    );
}

/// On the CPU a frozen backbone's maps come from the engine (forward tape, backward pass down
/// to the map); a trainable one's from burn's operations: the same maps, at the last map and
/// inside the network — after a ReLU whose only consumer is a max pool (the engine's pool
/// backward would apply the ReLU's derivative for it), inside squeeze-excitation blocks.
/// Grad-CAM++ (squares and cubes of the gradient over sums of them) amplifies the two float32
/// paths' ~1e-6 differences in early layers (to ~1e-3 on Lite0's second block): it is
/// compared at the last map, as the PyTorch goldens are.
#[test]
fn engine_maps_equal_burns() {
    let device = Device::flex().autodiff();
    for (name, layers) in [
        ("resnet18", &["relu", "layer2", "layer4"][..]),
        ("mobilenet_v3_large", &["features.5", "features.16"][..]),
        (
            "efficientnet_lite0",
            &["_blocks.1", "_blocks.5", "head"][..],
        ),
    ] {
        let load = || {
            if name == "efficientnet_lite0" {
                lite0(&device)
            } else {
                Backbone::with_formula_weights(name, &device).unwrap()
            }
        };
        let (engine, burn) = (load(), load().set_trainable(true));
        let crops = [
            engine.preprocess().load(&testdata("chelsea.png")).unwrap(),
            engine.preprocess().load(&testdata("coffee.png")).unwrap(),
        ];
        for (l, layer) in layers.iter().enumerate() {
            let methods: &[Method] = if l + 1 == layers.len() {
                &[Method::GradCam, Method::GradCamPlusPlus]
            } else {
                &[Method::GradCam]
            };
            for &method in methods {
                let opts = CamOptions {
                    method,
                    class: None,
                    layer: Some(layer.to_string()),
                };
                let a = cam::grad_cams(&engine, &crops, &[None, Some(3)], &opts).unwrap();
                let b = cam::grad_cams(&burn, &crops, &[None, Some(3)], &opts).unwrap();
                for (x, y) in a.iter().zip(&b) {
                    let e = rel_l2(&x.map, &y.map);
                    println!("{name} {layer} {method:?}: engine vs burn rel. L2 {e:.2e}");
                    assert_eq!((x.class, x.top1, x.h, x.w), (y.class, y.top1, y.h, y.w));
                    assert!((x.prob - y.prob).abs() <= 1e-5, "{name} {layer}");
                    assert!(
                        y.map.iter().any(|v| *v > 0.0),
                        "{name} {layer}: an empty map"
                    );
                    assert!(e <= 1e-5, "{name} {layer} {method:?}: rel. L2 {e}");
                }
            }
        }
    }
}

/// The default layers of a vision transformer: Grad-CAM's the last block's tokens, and the
/// feature map's too (no patch grid reaches 1/8 of the input: the deepest of the widest maps,
/// not an attention map of a few heads); a CNN's feature map stays mid-level.
#[test]
fn transformers_default_to_their_last_block() {
    let device = Device::flex();
    let b = Backbone::with_formula_weights("dinov2_vits14", &device).unwrap();
    assert_eq!(cam::default_layer(&b), "blocks.11");
    assert_eq!(whisker::inspect::featuremap::default_layer(&b), "blocks.11");
    let names = b.layer_names();
    assert_eq!(names.first().map(String::as_str), Some("blocks.0.attn"));
    // (the final LayerNorm's tokens are a layer too, for `extract`, but no default)
    assert_eq!(names.last().map(String::as_str), Some("norm"));
    // torchvision's ViT: its final LayerNorm's class token is the feature vector
    let v = Backbone::with_formula_weights("vit_b_32", &device).unwrap();
    assert_eq!(cam::default_layer(&v), "encoder.layers.encoder_layer_11");
    let x = v.preprocess().load(&testdata("chelsea.png")).unwrap();
    let x = whisker::data::transforms::to_tensor(&[x], &device);
    let mut taps = whisker::Taps::only(&["encoder.ln"]);
    let f = whisker::tensor::to_vec(v.features_with(x, &mut taps)).unwrap();
    let t = whisker::tensor::to_vec(taps.get_tokens("encoder.ln").unwrap().clone()).unwrap();
    assert_eq!(t.len(), 50 * 768);
    assert_eq!(&t[..768], &f[..]);
    let l = lite0(&device);
    let mid = whisker::inspect::featuremap::default_layer(&l);
    assert!(mid.starts_with("_blocks."), "{mid}");
}
