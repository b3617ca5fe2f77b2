//! Transfer learning with the library: a folder of images (one sub-folder per class) → a
//! linear probe on EfficientNet-Lite0's features → test accuracy → the run saved → loaded back
//! → a prediction. Needs the weights in the cache (`whisker weights fetch efficientnet_lite0`).
//!
//!     cargo run --release --example transfer -- DIR [RUN_DIR]

use whisker::data::datasets::{Dataset, Labels};
use whisker::learner::{Learner, Silent, TrainConfig};
use whisker::model::{Model, PredictOptions};
use whisker::run::Start;

fn main() -> whisker::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: transfer DIR [RUN_DIR]  (DIR: one sub-folder of images per class)");
        std::process::exit(2);
    };
    let run = args
        .get(1)
        .map_or("target/transfer-run", String::as_str)
        .as_ref();

    let data = Dataset::open(dir.as_ref(), None, Labels::Breed)?;
    let fit = Learner::new(TrainConfig::default()).fit(
        &data,
        run,
        Start::Fresh { force: true },
        &Silent,
    )?;
    println!(
        "test accuracy {:.2}%",
        fit.metrics.test.map_or(0.0, |m| m.accuracy) * 100.0
    );

    let model = Model::load(run, &whisker::default_device())?;
    let image = data.items[0].path.clone();
    let p = model.predict_files(
        std::slice::from_ref(&image),
        &PredictOptions::default(),
        &|_, _| {},
    )?;
    println!("{}: {}", image.display(), model.top_k(&p, 0, 1)[0].label);
    Ok(())
}
