//! `whisker data`

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Download and extract a public dataset (resumable; archives checked when checksums are known).
    Download {
        /// oxford-pets or cats-vs-dogs.
        #[arg(value_parser = ["oxford-pets", "cats-vs-dogs"])]
        name: String,
        /// Target directory.
        dir: PathBuf,
        /// Fetch the archives from this base URL instead of the publisher's.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// scikit-learn's 1,797 real handwritten 8×8 digits (from its PyPI wheel) as an image folder.
    Digits {
        /// Where to write DIR/<digit>/NNNN.png.
        dir: PathBuf,
        /// Read scikit-learn's digits.csv.gz from this file instead of its PyPI wheel.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Only the first N images.
        #[arg(long, value_parser = crate::args::whole(1, 1_000_000_000))]
        limit: Option<usize>,
    },
}

pub fn run(cmd: Cmd, quiet: bool) -> Result<()> {
    match cmd {
        Cmd::Download { name, dir, mirror } => {
            let pb = crate::progress::bytes_bar("download", quiet);
            let cb = |done: u64, total: Option<u64>| {
                if let Some(t) = total {
                    pb.set_length(t);
                }
                pb.set_position(done);
            };
            let n = whisker::data::download::download(&name, &dir, mirror.as_deref(), &cb);
            pb.finish_and_clear();
            println!("{} files extracted into {}", n?, dir.display());
        }
        Cmd::Digits { dir, from, limit } => {
            let n = match from {
                Some(f) => {
                    let bytes = whisker::io::read_regular(&f, whisker::io::MAX_SMALL_FILE)?;
                    whisker::data::digits::write_image_folder(&bytes, &dir, limit)?
                }
                None => whisker::data::digits::fetch(&dir, limit)?,
            };
            println!("{n} images in {}", dir.display());
        }
    }
    Ok(())
}
