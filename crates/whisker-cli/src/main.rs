//! `whisker`: the command-line face of the whisker library.

mod args;
mod bench;
mod classify;
mod data;
mod eval;
mod export;
mod extract;
mod inspect;
mod models;
mod predict;
mod progress;
mod report;
mod serve;
mod train;
mod weights;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "whisker",
    version,
    about = "Transfer learning for image classification: pretrained CNNs, exact to PyTorch, in one binary."
)]
struct Cli {
    /// Worker threads for compute and decoding (default: all cores).
    #[arg(long, global = true, value_parser = args::whole(1, args::MAX_THREADS))]
    threads: Option<usize>,
    /// Compute device: cpu; cuda / cuda:N (NVIDIA, a build with `--features cuda`); wgpu /
    /// wgpu:N (Vulkan or Metal, a build with `--features wgpu`) [default: WHISKER_DEVICE, else
    /// cpu].
    #[arg(long, global = true)]
    device: Option<String>,
    /// GPU arithmetic of convolutions and matrix products: fp32 (f32 results; on NVIDIA tensor
    /// cores three TF32 products each), tf32 (one TF32 product: faster, ~1e-3 relative error,
    /// PyTorch's default for convolutions), bf16 or f16 (mixed precision as PyTorch's autocast:
    /// bfloat16 / half operands and results, f32 weights, BatchNorm, loss and optimizer; f16
    /// training scales the loss dynamically). The CPU always computes in f32 [default:
    /// WHISKER_GPU_PRECISION, else fp32].
    #[arg(long, global = true, value_parser = ["fp32", "tf32", "bf16", "f16"])]
    precision: Option<String>,
    /// Largest image, in pixels, that is decoded (default: Pillow's 89,478,485; also
    /// WHISKER_MAX_PIXELS): larger ones are refused as possible decompression bombs.
    #[arg(long, global = true, value_parser = args::whole(1, 1 << 40))]
    max_pixels: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the backbones of the zoo.
    #[command(after_help = "Example: whisker models --json")]
    Models(models::Args),
    /// List class names and their indices (ImageNet's, or a trained model's).
    #[command(after_help = "Example: whisker classes cat")]
    Classes(models::ClassesArgs),
    /// Fetch, import and list pretrained weights.
    #[command(
        after_help = "Examples:\n  whisker weights fetch efficientnet_lite0\n  whisker weights fetch resnet50 --from resnet50-0676ba61.pth\n  whisker weights list"
    )]
    Weights {
        #[command(subcommand)]
        cmd: weights::Cmd,
    },
    /// Classify images with an ImageNet backbone.
    #[command(
        after_help = "Examples:\n  whisker classify photo.jpg\n  whisker classify -b resnet50 --top 3 --json ~/Pictures --csv out.csv"
    )]
    Classify(classify::Args),
    /// Obtain datasets.
    #[command(
        after_help = "Examples:\n  whisker data digits digits/\n  whisker data download oxford-pets pets/"
    )]
    Data {
        #[command(subcommand)]
        cmd: data::Cmd,
    },
    /// Train a classifier on a dataset: a linear probe or an MLP head on a frozen backbone's
    /// features, or fine-tune the backbone too.
    #[command(
        after_help = "Examples:\n  whisker train digits/ --out run\n  whisker train pets/ --mode head --epochs 30 --out run-head\n  whisker train pets/ --mode finetune --unfreeze 3 --epochs 2 --out run-ft\n  whisker train pets/ --mode finetune --unfreeze 3 --epochs 2 --out run-ft --resume"
    )]
    Train(train::TrainArgs),
    /// Evaluate a trained model on a dataset split.
    #[command(after_help = "Example: whisker eval run digits/ --split test")]
    Eval(eval::EvalArgs),
    /// A run's report.html: metrics, per-class table, curves, confusion matrix, top losses
    /// with Grad-CAM, skipped files; one self-contained page.
    #[command(
        after_help = "Examples:\n  whisker report run\n  whisker report run digits/ --split val --top-losses 24"
    )]
    Report(report::ReportArgs),
    /// Features of many images to Parquet or NumPy files, in shards that a rerun resumes
    /// and several processes (a job array, a cluster) can share.
    #[command(
        after_help = "Examples:\n  whisker extract pets/ --out feats/\n  whisker extract photos.csv --out feats/ -b resnet50 --layer layer3 --pool max\n  whisker extract photos/ --out feats/ --num-shards 64 --shard-id $SLURM_ARRAY_TASK_ID\n  whisker extract photos/ --out feats/ --num-shards 64 --merge feats.parquet"
    )]
    Extract(extract::ExtractArgs),
    /// A trained run or a zoo backbone as one ONNX model (normalisation, backbone and head),
    /// for ONNX Runtime, OpenVINO, TensorRT.
    #[command(
        after_help = "Examples:\n  whisker export run --out model.onnx\n  whisker export resnet50 --out resnet50.onnx --weights resnet50.pth"
    )]
    Export(export::ExportArgs),
    /// Predict with a trained model.
    #[command(after_help = "Example: whisker predict run photo.jpg --tta")]
    Predict(predict::PredictArgs),
    /// Learning-rate range test for `train --mode head`.
    #[command(after_help = "Example: whisker lr-find digits/ --out .")]
    LrFind(predict::LrFindArgs),
    /// Picture of one layer's channel activations.
    #[command(
        after_help = "Examples:\n  whisker featuremap photo.jpg --out maps.png\n  whisker featuremap --list-layers -b resnet50"
    )]
    Featuremap(inspect::FeatureMapArgs),
    /// Where the model looked: a class-activation map (Grad-CAM) over each photo.
    #[command(
        after_help = "Examples:\n  whisker cam chelsea.png --out cams/\n  whisker cam dog.jpg --class tabby --method gradcam++ --out cams/ --json\n  whisker cam photo.jpg --model run --layer _blocks.12 --out cams/"
    )]
    Cam(inspect::CamArgs),
    /// A local web page: classify a photo, see where the model looked, its feature maps,
    /// an adversarial example and an ideal class image; with a JSON API under /api/.
    #[command(
        after_help = "Examples:\n  whisker serve\n  whisker serve --model run -b efficientnet_lite0 --addr 127.0.0.1:9000"
    )]
    Serve(serve::ServeArgs),
    /// Measure a backbone's speed on this machine and device: eval forward and fine-tuning
    /// step images/s at the batch sizes given.
    #[command(
        after_help = "Examples:\n  whisker bench\n  whisker --device cuda bench resnet50 --batch 64,256 --train-batch 64 --json"
    )]
    Bench(bench::BenchArgs),
    /// Robust accuracy of a trained model against a range of attack budgets.
    #[command(
        after_help = "Example: whisker robustness run digits/ --eps 0,1/255,2/255,4/255 --limit 100"
    )]
    Robustness(inspect::RobustnessArgs),
    /// "Ideal class" image by gradient ascent on the input.
    #[command(after_help = "Example: whisker dream --class zebra --out zebra.png")]
    Dream(inspect::DreamArgs),
    /// Adversarial example within an epsilon ball in pixel space (through the preprocessing).
    #[command(
        after_help = "Example: whisker attack dog.jpg --target tabby --eps 4/255 --out cat.png --side-by-side both.png"
    )]
    Attack(inspect::AttackArgs),
}

/// A path for JSON output and messages (file names that are not UTF-8 are shown with
/// replacement characters; serialising the raw path would fail).
pub(crate) fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn main() {
    // `whisker classify … | head`: when the reader goes away, end quietly as other Unix
    // tools do, instead of panicking in `println!` on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("whisker: warning: cannot set the thread count: {e}");
        }
    }
    let device = cli.device.clone().or_else(|| {
        std::env::var("WHISKER_DEVICE")
            .ok()
            .filter(|v| !v.is_empty())
    });
    if let Some(p) = &cli.precision {
        let set = p.parse().and_then(whisker::device::set_gpu_precision);
        if let Err(e) = set {
            eprintln!("whisker: error: {e}");
            std::process::exit(2);
        }
    }
    if let Some(d) = device {
        if let Err(e) = whisker::set_device(&d) {
            eprintln!("whisker: error: {e}");
            std::process::exit(2);
        }
        // wgpu may settle on a software rasterizer when it finds no GPU: say so
        if let Some((name, false)) = whisker::device::gpu_identity(&whisker::default_device()) {
            eprintln!(
                "whisker: warning: device `{d}` is `{name}`, not a GPU (a CPU or software adapter): \
                 `--device cpu` is faster"
            );
        }
    }
    // a mixed precision the device's arithmetic ignores (the CPU engine's f32)
    if cli.precision.is_some()
        && whisker::device::gpu_precision().reduced_dtype().is_some()
        && whisker::backbones::layers::arith(&whisker::default_device())
            == whisker::backbones::layers::Arith::F32
    {
        eprintln!(
            "whisker: warning: --precision {} applies to GPU devices; the CPU computes in f32",
            cli.precision.as_deref().unwrap_or_default()
        );
    }
    if let Some(n) = cli.max_pixels {
        whisker::data::decode::set_max_pixels(n as u64);
    }
    let quiet = cli.quiet;
    let res: Result<i32> = match cli.cmd {
        Cmd::Models(a) => models::run(a).map(|_| 0),
        Cmd::Classes(a) => models::classes(a).map(|_| 0),
        Cmd::Weights { cmd } => weights::run(cmd, quiet).map(|_| 0),
        Cmd::Classify(a) => classify::run(a, quiet),
        Cmd::Data { cmd } => data::run(cmd, quiet).map(|_| 0),
        Cmd::Train(a) => train::train(a, quiet),
        Cmd::Eval(a) => eval::eval(a, quiet),
        Cmd::Report(a) => report::report(a, quiet),
        Cmd::Predict(a) => predict::predict(a, quiet),
        Cmd::Extract(a) => extract::extract(a, quiet),
        Cmd::Export(a) => export::export(a, quiet),
        Cmd::LrFind(a) => predict::lr_find(a, quiet),
        Cmd::Featuremap(a) => inspect::featuremap(a),
        Cmd::Attack(a) => inspect::attack_cmd(a),
        Cmd::Cam(a) => inspect::cam_cmd(a),
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Bench(a) => bench::bench(a, quiet),
        Cmd::Dream(a) => inspect::dream_cmd(a, quiet),
        Cmd::Robustness(a) => inspect::robustness_cmd(a, quiet),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("whisker: error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::{ContextKind, ErrorKind};
    use clap::CommandFactory;

    /// The paths of the commands that run something (`["weights", "fetch"]`, `["train"]`).
    fn leaves(c: &clap::Command, at: Vec<String>, out: &mut Vec<Vec<String>>) {
        let subs: Vec<&clap::Command> = c
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            out.push(at);
            return;
        }
        for s in subs {
            let mut p = at.clone();
            p.push(s.get_name().to_string());
            leaves(s, p, out);
        }
    }

    fn find<'a>(root: &'a clap::Command, path: &[String]) -> &'a clap::Command {
        path.iter().fold(root, |c, name| {
            c.find_subcommand(name).expect("a subcommand")
        })
    }

    /// Whether parsing `argv` failed on the value of `--long`.
    fn refused(argv: &[String], long: &str) -> Option<String> {
        match Cli::try_parse_from(argv) {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue
                ) =>
            {
                let about_it = e
                    .get(ContextKind::InvalidArg)
                    .is_some_and(|a| a.to_string().starts_with(&format!("--{long}")));
                about_it.then(|| e.to_string())
            }
            _ => None,
        }
    }

    /// Item 10 of issue 25, as an argument fuzzer over every numeric flag of every command:
    /// values past any sane range (1e308, 2^64 − 1, 10^9, −1, NaN) are refused by the parser
    /// with the range in the message, never handed to the code behind the flag (where 10,000
    /// threads panicked rayon and a 10^8-unit layer aborted on allocation).
    #[test]
    fn item10_every_numeric_flag_has_a_range() {
        let root = Cli::command();
        let mut paths = Vec::new();
        leaves(&root, Vec::new(), &mut paths);
        // the global flags once, on `models`
        let mut cases: Vec<(Vec<String>, String)> = root
            .get_arguments()
            .filter_map(|a| {
                a.get_long()
                    .map(|l| (vec!["models".to_string()], l.to_string()))
            })
            .collect();
        for p in &paths {
            for a in find(&root, p).get_arguments() {
                if let Some(l) = a.get_long() {
                    if a.get_action().takes_values() && a.get_possible_values().is_empty() {
                        cases.push((p.clone(), l.to_string()));
                    }
                }
            }
        }
        let mut numeric = 0;
        for (path, long) in cases {
            let argv = |v: &str| -> Vec<String> {
                // a flag's value before the command: global flags; after it: the command's
                let mut a = vec!["whisker".to_string()];
                if path == ["models"] {
                    a.push(format!("--{long}={v}"));
                    a.extend(path.clone());
                } else {
                    a.extend(path.clone());
                    a.push(format!("--{long}={v}"));
                }
                a
            };
            // numeric flags: take 1 and refuse a word
            if refused(&argv("1"), &long).is_some() || refused(&argv("abc"), &long).is_none() {
                continue;
            }
            numeric += 1;
            let unbounded_ok = long == "seed";
            let big_ok = unbounded_ok || ["limit", "max-pixels"].contains(&long.as_str());
            for v in [
                "1e308",
                "18446744073709551615",
                "1000000000",
                "-1",
                "nan",
                "inf",
            ] {
                if (unbounded_ok && v == "18446744073709551615") || (big_ok && v == "1000000000") {
                    continue;
                }
                let e = refused(&argv(v), &long).unwrap_or_else(|| {
                    panic!(
                        "{} --{long}={v} is accepted: the flag needs a range",
                        path.join(" ")
                    )
                });
                assert!(
                    !e.contains("panicked") && e.len() < 400 && !e.contains("0000000000000"),
                    "{} --{long}={v}: {e}",
                    path.join(" ")
                );
            }
        }
        assert!(numeric >= 45, "only {numeric} numeric flags found");
    }
}
