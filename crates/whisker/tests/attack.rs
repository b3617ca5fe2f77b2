//! Adversarial examples through the preprocessing, on a real photo with the real
//! EfficientNet-Lite0 weights: the saved u8 image stays within eps of the original and is
//! classified as the target with `whisker classify`'s exact preprocessing. Plus the linear
//! model of the resize (what the attack differentiates) against Pillow's u8 resize.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::inspect::attack::{attack, classify_u8, AttackConfig, Method, Norm};
use whisker::Backbone;

#[test]
fn pgd_targeted_attack_succeeds_within_eps_after_saving() {
    let device = Device::flex().autodiff();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let img = whisker::data::decode_file(&testdata("coffee.png")).unwrap();
    let (orig, _, _) = classify_u8(&b, &img).unwrap();
    assert_eq!(orig, 967, "espresso");
    let cfg = AttackConfig {
        method: Method::Pgd,
        norm: Norm::Linf,
        eps: 4.0 / 255.0,
        alpha: 1.0 / 255.0,
        steps: 40,
        random_start: false,
        target: Some(282),
        seed: 0,
        min_confidence: 0.5,
        cw_c: 1.0,
    };
    let r = attack(&b, &img, &cfg).unwrap();
    println!(
        "attack: {} steps, target prob {:?}, linf {} / 255, l2 {:.3}, psnr {:.1}",
        r.steps_used, r.target_prob, r.linf_255, r.l2, r.psnr
    );
    assert!(r.success, "{r:?}");
    assert!(r.target_prob.unwrap() >= 0.5);
    assert!(r.linf_255 <= 4);
    assert_eq!(
        r.adversarial.dimensions(),
        img.dimensions(),
        "saved at the original resolution"
    );
    // saved losslessly and read back, it is still the target
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("adv.png");
    r.adversarial.save(&p).unwrap();
    let back = whisker::data::decode_file(&p).unwrap();
    assert_eq!(classify_u8(&b, &back).unwrap().0, 282);
    let max = back
        .as_raw()
        .iter()
        .zip(img.as_raw())
        .map(|(a, o)| a.abs_diff(*o))
        .max()
        .unwrap();
    assert!(max <= 4, "L∞ on 0..255 is {max}");
}

#[test]
fn fgsm_untargeted_moves_the_prediction_or_reports_failure_honestly() {
    let device = Device::flex().autodiff();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let cfg = AttackConfig {
        method: Method::Fgsm,
        norm: Norm::Linf,
        eps: 8.0 / 255.0,
        alpha: 0.0,
        steps: 1,
        random_start: false,
        target: None,
        seed: 0,
        min_confidence: 0.0,
        cw_c: 1.0,
    };
    let r = attack(&b, &img, &cfg).unwrap();
    assert_eq!(r.steps_used, 1);
    assert!(r.linf_255 <= 8);
    assert_eq!(r.success, r.adversarial_top1 != r.original_top1);
    assert_eq!(
        classify_u8(&b, &r.adversarial).unwrap().0,
        r.adversarial_top1
    );
}

/// The linear map the attacks differentiate through (each filter's weights as matrices,
/// floating point, no rounding) is Pillow's u8 resize to within a level of rounding, for both
/// filters (within the rounding of Pillow's two passes): bilinear (torchvision's weights) and bicubic (timm's, DINOv2's).
#[test]
fn linear_resize_model_matches_pillow_to_one_level() {
    use whisker::data::resize::{resize_matrix_rows, resize_with, shorter_side_size, Filter};
    let img = whisker::data::decode_file(&testdata("chelsea.png")).unwrap();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = shorter_side_size(w as u32, h as u32, 256);
    for filter in [Filter::Bilinear, Filter::Bicubic] {
        let mh = resize_matrix_rows(filter, w, rw, 0..rw);
        let mv = resize_matrix_rows(filter, h, rh, 0..rh);
        let exact = resize_with(&img, rw as u32, rh as u32, filter);
        let mut worst = 0f32;
        for c in 0..3 {
            // horizontal then vertical, in floating point
            let mut tmp = vec![0f32; h * rw];
            for y in 0..h {
                for xo in 0..rw {
                    tmp[y * rw + xo] = (0..w)
                        .map(|x| mh[xo * w + x] * img.get_pixel(x as u32, y as u32)[c] as f32)
                        .sum();
                }
            }
            for yo in 0..rh {
                for xo in 0..rw {
                    let v: f32 = (0..h).map(|y| mv[yo * h + y] * tmp[y * rw + xo]).sum();
                    let v = v.clamp(0.0, 255.0);
                    worst = worst.max((v - exact.get_pixel(xo as u32, yo as u32)[c] as f32).abs());
                }
            }
        }
        // Pillow rounds after each pass: the first pass's rounding (half a level) goes
        // through the second pass's weights (whose absolute sum exceeds 1 where bicubic's
        // lobes are negative), then the second rounds again
        let lobes = mv
            .chunks_exact(h)
            .map(|r| r.iter().map(|v| v.abs()).sum::<f32>())
            .fold(0f32, f32::max);
        let bound = 0.5 * lobes + 0.5 + 1e-3;
        assert!(
            worst <= bound,
            "{filter:?}: float model of the resize differs from Pillow by {worst} levels (bound {bound})"
        );
        if filter == Filter::Bilinear {
            assert!(worst <= 1.0, "{worst}");
        }
    }
}

#[test]
fn robustness_over_real_photos() {
    use whisker::inspect::robustness::{robustness, RobustnessAttack};
    let device = Device::flex().autodiff();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    // labels: what the model answers on the clean photos (282 tiger cat, 967 espresso,
    // 657 missile), plus one deliberately wrong label
    let data: Vec<(image::RgbImage, usize)> = [
        ("chelsea.png", 282),
        ("coffee.png", 967),
        ("rocket.jpg", 657),
        ("coffee.png", 1),
    ]
    .iter()
    .map(|(f, l)| (whisker::data::decode_file(&testdata(f)).unwrap(), *l))
    .collect();
    let settings = RobustnessAttack {
        method: Method::Pgd,
        norm: Norm::Linf,
        steps: 5,
        seed: 0,
    };
    let r = robustness(&b, &data, &[0.0, 8.0 / 255.0], settings, &|_, _| {}).unwrap();
    assert_eq!(r.n, 4);
    assert_eq!(r.clean_accuracy, 0.75);
    assert_eq!(
        r.rows[0].robust_accuracy, 0.75,
        "eps 0 is the clean accuracy"
    );
    assert!(
        r.rows[1].robust_accuracy <= 0.25,
        "8/255 PGD breaks most: {:?}",
        r.rows[1]
    );
    assert!(r.rows[1].attack_success_rate >= 2.0 / 3.0);
    assert!(r.rows[1].mean_linf <= 8.0 / 255.0 + 1e-9 && r.rows[1].mean_linf > 0.0);
}

#[test]
fn carlini_wagner_finds_a_small_l2_perturbation() {
    let device = Device::flex().autodiff();
    let b = Backbone::from_file(
        "efficientnet_lite0",
        &testdata("efficientnet-lite0-57934424.pth"),
        &device,
    )
    .unwrap();
    let img = whisker::data::decode_file(&testdata("coffee.png")).unwrap();
    let cfg = AttackConfig {
        method: Method::Cw,
        norm: Norm::L2,
        eps: 0.0,
        alpha: 0.01,
        steps: 100,
        random_start: false,
        target: Some(340),
        seed: 0,
        min_confidence: 0.0,
        cw_c: 1.0,
    };
    let r = attack(&b, &img, &cfg).unwrap();
    println!(
        "cw: {} steps, l2 {:.3}, linf {}/255",
        r.steps_used, r.l2, r.linf_255
    );
    assert!(r.success && r.adversarial_top1 == 340, "{r:?}");
    // far smaller in L2 than the 4/255 PGD perturbation (≈ 10.9) on the same photo
    assert!(r.l2 < 4.0, "{}", r.l2);
    assert_eq!(classify_u8(&b, &r.adversarial).unwrap().0, 340);
}
