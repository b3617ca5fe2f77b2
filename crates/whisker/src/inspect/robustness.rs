//! Robust accuracy over a dataset, as RobustBench reports it: for each epsilon, the share of
//! images the model still classifies correctly under an untargeted attack (clean errors count
//! as non-robust), with the attack's success rate on correctly classified images and the mean
//! perturbation norms of the successful attacks.

use image::RgbImage;
use serde::Serialize;

use super::attack::{attack, classify_u8, AttackConfig, Method, Norm};
use super::Classifier;
use crate::error::Result;

#[derive(Debug, Clone, Serialize)]
pub struct RobustnessRow {
    pub eps: f64,
    pub robust_accuracy: f64,
    /// Among correctly classified images.
    pub attack_success_rate: f64,
    pub mean_linf: f64,
    pub mean_l2: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RobustnessReport {
    pub n: usize,
    pub clean_accuracy: f64,
    pub rows: Vec<RobustnessRow>,
}

/// The attack used at every epsilon (step size eps/4; PGD starts at a random point).
#[derive(Debug, Clone, Copy)]
pub struct RobustnessAttack {
    pub method: Method,
    pub norm: Norm,
    pub steps: usize,
    pub seed: u64,
}

/// Attack every `(image, label)` at every epsilon (0 means clean).
pub fn robustness(
    c: &dyn Classifier,
    data: &[(RgbImage, usize)],
    eps: &[f64],
    attack_settings: RobustnessAttack,
    progress: &dyn Fn(usize, usize),
) -> Result<RobustnessReport> {
    let RobustnessAttack {
        method,
        norm,
        steps,
        seed,
    } = attack_settings;
    let n = data.len();
    // a tie at the top is no decision (as in every whisker metric)
    let clean: Vec<bool> = data
        .iter()
        .map(|(img, l)| {
            classify_u8(c, img).map(|(_, _, p)| crate::train::metrics::top1(&p) == Some(*l))
        })
        .collect::<Result<_>>()?;
    let n_correct = clean.iter().filter(|v| **v).count();
    let mut rows = Vec::new();
    let total = eps.len() * n;
    let mut done = 0;
    for &e in eps {
        let (mut robust, mut broken, mut linf, mut l2) = (0usize, 0usize, 0.0, 0.0);
        for (i, (img, _)) in data.iter().enumerate() {
            done += 1;
            if !clean[i] {
                continue;
            }
            if e <= 0.0 {
                robust += 1;
                continue;
            }
            let cfg = AttackConfig {
                random_start: method == Method::Pgd,
                seed: seed ^ i as u64,
                ..AttackConfig::new(method, Some(norm), e, Some(e / 4.0), Some(steps), None)?
            };
            let r = attack(c, img, &cfg)?;
            if r.success {
                broken += 1;
                linf += r.linf;
                l2 += r.l2;
            } else {
                robust += 1;
            }
            progress(done, total);
        }
        rows.push(RobustnessRow {
            eps: e,
            robust_accuracy: robust as f64 / n.max(1) as f64,
            attack_success_rate: broken as f64 / n_correct.max(1) as f64,
            mean_linf: if broken > 0 {
                linf / broken as f64
            } else {
                0.0
            },
            mean_l2: if broken > 0 { l2 / broken as f64 } else { 0.0 },
        });
    }
    Ok(RobustnessReport {
        n,
        clean_accuracy: n_correct as f64 / n.max(1) as f64,
        rows,
    })
}
