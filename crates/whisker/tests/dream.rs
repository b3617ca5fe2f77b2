//! Ideal-class images (fewer steps than the defaults, as CI allows) and a finite-difference
//! check of the input gradients everything in `inspect` relies on.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use whisker::backbones::Taps;
use whisker::inspect::attack::classify_u8;
use whisker::inspect::dream::{dream, DreamConfig};
use whisker::Backbone;

#[test]
fn dreamed_zebra_is_classified_as_a_zebra() {
    let device = Device::flex().autodiff();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let cfg = DreamConfig {
        class: 340,
        steps: 80,
        ..Default::default()
    };
    let r = dream(&b, &cfg, &|_, _| {}).unwrap();
    println!(
        "zebra after {} steps: {:.3} ({:?})",
        cfg.steps, r.probability, r.history
    );
    assert_eq!(r.image.dimensions(), (256, 256), "made at the resize size");
    assert!(r.probability >= 0.8, "{}", r.probability);
    // the probability reported is the saved image's, through classify's preprocessing
    let (top, p, _) = classify_u8(&b, &r.image).unwrap();
    assert_eq!(top, 340);
    assert!((p - r.probability).abs() < 1e-6);
}

#[test]
fn input_gradient_matches_finite_differences() {
    let device = Device::flex().autodiff();
    let b = Backbone::with_formula_weights("resnet18", &device).unwrap();
    let n = 3 * 48 * 48;
    let x0: Vec<f32> = (0..n)
        .map(|i| whisker::weights::formula::unit(i as u64, 99) as f32)
        .collect();
    let f = |x: &[f32]| -> f64 {
        let t = Tensor::<4>::from_data(
            TensorData::new(x.to_vec(), [1, 3, 48, 48]),
            &device.clone().inner(),
        );
        let l = b.forward(t, &mut Taps::none()).logits.inner();
        l.slice([0..1, 7..8]).sum().into_scalar::<f32>() as f64
    };
    let xt =
        Tensor::<4>::from_data(TensorData::new(x0.clone(), [1, 3, 48, 48]), &device).require_grad();
    let grads = b
        .forward(xt.clone(), &mut Taps::none())
        .logits
        .slice([0..1, 7..8])
        .sum()
        .backward();
    let g = to_vec(xt.grad(&grads).unwrap());
    let h = 1e-2f32;
    let pixels = [100usize, 1234, 2500, 4000, 5555, 6800];
    let scale = g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    // the comparison means something only where the gradient is not negligible
    let biggest = pixels.iter().map(|&i| g[i].abs()).fold(0f32, f32::max) as f64;
    assert!(
        scale > 0.0 && biggest > 0.05 * scale,
        "checked pixels' gradients {biggest} vs max {scale}"
    );
    for &i in &pixels {
        let (mut xp, mut xm) = (x0.clone(), x0.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (f(&xp) - f(&xm)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() <= 0.02 * scale,
            "pixel {i}: autodiff {} vs finite difference {fd}",
            g[i]
        );
    }
}
