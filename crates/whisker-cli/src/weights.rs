//! `whisker weights fetch|list`

use std::path::PathBuf;

use anyhow::Result;
use whisker::cache::Cache;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Put a backbone's pretrained weights into the cache ($WHISKER_HOME).
    Fetch {
        /// Backbone name (see `whisker models`).
        name: String,
        /// Import a checkpoint file you already have instead of downloading.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Download from this URL instead of the publisher's (a mirror).
        #[arg(long, value_name = "URL", conflicts_with = "from")]
        url: Option<String>,
        /// Expected sha256 (or its first hex digits) when downloading from --url.
        #[arg(long, requires = "url")]
        sha256: Option<String>,
        /// Replace a cached file of the same name that holds other weights (never done
        /// silently).
        #[arg(long)]
        force: bool,
    },
    /// Show the cached weights.
    List {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Cmd, quiet: bool) -> Result<()> {
    let cache = Cache::default();
    match cmd {
        Cmd::Fetch {
            name,
            from,
            url,
            sha256,
            force,
        } => {
            let c = if let Some(f) = from {
                cache.import(&name, &f, force)?
            } else {
                let pb = crate::progress::bytes_bar("download", quiet);
                let cb = |done: u64, total: Option<u64>| {
                    if let Some(t) = total {
                        pb.set_length(t);
                    }
                    pb.set_position(done);
                };
                let r = match url {
                    Some(u) => cache.fetch_url(&name, &u, sha256.as_deref(), force, &cb),
                    None => {
                        eprintln!("fetching {name} weights…");
                        cache.fetch(&name, &cb)
                    }
                };
                pb.finish_and_clear();
                r?
            };
            println!("{}  {}  {}", c.backbone, c.sha256, c.file.display());
        }
        Cmd::List { json } => {
            let all = cache.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "cache": crate::path_str(&cache.root), "weights": serde_json::to_value(&all)? })
                    )?
                );
            } else if all.is_empty() {
                println!(
                    "no weights cached in {}",
                    cache.root.join("weights").display()
                );
            } else {
                for c in all {
                    println!(
                        "{:<20} {:>8.1} MB  sha256 {}  {}\n{:<20} {}",
                        c.backbone,
                        c.size as f64 / 1e6,
                        c.sha256,
                        c.source,
                        "",
                        c.file.display()
                    );
                }
            }
        }
    }
    Ok(())
}
