//! `whisker featuremap`: one layer's most active channels.

use std::path::PathBuf;

use anyhow::Result;
use whisker::inspect::featuremap;

use super::load_model;

#[derive(clap::Args)]
pub struct FeatureMapArgs {
    /// The photo whose activations are shown.
    #[arg(required_unless_present = "list_layers")]
    image: Option<PathBuf>,
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Backbone weights file (default: the cache).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// Layer to show (default: a mid-level one); see --list-layers.
    #[arg(long)]
    layer: Option<String>,
    /// Print the layer names and exit.
    #[arg(long)]
    list_layers: bool,
    /// How many channels (the most active ones).
    #[arg(long, default_value_t = 32, value_parser = crate::args::count)]
    channels: usize,
    /// A trained whisker model (its backbone, fine-tuned or not) instead of a zoo backbone.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The picture (PNG).
    #[arg(long, required_unless_present = "list_layers")]
    out: Option<PathBuf>,
}

pub fn featuremap(a: FeatureMapArgs) -> Result<i32> {
    let device = whisker::default_device();
    let subject = load_model(a.model.as_ref(), &a.backbone, a.weights.as_ref(), &device)?;
    let b = subject.backbone();
    if a.list_layers {
        for n in b.layer_names() {
            println!("{n}");
        }
        return Ok(0);
    }
    let layer = a
        .layer
        .clone()
        .unwrap_or_else(|| featuremap::default_layer(b));
    let image = a.image.clone().unwrap_or_default();
    let crop = b.preprocess().load(&image)?;
    let acts = featuremap::activations(b, &crop, &layer)?;
    let (base, tiles) = featuremap::render(&crop, &acts, a.channels, 96);
    let img = whisker::report::featuremap_figure(
        &base,
        &tiles,
        &format!(
            "{} · layer {} · {} most active of {} channels ({}×{})",
            b.spec.name,
            layer,
            tiles.len(),
            acts.0,
            acts.1,
            acts.2
        ),
    )?;
    let out = a.out.clone().unwrap_or_default();
    whisker::report::save_png(&img, &out)?;
    println!(
        "{} {} [{} channels, {}×{}] → {}",
        b.spec.name,
        layer,
        acts.0,
        acts.1,
        acts.2,
        out.display()
    );
    Ok(0)
}
