//! The trained-model file: one safetensors file holding the head's tensors and, in its
//! metadata, everything `whisker predict` needs on another machine: backbone name and the
//! sha256 of its weights, preprocessing, class names, training settings and metrics.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::probe::LinearHead;
use crate::error::{Error, Result};

/// Metadata of a trained model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub backbone: String,
    pub weights_sha256: String,
    pub resize: usize,
    pub crop: usize,
    pub normalization: String,
    pub classes: Vec<String>,
    pub head: String,
    pub settings: serde_json::Value,
    pub metrics: serde_json::Value,
}

/// A trained classifier: a frozen backbone (named, by weights sha256) and a head.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedModel {
    pub meta: ModelMeta,
    pub head: LinearHead,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl TrainedModel {
    /// Write atomically as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let h = &self.head;
        let tensors: Vec<(&str, Vec<u8>, Vec<usize>)> = vec![
            ("head.weight", f32_bytes(&h.w), vec![h.dim, h.classes]),
            ("head.bias", f32_bytes(&h.b), vec![h.classes]),
            ("input.mean", f32_bytes(&h.mean), vec![h.dim]),
            ("input.std", f32_bytes(&h.std), vec![h.dim]),
        ];
        let views = tensors
            .iter()
            .map(|(k, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (k.to_string(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(format!("safetensors: {e}")))?;
        let mut md = HashMap::new();
        md.insert(
            "whisker".to_string(),
            serde_json::to_string(&self.meta).map_err(|e| Error::Invalid(e.to_string()))?,
        );
        let bytes = safetensors::serialize(views, &Some(md))
            .map_err(|e| Error::Invalid(format!("safetensors: {e}")))?;
        crate::weights::cache::write_atomic(path, &bytes)
    }

    /// Read a model file written by [`TrainedModel::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a whisker model file: {e}")))?;
        let meta_json = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("whisker"))
            .ok_or_else(|| {
                bad("a safetensors file, but not a whisker model (no `whisker` metadata)".into())
            })?;
        let meta: ModelMeta = serde_json::from_str(meta_json)
            .map_err(|e| bad(format!("invalid whisker metadata: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let get = |k: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(k)
                .map_err(|_| bad(format!("missing tensor `{k}`")))?;
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let w = get("head.weight")?;
        let b = get("head.bias")?;
        let mean = get("input.mean")?;
        let std = get("input.std")?;
        let (dim, classes) = (mean.len(), b.len());
        if w.len() != dim * classes || std.len() != dim || classes != meta.classes.len() {
            return Err(bad(
                "tensor shapes do not agree with each other or with the class list".into(),
            ));
        }
        Ok(TrainedModel {
            meta,
            head: LinearHead {
                dim,
                classes,
                mean,
                std,
                w,
                b,
            },
        })
    }
}
