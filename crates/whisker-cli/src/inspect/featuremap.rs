//! `whisker featuremap`: one layer's most active channels.

use std::path::PathBuf;

use anyhow::Result;
use whisker::inspect::featuremap;

#[derive(clap::Args)]
pub struct FeatureMapArgs {
    /// The photo whose activations are shown.
    #[arg(required_unless_present = "list_layers")]
    image: Option<PathBuf>,
    /// Layer to show (default: a mid-level one); see --list-layers.
    #[arg(long)]
    layer: Option<String>,
    /// Print the layer names and exit.
    #[arg(long)]
    list_layers: bool,
    /// How many channels (the most active ones).
    #[arg(long, default_value_t = 32, value_parser = crate::args::whole(1, 4096))]
    channels: usize,
    #[command(flatten)]
    which: super::ModelArgs,
    /// The picture (PNG).
    #[arg(long, required_unless_present = "list_layers")]
    out: Option<PathBuf>,
}

/// A layer's activations: `(channels, h, w, values)`.
pub(crate) type Activations = (usize, usize, usize, Vec<f32>);

/// The picture of `layer` for a preprocessed crop: the crop beside its `channels` most active
/// channels, titled; the activations; the channels shown.
pub(crate) fn figure(
    b: &whisker::Backbone,
    crop: &image::RgbImage,
    layer: &str,
    channels: usize,
) -> whisker::Result<(image::RgbImage, Activations, Vec<usize>)> {
    let acts = featuremap::activations(b, crop, layer)?;
    let (base, tiles) = featuremap::render(crop, &acts, channels, 96);
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
    let shown = tiles.iter().map(|t| t.channel).collect();
    Ok((img, acts, shown))
}

pub fn featuremap(a: FeatureMapArgs) -> Result<i32> {
    let device = whisker::default_device();
    let subject = a.which.load_for_maps(&device)?;
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
    let (img, acts, _) = figure(b, &crop, &layer, a.channels)?;
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
