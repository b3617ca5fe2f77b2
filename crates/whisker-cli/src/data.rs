//! `whisker data`

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// scikit-learn's 1,797 real handwritten 8×8 digits (from its PyPI wheel) as an image folder.
    Digits {
        /// Where to write DIR/<digit>/NNNN.png.
        dir: PathBuf,
    },
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Digits { dir } => {
            let n = whisker::data::digits::fetch(&dir)?;
            println!("{n} images in {}", dir.display());
        }
    }
    Ok(())
}
