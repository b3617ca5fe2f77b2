//! Mixed precision (`--precision f16`, meant for GPUs) emulated on the CPU with burn's
//! operations (`WHISKER_ENGINE=burn`): a fine-tuning epoch scales the loss (every step kept,
//! the scale in the checkpoint) and lands next to the f32 engine's epoch. One test: the
//! precision and the engine are process-wide choices.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::backbones::plan::{set_engine, Engine};
use whisker::data::resize::resize_shorter;
use whisker::data::transforms::center_crop;
use whisker::device::{set_gpu_precision, GpuPrecision};
use whisker::train::finetune::{FineTuneConfig, FineTuner};
use whisker::train::loss_scale::{LossScaler, INIT_SCALE};
use whisker::Backbone;

#[test]
fn f16_fine_tuning_scales_the_loss_and_tracks_f32() {
    set_gpu_precision(GpuPrecision::F16).unwrap();
    let device = Device::flex().autodiff();
    let weights = testdata("efficientnet-lite0-57934424.pth");
    let (imgs, labels) = digits(6);
    let imgs: Vec<image::RgbImage> = imgs
        .iter()
        .map(|img| center_crop(&resize_shorter(img, 73), 64))
        .collect();
    let c = FineTuneConfig {
        unfreeze: None,
        freeze_epochs: 0,
        epochs: 1,
        batch_size: 6,
        lr: 1e-3,
        lr_mult: 10.0,
        weight_decay: 1e-2,
        label_smoothing: 0.0,
        grad_clip: None,
        seed: 4,
        augment: None,
        train_bn: false,
    };
    let load_train = |i: usize, _epoch: usize| Some(imgs[i].clone());
    let load_val = |i: usize| Some(imgs[i].clone());
    let run = |engine: Engine, scale: Option<f32>| {
        set_engine(engine);
        let mut t = FineTuner::new(
            Backbone::from_file("efficientnet_lite0", &weights, &device).unwrap(),
            3,
            &c,
        )
        .unwrap();
        if let Some(scale) = scale {
            t.loss_scale.scale = scale;
        }
        let s = t
            .epoch(&labels, &labels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
        (t, s)
    };
    // the CPU engine: f32 whatever the precision, no loss scaling
    let (t32, s32) = run(Engine::Auto, None);
    assert_eq!(t32.loss_scale, LossScaler::default());
    // burn's operations in f16 from PyTorch's first scale, 2^16: the head's weight gradient
    // (batch · logit gradient · features · 2^16) overflows half's 65504, so steps are
    // skipped and the scale halved until they fit
    let (t16, s16) = run(Engine::Burn, None);
    let skipped = (INIT_SCALE / t16.loss_scale.scale).log2();
    println!("from 2^16: {:?}", t16.loss_scale);
    assert!(
        skipped >= 1.0 && skipped.fract() == 0.0 && t16.loss_scale.good_steps >= 1,
        "{:?}",
        t16.loss_scale
    );
    assert_eq!(t16.loss_scale.good_steps + skipped as u32, 3);
    assert!(s16.train_loss.is_finite() && s16.val_loss.unwrap().is_finite());
    // from a scale that fits: every step kept, next to f32's
    let (t16, s16) = run(Engine::Burn, Some(1024.0));
    set_engine(Engine::Auto);
    assert_eq!(
        t16.loss_scale,
        LossScaler {
            scale: 1024.0,
            good_steps: 3
        },
        "three scaled steps, all finite"
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let (tl, vl) = (
        rel(s16.train_loss, s32.train_loss),
        rel(s16.val_loss.unwrap(), s32.val_loss.unwrap()),
    );
    println!(
        "train loss f16 {} / f32 {} (rel {tl:e}); validation {:?} / {:?} (rel {vl:e})",
        s16.train_loss, s32.train_loss, s16.val_loss, s32.val_loss
    );
    // half's rounding moves the losses, a little: the step was taken at the right size
    assert!(tl > 0.0 && tl < 1.5e-2, "train loss rel. {tl:e}");
    assert!(vl < 2e-2, "validation loss rel. {vl:e}");
    // the scale is part of the checkpoint
    let dir = tempfile::tempdir().unwrap();
    t16.save(dir.path(), &c).unwrap();
    let (back, _) = FineTuner::load(dir.path(), "efficientnet_lite0", &device).unwrap();
    assert_eq!(back.loss_scale, t16.loss_scale);
    // a state whose scale is not a positive number (hand-edited, its hash made to match) is
    // refused: a negative one would turn every step around
    use sha2::Digest;
    let path = dir.path().join("finetune_state.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for bad in [-1024.0, 0.0] {
        let mut state: serde_json::Value =
            serde_json::from_str(doc["state"].as_str().unwrap()).unwrap();
        state["loss_scale"]["scale"] = serde_json::json!(bad);
        let text = serde_json::to_string_pretty(&state).unwrap();
        doc["sha256"] = hex::encode(sha2::Sha256::digest(text.as_bytes())).into();
        doc["state"] = text.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let e = FineTuner::load(dir.path(), "efficientnet_lite0", &device)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("loss scale") && e.contains("finetune_state.json"),
            "{e}"
        );
    }
}
