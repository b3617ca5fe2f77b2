//! [`Model`]: what classifies — a zoo backbone with its ImageNet head, or a model trained with
//! whisker (a head on the backbone's features; the backbone fine-tuned or not) — behind one
//! type: its labels and preprocessing, predictions for files (streamed, cached, with
//! test-time augmentation), and differentiable logits for looking inside it.
//!
//! ```no_run
//! # fn main() -> whisker::Result<()> {
//! use whisker::model::{Model, PredictOptions};
//! let device = whisker::default_device();
//! let model = Model::pretrained("efficientnet_lite0", &device)?.for_inference();
//! let p = model.predict_files(&["chelsea.png".into()], &PredictOptions::default(), &|_, _| {})?;
//! for r in model.top_k(&p, 0, 3) {
//!     println!("{} {:.1}%", r.label, r.prob * 100.0);
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::backbones::{imagenet_classes, Backbone, Ranked};
use crate::cache::Cache;
use crate::data::transforms::{to_tensor, Preprocess};
use crate::error::{Error, Result};
use crate::features::{extract, FeatureCache};
use crate::io::sha256_file;
use crate::train::metrics::log_sum_exp;
use crate::train::model_file::TrainedModel;

/// A classifier ready to use.
pub struct Model {
    backbone: Backbone,
    trained: Option<TrainedModel>,
    labels: Vec<String>,
    /// The key of its features in the feature cache: the pretrained weights' sha256, or
    /// `finetuned-<sha256 of the model file>` for a fine-tuned backbone.
    feature_key: String,
}

/// How [`Model::predict_files`] works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Test-time augmentation: average the probabilities of the centre crop, its mirror
    /// image and the four corner crops.
    pub tta: bool,
    /// Use (and fill) the on-disk feature cache.
    pub cache: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            batch_size: 16,
            tta: false,
            cache: true,
        }
    }
}

/// Predictions for a list of files.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Classes per row.
    pub k: usize,
    /// Row-major `[n, k]` scores: logits, or with TTA the log of the averaged probabilities
    /// (softmax of a row gives the probabilities either way). Rows of failed files are zeros.
    pub scores: Vec<f32>,
    /// Per file: `None`, or why it failed (naming the file).
    pub errors: Vec<Option<String>>,
    /// Whether `scores` are TTA log-probabilities rather than logits.
    pub tta: bool,
    /// How many feature vectors came from the cache.
    pub cached: usize,
}

impl Model {
    /// A zoo backbone with the pretrained weights in the cache (`whisker weights fetch`).
    pub fn pretrained(name: &str, device: &Device) -> Result<Self> {
        let c = Cache::default().require(name)?;
        let backbone = Backbone::from_file(name, &c.file, device)?;
        Self::zoo(backbone, c.sha256, &c.file)
    }

    /// A zoo backbone with weights from a file.
    pub fn from_weights(name: &str, path: &Path, device: &Device) -> Result<Self> {
        let sha = sha256_file(path)?;
        let backbone = Backbone::from_file(name, path, device)?;
        Self::zoo(backbone, sha, path)
    }

    /// A zoo backbone as a feature extractor (`weights`, else the cached weights): unlike
    /// [`Model::pretrained`], a checkpoint without an ImageNet classifier (DINOv2's) is
    /// welcome; its labels are ImageNet's when it has the classifier, else none.
    pub fn extractor(name: &str, weights: Option<&Path>, device: &Device) -> Result<Self> {
        let (backbone, sha) = match weights {
            Some(w) => (Backbone::from_file(name, w, device)?, sha256_file(w)?),
            None => {
                let c = Cache::default().require(name)?;
                (Backbone::from_file(name, &c.file, device)?, c.sha256)
            }
        };
        Ok(Self::from_backbone(backbone, sha))
    }

    /// A backbone built in code (its weights from anywhere) as a model: ImageNet's labels
    /// when it has the ImageNet classifier, else none; `weights_sha256` names its weights
    /// (the feature cache's key, written into exports).
    pub fn from_backbone(backbone: Backbone, weights_sha256: String) -> Self {
        let labels = match backbone.net.has_imagenet_head() {
            true => imagenet_classes().iter().map(|s| s.to_string()).collect(),
            false => Vec::new(),
        };
        Model {
            backbone,
            trained: None,
            labels,
            feature_key: weights_sha256,
        }
    }

    /// The backbone as an ImageNet classifier; refused when its checkpoint (`file`) has no
    /// ImageNet classifier (DINOv2's are feature extractors).
    fn zoo(backbone: Backbone, sha: String, file: &Path) -> Result<Self> {
        if !backbone.net.has_imagenet_head() {
            let name = backbone.spec.name;
            return Err(Error::Invalid(format!(
                "{}: this {name} checkpoint has no ImageNet classifier (DINOv2's weights are a \
                 feature extractor): train a classifier on your classes (`whisker train DIR -b \
                 {name}`) and use the run, or give a checkpoint with the official linear head \
                 (`linear_head.weight`, as the torch hub's `{name}_lc` has)",
                file.display()
            )));
        }
        Ok(Model {
            backbone,
            trained: None,
            labels: imagenet_classes().iter().map(|s| s.to_string()).collect(),
            feature_key: sha,
        })
    }

    /// A model trained with whisker: a run directory or its `model.safetensors`. The run
    /// must be complete; a model without its own backbone needs the same pretrained weights
    /// in the cache (checked by sha256).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = crate::run::model_file(path);
        if let Some(dir) = file.parent() {
            crate::run::check_complete(dir)?;
        }
        let trained = TrainedModel::load(&file)?;
        let (backbone, key) = match &trained.backbone_weights {
            Some(sd) => (
                Backbone::from_state_dict(&trained.meta.backbone, sd.clone(), device)?,
                format!("finetuned-{}", sha256_file(&file)?),
            ),
            None => {
                // the cached file with the weights it was trained on (of any cached for it)
                let cache = Cache::default();
                let same = cache.list()?.into_iter().find(|c| {
                    c.backbone == trained.meta.backbone && c.sha256 == trained.meta.weights_sha256
                });
                let Some(c) = same else {
                    // (none cached at all: `require` says how to fetch them)
                    let newest = cache.require(&trained.meta.backbone)?;
                    return Err(Error::Invalid(format!(
                        "{}: the model was trained on {} weights with sha256 {}, but the cache holds {} ({}); import the file it was trained with (`whisker weights fetch {} --from FILE`)",
                        file.display(),
                        trained.meta.backbone,
                        trained.meta.weights_sha256,
                        newest.sha256,
                        newest.file.display(),
                        trained.meta.backbone,
                    )));
                };
                (
                    Backbone::from_file(&trained.meta.backbone, &c.file, device)?,
                    c.sha256,
                )
            }
        };
        Ok(Model {
            labels: trained.meta.classes.clone(),
            backbone,
            trained: Some(trained),
            feature_key: key,
        })
    }

    /// BatchNorm folded into the convolutions: faster inference, same numbers (not for
    /// fine-tuning or for the batch statistics of training mode).
    pub fn for_inference(mut self) -> Self {
        self.backbone = self.backbone.fold_batchnorm();
        self
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The trained model (head, metadata), or `None` for a zoo backbone.
    pub fn trained(&self) -> Option<&TrainedModel> {
        self.trained.as_ref()
    }

    /// Class names, in output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The sha256 of the pretrained weights the model stands on.
    pub fn weights_sha256(&self) -> &str {
        match &self.trained {
            Some(t) => &t.meta.weights_sha256,
            None => &self.feature_key,
        }
    }

    /// The sha256 of the trained model file whose fine-tuned backbone this model runs, if it
    /// does.
    pub fn finetuned_sha256(&self) -> Option<&str> {
        self.feature_key.strip_prefix("finetuned-")
    }

    pub fn preprocess(&self) -> Preprocess {
        self.backbone.preprocess()
    }

    /// Class logits of `[n, dim]` feature vectors (row-major).
    pub fn logits_of_features(&self, features: &[f32]) -> Result<Vec<f32>> {
        let device = self.backbone.device();
        match &self.trained {
            Some(t) => t.head.logits(features, &device),
            None => {
                let dim = self.backbone.spec.feature_dim;
                let n = features.len() / dim.max(1);
                let f =
                    Tensor::<2>::from_data(TensorData::new(features.to_vec(), [n, dim]), &device);
                crate::tensor::to_vec(self.backbone.net.classifier(f))
            }
        }
    }

    /// Class logits of pixels in [0, 1] (`[n, 3, H, W]`), differentiably.
    pub fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        match &self.trained {
            Some(t) => t.head.logits_tensor(self.backbone.features(pixels)),
            None => crate::inspect::Classifier::logits(&self.backbone, pixels),
        }
    }

    /// Predictions for image files: decoded in parallel with the forward passes, features
    /// cached (unless `opts.cache` is off), one row per file; a file that cannot be read gets
    /// its error and a row of zeros.
    pub fn predict_files(
        &self,
        paths: &[PathBuf],
        opts: &PredictOptions,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Predictions> {
        let k = self.labels.len();
        if opts.tta {
            return Ok(self.predict_tta(paths, progress));
        }
        let device = self.backbone.device();
        let cache = opts
            .cache
            .then(|| FeatureCache::new(None, &self.backbone, &self.feature_key));
        let ex = extract(
            &self.backbone,
            &device,
            paths,
            cache.as_ref(),
            opts.batch_size.max(1),
            progress,
        )?;
        let mut scores = self.logits_of_features(&ex.features)?;
        if scores.len() != paths.len() * k {
            return Err(Error::Internal(format!(
                "{} scores for {} images of {k} classes",
                scores.len(),
                paths.len()
            )));
        }
        let mut errors = ex.errors;
        non_finite_rows(paths, k, &mut scores, &mut errors);
        Ok(Predictions {
            k,
            scores,
            errors,
            tta: false,
            cached: ex.cached,
        })
    }

    fn predict_tta(
        &self,
        paths: &[PathBuf],
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Predictions {
        let k = self.labels.len();
        let pre = self.preprocess();
        let device = self.backbone.device();
        let mut scores = vec![0f32; paths.len() * k];
        let mut errors = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let r = crate::data::decode_file(p).and_then(|img| {
                let views = pre.tta_views(&img);
                let f = self.backbone.features(to_tensor(&views, &device));
                let feats = crate::tensor::to_vec(f)?;
                let logits = self.logits_of_features(&feats)?;
                if logits.iter().any(|v| !v.is_finite()) {
                    // (averaging probabilities would hide them: f64::max drops a NaN)
                    return Err(Error::NonFinite(non_finite_message(p)));
                }
                Ok((logits, views.len()))
            });
            match r {
                Ok((logits, nv)) => {
                    let mut mean = vec![0f64; k];
                    for row in logits.chunks_exact(k) {
                        let lse = log_sum_exp(row);
                        for (acc, v) in mean.iter_mut().zip(row) {
                            *acc += (*v as f64 - lse).exp() / nv as f64;
                        }
                    }
                    for (s, m) in scores[i * k..(i + 1) * k].iter_mut().zip(&mean) {
                        *s = m.max(1e-30).ln() as f32;
                    }
                    errors.push(None);
                }
                Err(e) => errors.push(Some(e.to_string())),
            }
            progress(i + 1, paths.len());
        }
        non_finite_rows(paths, k, &mut scores, &mut errors);
        Predictions {
            k,
            scores,
            errors,
            tta: true,
            cached: 0,
        }
    }

    /// The `n` most probable classes of row `row` of `p`.
    pub fn top_k(&self, p: &Predictions, row: usize, n: usize) -> Vec<Ranked> {
        let s = &p.scores[row * p.k..(row + 1) * p.k];
        let lse = log_sum_exp(s);
        let mut idx: Vec<usize> = (0..p.k).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        idx.into_iter()
            .take(n.min(p.k))
            .map(|j| Ranked {
                index: j,
                label: self.labels[j].clone(),
                prob: ((s[j] as f64 - lse).exp()) as f32,
                logit: s[j],
            })
            .collect()
    }

    /// A class by index or name (case-insensitive). A name two classes share (ImageNet's
    /// two "crane"s) is an error listing both; an unknown name suggests near ones.
    pub fn class_index(&self, s: &str) -> Result<usize> {
        class_index(&self.labels, s)
    }
}

fn non_finite_message(path: &Path) -> String {
    format!(
        "{}: the model's outputs are not finite (NaN or infinity): a damaged model or input",
        path.display()
    )
}

/// Rows of failed files become zeros; a row with NaN or infinity (a model that computes
/// nonsense on this input) becomes an error naming the file: never a NaN probability.
fn non_finite_rows(paths: &[PathBuf], k: usize, scores: &mut [f32], errors: &mut [Option<String>]) {
    for (i, e) in errors.iter_mut().enumerate() {
        let row = &mut scores[i * k..(i + 1) * k];
        if e.is_none() && row.iter().any(|v| !v.is_finite()) {
            *e = Some(non_finite_message(&paths[i]));
        }
        if e.is_some() {
            row.fill(0.0);
        }
    }
}

/// [`Model::class_index`] over any list of class names.
///
/// ```
/// use whisker::model::class_index;
/// let labels: Vec<String> = ["tabby", "tiger cat", "zebra"].iter().map(|s| s.to_string()).collect();
/// assert_eq!(class_index(&labels, "Zebra").unwrap(), 2);
/// assert_eq!(class_index(&labels, "1").unwrap(), 1);
/// let e = class_index(&labels, "zebar").unwrap_err().to_string();
/// assert!(e.contains("did you mean \"zebra\" (2)"));
/// ```
pub fn class_index(labels: &[String], s: &str) -> Result<usize> {
    if let Ok(i) = s.trim().parse::<usize>() {
        if i < labels.len() {
            return Ok(i);
        }
        return Err(Error::Invalid(format!(
            "class index {i} out of range: the model has {} classes (0 to {})",
            labels.len(),
            labels.len().saturating_sub(1)
        )));
    }
    let hits: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].eq_ignore_ascii_case(s.trim()))
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => {
            let near = crate::similar::closest(s, labels, 5);
            let hint = if near.is_empty() && labels.len() <= 30 {
                // a trained model's few classes ("three" for a digits model's "3"): all of them
                format!(
                    "; the model's classes are {}",
                    labels
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!("\"{l}\" ({i})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if near.is_empty() {
                String::new()
            } else {
                format!(
                    "; did you mean {}?",
                    near.iter()
                        .map(|&i| format!("\"{}\" ({i})", labels[i]))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Err(Error::Invalid(format!(
                "unknown class `{s}` (give an index below {} or a class name){hint}",
                labels.len()
            )))
        }
        many => Err(Error::Invalid(format!(
            "`{s}` names {} classes: {}; give the index",
            many.len(),
            many.iter()
                .map(|i| format!("{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl crate::inspect::Classifier for Model {
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        Model::logits(self, pixels)
    }
    fn logits_tapped(&self, pixels: Tensor<4>, taps: &mut crate::backbones::Taps) -> Tensor<2> {
        match &self.trained {
            Some(t) => t
                .head
                .logits_tensor(self.backbone.features_with(pixels, taps)),
            None => self.backbone.forward(pixels, taps).logits,
        }
    }
    fn head_logits(&self, features: Tensor<2>) -> Tensor<2> {
        match &self.trained {
            Some(t) => t.head.logits_tensor(features),
            None => self.backbone.net.classifier(features),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_resolved_or_refused_clearly() {
        let labels: Vec<String> = imagenet_classes().iter().map(|s| s.to_string()).collect();
        assert_eq!(class_index(&labels, "tiger cat").unwrap(), 282);
        assert_eq!(class_index(&labels, "Tabby").unwrap(), 281);
        assert_eq!(class_index(&labels, "340").unwrap(), 340);
        // whisker's ImageNet labels name the two cranes apart
        assert_eq!(class_index(&labels, "crane").unwrap(), 517);
        assert_eq!(class_index(&labels, "crane bird").unwrap(), 134);
        let dup: Vec<String> = ["a", "b", "A"].iter().map(|s| s.to_string()).collect();
        let e = class_index(&dup, "a").unwrap_err().to_string();
        assert!(e.contains("0, 2") && e.contains("give the index"), "{e}");
        let e = class_index(&labels, "zebar").unwrap_err().to_string();
        assert!(
            e.contains("did you mean") && e.contains("\"zebra\" (340)"),
            "{e}"
        );
        let e = class_index(&labels, "1000").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
    }

    /// Issue 25, item 15: a trained model's class misspelled gets a suggestion, or, beyond
    /// one, the model's few classes listed.
    #[test]
    fn item15_a_trained_models_misspelled_class_gets_a_suggestion_or_its_classes() {
        let pets: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
        let e = class_index(&pets, "dgo").unwrap_err().to_string();
        assert!(e.contains("did you mean \"dog\" (1)"), "{e}");
        let digits: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let e = class_index(&digits, "three").unwrap_err().to_string();
        assert!(
            e.contains("the model's classes are \"0\" (0), \"1\" (1)") && e.contains("\"9\" (9)"),
            "{e}"
        );
    }
}
