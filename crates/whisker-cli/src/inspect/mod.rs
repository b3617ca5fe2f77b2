//! Looking inside: `whisker featuremap`, `cam`, `attack`, `dream`, `robustness`.

mod attack;
pub(crate) mod cam;
mod dream;
pub(crate) mod featuremap;
mod robustness;

pub use attack::{attack_cmd, AttackArgs};
pub use cam::{cam_cmd, CamArgs};
pub use dream::{dream_cmd, DreamArgs};
pub use featuremap::{featuremap, FeatureMapArgs};
pub use robustness::{robustness_cmd, RobustnessArgs};

use std::path::PathBuf;

use anyhow::{Context, Result};
use whisker::model::Model;

/// Which model a command looks inside: a zoo backbone (ImageNet classes) or a trained whisker
/// model (its classes).
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Backbone weights file (default: the cache).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// A trained whisker model (run directory or model.safetensors) instead of a zoo backbone.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// What `featuremap` looks inside: a model, or a bare backbone (a feature extractor's
/// checkpoint without an ImageNet classifier, such as DINOv2's, has maps too).
pub(crate) enum Subject {
    Model(Box<Model>),
    Backbone(Box<whisker::Backbone>),
}

impl Subject {
    pub(crate) fn backbone(&self) -> &whisker::Backbone {
        match self {
            Subject::Model(m) => m.backbone(),
            Subject::Backbone(b) => b,
        }
    }
}

impl ModelArgs {
    /// The model, or for a zoo backbone without an ImageNet classifier the backbone alone.
    pub(crate) fn load_for_maps(&self, device: &burn::tensor::Device) -> Result<Subject> {
        if self.model.is_some() {
            return Ok(Subject::Model(Box::new(self.load(device)?)));
        }
        let path = match &self.weights {
            Some(w) => w.clone(),
            None => {
                whisker::cache::Cache::default()
                    .require(&self.backbone)?
                    .file
            }
        };
        let b = whisker::Backbone::from_file(&self.backbone, &path, device)
            .with_context(|| format!("loading {} weights", self.backbone))?;
        Ok(Subject::Backbone(Box::new(b)))
    }

    pub(crate) fn load(&self, device: &burn::tensor::Device) -> Result<Model> {
        load_model(
            self.model.as_ref(),
            &self.backbone,
            self.weights.as_ref(),
            device,
        )
    }
}

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
