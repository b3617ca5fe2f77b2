//! Features of any layer: the maps (or tokens) a backbone records at a tap, pooled to one
//! vector per image, as `whisker extract --layer L --pool P` hands them out.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backbones::{Backbone, Taps};
use crate::error::{Error, Result};

/// How a layer's output becomes one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The mean over positions (a token layer's patch tokens: the class and register tokens
    /// left out), as `torch.mean(x, (2, 3))`.
    Avg,
    /// The maximum over positions (a token layer's patch tokens).
    Max,
    /// A token layer's class token (the first token).
    Cls,
    /// Everything, flattened: a map `[C, H, W]` in PyTorch's order (`x.flatten(1)`), a token
    /// layer's tokens `[T, C]` (class and register tokens first).
    None,
}

impl Pool {
    pub const ALL: [Pool; 4] = [Pool::Avg, Pool::Max, Pool::Cls, Pool::None];

    pub fn name(self) -> &'static str {
        match self {
            Pool::Avg => "avg",
            Pool::Max => "max",
            Pool::Cls => "cls",
            Pool::None => "none",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Pool::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown pooling `{s}`: avg, max, cls or none")))
    }
}

/// What is extracted per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The backbone's feature vector (what its classifier takes).
    Features,
    /// The output of the tap `layer`, pooled.
    Layer { layer: String, pool: Pool },
}

impl Output {
    /// The layer's name as written in files (`features` for the feature vector).
    pub fn layer_name(&self) -> &str {
        match self {
            Output::Features => "features",
            Output::Layer { layer, .. } => layer,
        }
    }

    /// The pooling's name as written in files (`backbone` for the feature vector: the
    /// backbone's own pooling).
    pub fn pool_name(&self) -> &'static str {
        match self {
            Output::Features => "backbone",
            Output::Layer { pool, .. } => pool.name(),
        }
    }

    /// Refuse a layer the backbone does not have, naming those it has.
    pub fn check(&self, backbone: &Backbone) -> Result<()> {
        let Output::Layer { layer, .. } = self else {
            return Ok(());
        };
        let names = backbone.layer_names();
        if names.iter().any(|n| n == layer) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{} has no layer `{layer}`{}; its layers: {}",
            backbone.spec.name,
            crate::similar::closest(layer, &names, 1)
                .first()
                .map(|&i| format!(" (did you mean `{}`?)", names[i]))
                .unwrap_or_default(),
            names.join(", ")
        )))
    }

    /// One row per image of pixels `[N, 3, H, W]` in [0, 1]: `(rows, dim)`, row-major.
    pub fn rows(&self, backbone: &Backbone, pixels: Tensor<4>) -> Result<(Vec<f32>, usize)> {
        match self {
            Output::Features => {
                let f = backbone.features(pixels);
                let dim = f.dims()[1];
                Ok((crate::tensor::to_vec(f)?, dim))
            }
            Output::Layer { layer, pool } => {
                let mut taps = Taps::only(&[layer.as_str()]);
                let _ = backbone.features_with(pixels, &mut taps);
                pool_layer(&taps, backbone.spec.name, layer, *pool)
            }
        }
    }
}

/// Pool the recorded output of `layer` in `taps`.
pub fn pool_layer(taps: &Taps, model: &str, layer: &str, pool: Pool) -> Result<(Vec<f32>, usize)> {
    if let (Some(t), Pool::Cls | Pool::None) = (taps.get_tokens(layer), pool) {
        let [_, tokens, c] = t.dims();
        let v = crate::tensor::to_vec(t.clone())?;
        return Ok(match pool {
            Pool::Cls => (
                v.chunks_exact(tokens * c)
                    .flat_map(|x| &x[..c])
                    .copied()
                    .collect(),
                c,
            ),
            _ => (v, tokens * c),
        });
    }
    if pool == Pool::Cls {
        return Err(Error::Invalid(format!(
            "--pool cls takes the class token of a token layer (a vision transformer's block); \
             {model}'s `{layer}` is a feature map: use avg, max or none"
        )));
    }
    let Some((_, map)) = taps.maps.iter().find(|(n, _)| n == layer) else {
        return Err(Error::Invalid(format!(
            "{model}: the layer `{layer}` recorded nothing"
        )));
    };
    let [_, c, h, w] = map.dims();
    let v = crate::tensor::to_vec(map.clone())?;
    let hw = h * w;
    Ok(match pool {
        Pool::None => (v, c * hw),
        Pool::Avg => (
            v.chunks_exact(hw.max(1))
                .map(|m| (m.iter().map(|&x| x as f64).sum::<f64>() / hw as f64) as f32)
                .collect(),
            c,
        ),
        _ => (
            v.chunks_exact(hw.max(1))
                .map(|m| m.iter().copied().fold(f32::NEG_INFINITY, pool_max))
                .collect(),
            c,
        ),
    })
}

/// `max` that keeps a NaN (as `torch.amax` does), so a broken value is never hidden.
fn pool_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}
