//! Classification metrics: accuracy, mean per-class accuracy (what the Oxford-IIIT Pet
//! literature reports), top-k, per-class precision / recall / F1, confusion matrix.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// The strict rank of the true class in a row of scores (0 = top-1): how many other classes
/// score at least as high. A tie therefore counts against the true class, so a model that
/// gives every class the same score is never "correct".
fn rank(row: &[f32], label: usize) -> usize {
    let v = row[label];
    row.iter()
        .enumerate()
        .filter(|&(j, &w)| j != label && w >= v)
        .count()
}

/// The class a row of scores predicts: the index of its unique maximum, or `None` when two
/// or more classes share the maximum (no decision). Scores must be finite.
pub fn top1(row: &[f32]) -> Option<usize> {
    let (mut best, mut tied) = (0usize, false);
    for (j, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = j;
            tied = false;
        } else if v == row[best] {
            tied = true;
        }
    }
    (!row.is_empty() && !tied).then_some(best)
}

/// The class an image of true class `label` counts as predicted (its confusion-matrix
/// column): its unique top-1 class; on a tie at the top, the first tied class that is not the
/// true one (a tie is an error, and the confusion matrix agrees with the accuracy).
pub fn decision(row: &[f32], label: usize) -> usize {
    top1(row).unwrap_or_else(|| {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        (0..row.len())
            .find(|&j| j != label && row[j] == m)
            .unwrap_or(label)
    })
}

/// Metrics of `[n, k]` row-major logits against labels. Ties count as errors; non-finite
/// logits (NaN or ±Inf: broken weights or features) are an error, not a result.
///
/// ```
/// use whisker::train::metrics::evaluate;
/// let classes = vec!["cat".to_string(), "dog".to_string()];
/// // two images of class 0: one clearly right, one tied (a tie is not a decision)
/// let m = evaluate(&[3.0, 1.0, 2.0, 2.0], &[0, 0], &classes).unwrap();
/// assert_eq!(m.accuracy, 0.5);
/// assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 0]]);
/// assert!(evaluate(&[f32::NAN, 0.0], &[0], &classes).is_err());
/// ```
pub fn evaluate(logits: &[f32], labels: &[usize], classes: &[String]) -> Result<Metrics> {
    let k = classes.len();
    let n = labels.len();
    if logits.len() != n * k {
        return Err(Error::Internal(format!(
            "evaluate: {} logits for {n} images of {k} classes",
            logits.len()
        )));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= k) {
        return Err(Error::Internal(format!(
            "evaluate: label {l} out of range for {k} classes"
        )));
    }
    let bad = logits
        .chunks_exact(k.max(1))
        .filter(|r| r.iter().any(|v| !v.is_finite()))
        .count();
    if bad > 0 {
        return Err(Error::NonFinite(format!(
            "the model produced non-finite logits (NaN or infinity) for {bad} of {n} images: its weights or features are broken"
        )));
    }
    let mut confusion = vec![vec![0usize; k]; k];
    let (mut top1_hits, mut top3, mut top5) = (0usize, 0usize, 0usize);
    let mut log_loss = 0.0;
    for (i, &l) in labels.iter().enumerate() {
        let row = &logits[i * k..(i + 1) * k];
        confusion[l][decision(row, l)] += 1;
        let r = rank(row, l);
        top1_hits += (r < 1) as usize;
        top3 += (r < 3) as usize;
        top5 += (r < 5) as usize;
        log_loss += log_sum_exp(row) - row[l] as f64;
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
    Ok(Metrics {
        n,
        accuracy: top1_hits as f64 / nf,
        mean_per_class_accuracy: present.iter().map(|c| c.recall).sum::<f64>()
            / present.len().max(1) as f64,
        top3: top3 as f64 / nf,
        top5: top5 as f64 / nf,
        log_loss: log_loss / nf,
        per_class,
        confusion,
        classes: classes.to_vec(),
    })
}

/// `ln Σ exp(v)` of a row, computed stably in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln()
}

impl Metrics {
    /// The off-diagonal cells of the confusion matrix with the most images, at most `n`:
    /// (true class, predicted class, count), largest first (fastai's `most_confused`).
    pub fn most_confused(&self, n: usize) -> Vec<(String, String, usize)> {
        let mut cells: Vec<(usize, usize, usize)> = Vec::new();
        for (i, row) in self.confusion.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                if i != j && c > 0 {
                    cells.push((c, i, j));
                }
            }
        }
        cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        cells
            .into_iter()
            .take(n)
            .map(|(c, i, j)| (self.classes[i].clone(), self.classes[j].clone(), c))
            .collect()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_precision_recall_f1_by_hand() {
        // 3 classes; true labels and clear predictions:
        // true 0: predicted 0, 0, 1   true 1: predicted 1, 2   true 2: predicted 2
        let rows: [(usize, usize); 6] = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)];
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for (t, p) in rows {
            let mut r = vec![0.0f32; 3];
            r[p] = 5.0;
            logits.extend(r);
            labels.push(t);
        }
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = evaluate(&logits, &labels, &classes).unwrap();
        assert_eq!(m.accuracy, 4.0 / 6.0);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        let pc = &m.per_class;
        // a: precision 2/2, recall 2/3; b: 1/2, 1/2; c: 1/2, 1/1
        assert_eq!((pc[0].precision, pc[0].recall), (1.0, 2.0 / 3.0));
        assert_eq!((pc[1].precision, pc[1].recall), (0.5, 0.5));
        assert_eq!((pc[2].precision, pc[2].recall), (0.5, 1.0));
        assert!((pc[0].f1 - 0.8).abs() < 1e-12);
        assert!((pc[2].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            pc.iter().map(|c| c.support).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert!((m.mean_per_class_accuracy - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(
            m.most_confused(5),
            vec![("a".into(), "b".into(), 1), ("b".into(), "c".into(), 1)]
        );
    }
}
