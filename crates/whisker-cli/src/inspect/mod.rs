//! Looking inside: `whisker featuremap`, `cam`, `attack`, `dream`, `robustness`.

mod attack;
pub(crate) mod cam;
mod dream;
mod featuremap;
mod robustness;

pub use attack::{attack_cmd, AttackArgs};
pub use cam::{cam_cmd, CamArgs};
pub use dream::{dream_cmd, DreamArgs};
pub use featuremap::{featuremap, FeatureMapArgs};
pub use robustness::{robustness_cmd, RobustnessArgs};

use std::path::PathBuf;

use anyhow::{Context, Result};
use whisker::model::Model;

/// A zoo backbone (ImageNet classes) or a trained whisker model (its classes), on a device.
pub(crate) fn load_model(
    model: Option<&PathBuf>,
    name: &str,
    weights: Option<&PathBuf>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    Ok(match (model, weights) {
        (Some(m), _) => Model::load(m, device)?,
        (None, Some(w)) => Model::from_weights(name, w, device)
            .with_context(|| format!("loading {name} weights"))?,
        (None, None) => {
            Model::pretrained(name, device).with_context(|| format!("loading {name} weights"))?
        }
    })
}
