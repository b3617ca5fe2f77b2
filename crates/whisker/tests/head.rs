//! `--mode head`: the MLP head learns, the schedule is PyTorch's OneCycleLR shape, and a
//! run interrupted after a checkpoint and resumed ends bit-identical to an uninterrupted one.

use burn::tensor::Device;
use whisker::train::head::{lr_at, HeadConfig, HeadState};
use whisker::train::metrics::evaluate;
use whisker::train::probe::Samples;
use whisker::weights::formula::unit;

/// Three noisy, linearly inseparable-by-one-feature clusters in 16 dimensions.
fn data(n: usize, seed: u32) -> (Vec<f32>, Vec<usize>) {
    let d = 16;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n as u64 {
        let c = (i % 3) as usize;
        for j in 0..d as u64 {
            let noise = unit(i * 97 + j, seed) as f32 - 0.5;
            let signal = if j as usize % 3 == c { 1.5 } else { 0.0 };
            x.push(noise + signal);
        }
        y.push(c);
    }
    (x, y)
}

fn cfg() -> HeadConfig {
    HeadConfig {
        hidden: 32,
        dropout: 0.2,
        epochs: 8,
        batch_size: 16,
        lr: 1e-2,
        patience: 0,
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn head_learns_and_resume_is_exact() {
    let device = Device::flex();
    let (tx, ty) = data(240, 1);
    let (vx, vy) = data(90, 2);
    let train = Samples { x: &tx, y: &ty };
    let val = Samples { x: &vx, y: &vy };
    let c = cfg();
    let mut full = HeadState::new(train, 16, 3, &c);
    while !full.finished(&c) {
        full.epoch(train, val, &c, &device).unwrap();
    }
    let m = evaluate(
        &full.best_head().logits(&vx, &device).unwrap(),
        &vy,
        &["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    assert!(m.accuracy > 0.95, "val accuracy {}", m.accuracy);
    assert!(full.history[0].train_loss > full.history[7].train_loss * 3.0);

    // interrupted after 3 epochs: checkpoint, "crash", load, continue
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint.safetensors");
    let mut part = HeadState::new(train, 16, 3, &c);
    for _ in 0..3 {
        part.epoch(train, val, &c, &device).unwrap();
        part.save(&ckpt, &c).unwrap();
    }
    drop(part);
    let (mut resumed, saved_cfg) = HeadState::load(&ckpt).unwrap();
    assert_eq!(saved_cfg, c);
    assert_eq!(resumed.epoch, 3);
    while !resumed.finished(&c) {
        resumed.epoch(train, val, &c, &device).unwrap();
    }
    assert_eq!(
        resumed.head, full.head,
        "resumed run ends where the uninterrupted one does"
    );
    assert_eq!(resumed.history, full.history);
    assert_eq!(resumed.best_head(), full.best_head());
}

#[test]
fn one_cycle_schedule_matches_pytorch_shape() {
    let c = HeadConfig {
        lr: 1e-2,
        ..Default::default()
    };
    // torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100): the lr
    // PyTorch 2.15 reports at steps 0, 10, 29, 50, 99
    let want = [
        (0, 4e-4),
        (10, 0.002951639484641007),
        (29, 1e-2),
        (50, 0.00793893450575732),
        (99, 4e-8),
    ];
    for (step, lr) in want {
        let got = lr_at(&c, step, 100);
        assert!(
            (got - lr).abs() < 1e-9 * lr.max(1e-3),
            "step {step}: {got} vs {lr}"
        );
    }
    let cos = HeadConfig {
        schedule: whisker::train::head::Schedule::Cosine,
        lr: 1.0,
        ..Default::default()
    };
    assert!((lr_at(&cos, 0, 101) - 1.0).abs() < 1e-12);
    assert!((lr_at(&cos, 50, 101) - 0.5).abs() < 1e-12);
}

#[test]
fn lr_finder_finds_a_useful_learning_rate() {
    let device = Device::flex();
    let (tx, ty) = data(240, 1);
    let c = HeadConfig {
        hidden: 32,
        batch_size: 16,
        seed: 1,
        ..Default::default()
    };
    let curve = whisker::train::head::lr_find(
        Samples { x: &tx, y: &ty },
        16,
        3,
        &c,
        whisker::train::head::RangeTest {
            start: 1e-6,
            end: 10.0,
            steps: 120,
        },
        &device,
    )
    .unwrap();
    assert!(curve.len() > 40, "{}", curve.len());
    // the loss falls well below its start before it diverges
    let first = curve[0].1;
    let min = curve.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    assert!(min < 0.5 * first, "min {min} vs first {first}");
    let (steep, min10) = whisker::train::head::lr_suggestions(&curve);
    let (steep, min10) = (steep.unwrap(), min10.unwrap());
    assert!((1e-4..1.0).contains(&steep), "{steep}");
    assert!((1e-5..1.0).contains(&min10), "{min10}");
}
