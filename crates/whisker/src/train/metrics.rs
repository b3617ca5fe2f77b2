//! Classification metrics: accuracy, mean per-class accuracy (what the Oxford-IIIT Pet
//! literature reports), top-k, per-class precision / recall / F1, confusion matrix.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub mean_per_class_accuracy: f64,
    pub top3: f64,
    pub top5: f64,
    pub log_loss: f64,
    pub per_class: Vec<ClassMetrics>,
    /// Rows: true class, columns: predicted class, in `classes` order.
    pub confusion: Vec<Vec<usize>>,
    pub classes: Vec<String>,
}

/// Rank of the true class in a row of logits (0 = top-1).
fn rank(row: &[f32], label: usize) -> usize {
    row.iter().filter(|&&v| v > row[label]).count()
}

/// Metrics of `[n, k]` row-major logits against labels.
pub fn evaluate(logits: &[f32], labels: &[usize], classes: &[String]) -> Metrics {
    let k = classes.len();
    let n = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut top1, mut top3, mut top5) = (0usize, 0usize, 0usize);
    let mut log_loss = 0.0;
    for (i, &l) in labels.iter().enumerate() {
        let row = &logits[i * k..(i + 1) * k];
        let pred = (0..k)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        confusion[l][pred] += 1;
        let r = rank(row, l);
        top1 += (r < 1) as usize;
        top3 += (r < 3) as usize;
        top5 += (r < 5) as usize;
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
        log_loss += lse - row[l] as f64;
    }
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = confusion.iter().map(|r| r[c]).sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let nf = n.max(1) as f64;
    Metrics {
        n,
        accuracy: top1 as f64 / nf,
        mean_per_class_accuracy: present.iter().map(|c| c.recall).sum::<f64>()
            / present.len().max(1) as f64,
        top3: top3 as f64 / nf,
        top5: top5 as f64 / nf,
        log_loss: log_loss / nf,
        per_class,
        confusion,
        classes: classes.to_vec(),
    }
}

impl Metrics {
    /// The confusion matrix as text.
    pub fn confusion_text(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(4)
            .clamp(4, 24);
        let mut s = format!("{:>w$} |", "true\\pred");
        for j in 0..self.classes.len() {
            s.push_str(&format!(" {j:>4}"));
        }
        s.push('\n');
        for (i, row) in self.confusion.iter().enumerate() {
            let name: String = self.classes[i].chars().take(w).collect();
            s.push_str(&format!("{name:>w$} |"));
            for v in row {
                s.push_str(&format!(" {v:>4}"));
            }
            s.push_str(&format!("   ({i})\n"));
        }
        s
    }
}
