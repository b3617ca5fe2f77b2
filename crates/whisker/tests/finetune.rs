//! `--mode finetune`: the frozen epoch trains only the head, then exactly the last N units
//! (and never the BatchNorm statistics) change; a run stopped after a checkpoint and resumed
//! ends exactly where an uninterrupted one does.

mod common;

use burn::tensor::Device;
use common::*;
use whisker::data::augment::Augment;
use whisker::data::resize::resize_shorter;
use whisker::data::transforms::center_crop;
use whisker::train::finetune::{FineTuneConfig, FineTuner};
use whisker::Backbone;

fn cfg() -> FineTuneConfig {
    FineTuneConfig {
        unfreeze: Some(2),
        freeze_epochs: 1,
        epochs: 2,
        batch_size: 6,
        lr: 2e-3,
        lr_mult: 10.0,
        weight_decay: 1e-2,
        label_smoothing: 0.1,
        grad_clip: Some(1.0),
        seed: 4,
        augment: Some(Augment::new(64)),
        train_bn: false,
    }
}

#[test]
fn finetune_unfreezes_the_last_units_and_resumes_exactly() {
    let device = Device::flex().autodiff();
    let weights = testdata("efficientnet-lite0-57934424.pth");
    let (imgs, labels) = digits(6);
    let (vimgs, vlabels) = (imgs.clone(), labels.clone());
    let c = cfg();
    let aug = c.augment.clone().unwrap();
    let load_train =
        |i: usize, epoch: usize| Some(aug.apply(&imgs[i], &mut Augment::rng(c.seed, epoch, i)));
    let load_val = |i: usize| Some(center_crop(&resize_shorter(&vimgs[i], 73), 64));
    let original = whisker::weights::StateDict::from_file(&weights).unwrap();

    let mut full = FineTuner::new(
        Backbone::from_file("efficientnet_lite0", &weights, &device).unwrap(),
        3,
        &c,
    )
    .unwrap();
    full.epoch(&labels, &vlabels, &c, &load_train, &load_val, &|_, _| {})
        .unwrap();
    let (after_frozen, _) = full.export().unwrap();
    for (k, t) in &after_frozen.tensors {
        assert_eq!(
            t.data, original.tensors[k].data,
            "{k} changed during the frozen epoch"
        );
    }
    while !full.finished(&c) {
        full.epoch(&labels, &vlabels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
    }
    assert_eq!(full.history.len(), 3);
    let (tuned, _) = full.export().unwrap();
    let mut changed: Vec<&str> = tuned
        .tensors
        .iter()
        .filter(|(k, t)| t.data != original.tensors[*k].data)
        .map(|(k, _)| k.as_str())
        .collect();
    changed.sort();
    // last two units of Lite0's feature extractor: _blocks.15 and the head conv (+ _bn1)
    assert!(!changed.is_empty());
    for k in &changed {
        assert!(
            k.starts_with("_blocks.15.") || k.starts_with("_conv_head") || k.starts_with("_bn1."),
            "{k} should be frozen"
        );
        assert!(
            !k.ends_with("running_mean") && !k.ends_with("running_var"),
            "{k}: BatchNorm statistics must stay frozen"
        );
    }
    assert!(
        changed.contains(&"_blocks.15._project_conv.weight")
            && changed.contains(&"_conv_head.weight"),
        "{changed:?}"
    );

    // interrupted after the first unfrozen epoch, resumed from the checkpoint
    let dir = tempfile::tempdir().unwrap();
    let mut part = FineTuner::new(
        Backbone::from_file("efficientnet_lite0", &weights, &device).unwrap(),
        3,
        &c,
    )
    .unwrap();
    for _ in 0..2 {
        part.epoch(&labels, &vlabels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
        part.save(dir.path(), &c).unwrap();
    }
    drop(part);
    let (mut resumed, saved) = FineTuner::load(dir.path(), "efficientnet_lite0", &device).unwrap();
    assert_eq!(saved, c);
    assert_eq!(resumed.epoch, 2);
    while !resumed.finished(&c) {
        resumed
            .epoch(&labels, &vlabels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
    }
    let (r, rh) = resumed.export().unwrap();
    let (_, fh) = full.export().unwrap();
    for (k, t) in &tuned.tensors {
        let d = max_abs_diff(&t.data, &r.tensors[k].data);
        assert!(d == 0.0, "{k}: resumed differs by {d}");
    }
    assert_eq!(rh, fh);
    assert_eq!(resumed.history, full.history);
}

#[test]
fn train_bn_updates_the_statistics_of_unfrozen_units_only_and_resumes_exactly() {
    let device = Device::flex().autodiff();
    let weights = testdata("efficientnet-lite0-57934424.pth");
    let (imgs, labels) = digits(4);
    let c = FineTuneConfig {
        train_bn: true,
        ..cfg()
    };
    let aug = c.augment.clone().unwrap();
    let load_train =
        |i: usize, epoch: usize| Some(aug.apply(&imgs[i], &mut Augment::rng(c.seed, epoch, i)));
    let load_val = |i: usize| Some(center_crop(&resize_shorter(&imgs[i], 73), 64));
    let original = whisker::weights::StateDict::from_file(&weights).unwrap();
    let mut full = FineTuner::new(
        Backbone::from_file("efficientnet_lite0", &weights, &device).unwrap(),
        3,
        &c,
    )
    .unwrap();
    while !full.finished(&c) {
        full.epoch(&labels, &labels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
    }
    let (tuned, _) = full.export().unwrap();
    let moved: Vec<&String> = tuned
        .tensors
        .keys()
        .filter(|k| {
            k.ends_with("running_mean") && tuned.tensors[*k].data != original.tensors[*k].data
        })
        .collect();
    assert!(
        moved.iter().any(|k| k.starts_with("_blocks.15.")),
        "{moved:?}"
    );
    assert!(
        moved
            .iter()
            .all(|k| k.starts_with("_blocks.15.") || k.starts_with("_bn1.")),
        "{moved:?}"
    );
    // resume after the first unfrozen epoch
    let dir = tempfile::tempdir().unwrap();
    let mut part = FineTuner::new(
        Backbone::from_file("efficientnet_lite0", &weights, &device).unwrap(),
        3,
        &c,
    )
    .unwrap();
    for _ in 0..2 {
        part.epoch(&labels, &labels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
        part.save(dir.path(), &c).unwrap();
    }
    drop(part);
    let (mut resumed, _) = FineTuner::load(dir.path(), "efficientnet_lite0", &device).unwrap();
    while !resumed.finished(&c) {
        resumed
            .epoch(&labels, &labels, &c, &load_train, &load_val, &|_, _| {})
            .unwrap();
    }
    let (r, _) = resumed.export().unwrap();
    for (k, t) in &tuned.tensors {
        assert!(
            max_abs_diff(&t.data, &r.tensors[k].data) == 0.0,
            "{k} differs after resume"
        );
    }
    assert_eq!(resumed.history, full.history);
}
