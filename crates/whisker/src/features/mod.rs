//! Feature extraction with a frozen backbone (eval mode), streamed in batches: images are
//! decoded on all cores in a background thread while the model runs, memory stays bounded
//! whatever the dataset size, and every feature vector is cached on disk, keyed by the
//! backbone's weights (sha256), its preprocessing and the image file's content, so a second
//! run re-uses them and a changed file is re-extracted.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::tensor::Device;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::backbones::Backbone;
use crate::data::transforms::to_tensor;
use crate::error::{Error, Result};
use crate::io::whisker_home;

pub mod pool;

pub use pool::{Output, Pool};

/// On-disk cache of feature vectors for one (backbone weights, preprocessing) pair.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
    pub dim: usize,
}

impl FeatureCache {
    /// The cache directory for `backbone` with weights `weights_sha256`, under `home`
    /// (default `$WHISKER_HOME`).
    pub fn new(home: Option<&Path>, backbone: &Backbone, weights_sha256: &str) -> Self {
        let pre = backbone.preprocess();
        let mut key = format!(
            "{}|{}|{}|{}|{:?}",
            backbone.spec.name, weights_sha256, pre.resize, pre.crop, pre.norm
        );
        // features computed with coarser arithmetic (GPU mixed precision, TF32) are kept apart
        // from f32 ones
        if let Some(device) = burn::module::Module::devices(&backbone.net)
            .into_iter()
            .next()
        {
            key.push_str(arith_tag(&device));
        }
        let h = hex::encode(Sha256::digest(key.as_bytes()));
        let home = home.map(Path::to_path_buf).unwrap_or_else(whisker_home);
        FeatureCache {
            dir: home
                .join("features")
                .join(format!("{}-{}", backbone.spec.name, &h[..16])),
            dim: backbone.spec.feature_dim,
        }
    }

    fn path(&self, content: &str) -> PathBuf {
        self.dir.join(&content[..2]).join(format!("{content}.f32"))
    }

    /// The cached vector of a file whose content hashes to `content`.
    pub fn get(&self, content: &str) -> Option<Vec<f32>> {
        let b = fs::read(self.path(content)).ok()?;
        if b.len() != self.dim * 4 {
            return None;
        }
        Some(crate::weights::f32_from_le(&b))
    }

    /// Store a vector (atomically).
    pub fn put(&self, content: &str, v: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        crate::io::write_atomic(&self.path(content), &bytes)
    }
}

/// How a device's convolutions compute, for the cache key: empty for f32 (the CPU, and fp32 on
/// GPUs), else the precision's name.
fn arith_tag(device: &burn::tensor::Device) -> &'static str {
    use crate::backbones::layers::{arith, Arith};
    use crate::device::GpuPrecision;
    match arith(device) {
        Arith::Cast(burn::tensor::FloatDType::BF16) => "|bf16",
        Arith::Cast(_) => "|f16",
        Arith::F32
            if !crate::device::is_cpu(device)
                && crate::device::gpu_precision() == GpuPrecision::Tf32 =>
        {
            "|tf32"
        }
        _ => "",
    }
}

/// sha256 of an image file's content (hex), or the reason it cannot be read; read as the
/// decoder reads it ([`crate::data::decode::read_image_file`]: regular files, bounded size).
pub fn content_hash(path: &Path) -> std::result::Result<String, String> {
    let b = crate::data::decode::read_image_file(path).map_err(|e| e.to_string())?;
    Ok(hex::encode(Sha256::digest(&b)))
}

/// Features of a list of images.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// Row-major `[n, dim]`; rows of failed images are zeros.
    pub features: Vec<f32>,
    pub dim: usize,
    /// Per image: `None` if extracted, else the reason it failed.
    pub errors: Vec<Option<String>>,
    /// How many came from the cache.
    pub cached: usize,
    /// Images computed per second (cache misses only).
    pub images_per_s: f64,
    /// Why the cache stopped being filled (a full disk, a read-only cache): the run went on
    /// without it.
    pub cache_warning: Option<String>,
}

impl Extracted {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

/// Extract the feature vectors of `paths` with `backbone` in eval mode, `batch` images at a
/// time, using and filling `cache`. `progress(done, total)` is called as images complete.
pub fn extract(
    backbone: &Backbone,
    device: &Device,
    paths: &[PathBuf],
    cache: Option<&FeatureCache>,
    batch: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Extracted> {
    extract_impl(backbone, device, paths, cache, batch, None, progress)
}

/// A per-image transform of the decoded image (index in `paths`, image) → network input.
pub type Transform<'a> = &'a (dyn Fn(usize, &image::RgbImage) -> image::RgbImage + Sync);

/// Features of training-time augmented images (`--augment`): `augment` is applied to each
/// decoded image with its own random stream for (`seed`, `epoch`, index). Never cached.
#[allow(clippy::too_many_arguments)]
pub fn extract_augmented(
    backbone: &Backbone,
    device: &Device,
    paths: &[PathBuf],
    augment: &crate::data::augment::Augment,
    seed: u64,
    epoch: usize,
    batch: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Extracted> {
    let t = move |i: usize, img: &image::RgbImage| {
        augment.apply(img, &mut crate::data::augment::Augment::rng(seed, epoch, i))
    };
    extract_impl(backbone, device, paths, None, batch, Some(&t), progress)
}

/// A decoded, preprocessed image (with the content hash of the bytes it came from, when the
/// decoder hashes), or why it could not be decoded (naming the file).
pub type Decoded = std::result::Result<(image::RgbImage, Option<String>), String>;

/// An image's row in a [`Batch`] (with its content hash, when the decoder gave one), or why
/// it failed.
pub type Streamed = std::result::Result<(usize, Option<String>), String>;

/// One batch of a streamed extraction ([`stream`]), its images in the order they were asked
/// for.
pub struct Batch<'a> {
    /// Per image: its index, and its row in `rows` (with its content hash, when the decoder
    /// gave one) or why it failed.
    pub items: Vec<(usize, Streamed)>,
    /// Row-major `[rows, dim]`: the decoded images' outputs.
    pub rows: &'a [f32],
    pub dim: usize,
}

impl Batch<'_> {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.rows[r * self.dim..(r + 1) * self.dim]
    }
}

/// The streaming core of extraction: the images `todo` (indices handed to `decode`) are
/// decoded on all cores in a background thread, at most two batches ahead, while `forward`
/// runs each batch of `batch` images (`[n, 3, H, W]` pixels in [0, 1] → `n` rows of `dim`
/// values); `sink` receives every batch in order. Memory is bounded by the batch, whatever
/// the number of images. An error from `forward` or `sink` stops the stream and is returned.
pub fn stream(
    device: &Device,
    todo: &[usize],
    batch: usize,
    decode: &(dyn Fn(usize) -> Decoded + Sync),
    forward: &mut dyn FnMut(burn::tensor::Tensor<4>) -> Result<(Vec<f32>, usize)>,
    sink: &mut dyn FnMut(Batch<'_>) -> Result<()>,
) -> Result<()> {
    let batch = batch.max(1);
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Vec<(usize, Decoded)>>(2);
        s.spawn(move || {
            for chunk in todo.chunks(batch) {
                let imgs: Vec<_> = chunk.par_iter().map(|&i| (i, decode(i))).collect();
                if tx.send(imgs).is_err() {
                    break;
                }
            }
        });
        for imgs in rx {
            let mut items = Vec::with_capacity(imgs.len());
            let mut ok_imgs = Vec::new();
            for (i, r) in imgs {
                match r {
                    Ok((img, hash)) => {
                        items.push((i, Ok((ok_imgs.len(), hash))));
                        ok_imgs.push(img);
                    }
                    Err(e) => items.push((i, Err(e))),
                }
            }
            let (rows, dim) = if ok_imgs.is_empty() {
                (Vec::new(), 0)
            } else {
                let (rows, dim) = forward(to_tensor(&ok_imgs, device))?;
                if rows.len() != ok_imgs.len() * dim {
                    return Err(Error::Internal(format!(
                        "{} values for {} images of {dim}",
                        rows.len(),
                        ok_imgs.len()
                    )));
                }
                (rows, dim)
            };
            // (returning drops the receiver: the decoding thread stops at its next batch)
            sink(Batch {
                items,
                rows: &rows,
                dim,
            })?;
        }
        Ok(())
    })
}

fn extract_impl(
    backbone: &Backbone,
    device: &Device,
    paths: &[PathBuf],
    cache: Option<&FeatureCache>,
    batch: usize,
    transform: Option<Transform<'_>>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Extracted> {
    let n = paths.len();
    let dim = backbone.spec.feature_dim;
    let mut features = vec![0f32; n * dim];
    let mut errors: Vec<Option<String>> = vec![None; n];
    // 1. content hashes and cache hits (parallel)
    // (content hashes are only needed to use a cache; without one, an unreadable file is
    // reported by the decoder)
    let hashes: Vec<std::result::Result<String, String>> = match cache {
        Some(_) => paths.par_iter().map(|p| content_hash(p)).collect(),
        None => Vec::new(),
    };
    let mut todo = Vec::new();
    let mut cached = 0;
    match cache {
        None => todo.extend(0..n),
        Some(c) => {
            for (i, h) in hashes.iter().enumerate() {
                match h {
                    Err(e) => errors[i] = Some(format!("{}: {e}", paths[i].display())),
                    Ok(h) => match c.get(h) {
                        Some(v) => {
                            features[i * dim..(i + 1) * dim].copy_from_slice(&v);
                            cached += 1;
                        }
                        None => todo.push(i),
                    },
                }
            }
        }
    }
    let mut done = n - todo.len();
    progress(done, n);
    // 2. decode in a background thread, run the model here
    let pre = backbone.preprocess();
    let start = Instant::now();
    let computed = todo.len();
    let mut cache_warning: Option<String> = None;
    // each decoded image comes with the hash of the very bytes it was decoded from: a file
    // replaced since its hash was taken above is stored under its new content's hash
    let decode = |i: usize| -> Decoded {
        let r = match (transform, cache) {
            (Some(t), _) => crate::data::decode_file(&paths[i]).map(|img| (t(i, &img), None)),
            (None, Some(_)) => crate::data::decode::decode_file_hashed(&paths[i])
                .map(|(img, h)| (pre.apply(&img), Some(h))),
            (None, None) => pre.load(&paths[i]).map(|img| (img, None)),
        };
        r.map_err(|e| e.to_string())
    };
    let mut forward = |x: burn::tensor::Tensor<4>| -> Result<(Vec<f32>, usize)> {
        Ok((crate::tensor::to_vec(backbone.features(x))?, dim))
    };
    stream(
        device,
        &todo,
        batch,
        &decode,
        &mut forward,
        &mut |b: Batch<'_>| {
            for (i, r) in &b.items {
                match r {
                    Ok((row, hash)) => {
                        let row = b.row(*row);
                        features[i * dim..(i + 1) * dim].copy_from_slice(row);
                        if let (Some(c), Some(h), None) = (cache, hash, &cache_warning) {
                            // a cache that cannot be written is no reason to lose the run
                            if let Err(e) = c.put(h, row) {
                                cache_warning = Some(format!(
                                "the feature cache {} could not be written ({e}); going on without it",
                                c.dir.display()
                            ));
                            }
                        }
                    }
                    Err(e) => errors[*i] = Some(e.clone()),
                }
            }
            done += b.items.len();
            progress(done.min(n), n);
            Ok(())
        },
    )?;
    progress(n, n);
    let secs = start.elapsed().as_secs_f64();
    Ok(Extracted {
        features,
        dim,
        errors,
        cached,
        images_per_s: if secs > 0.0 {
            computed as f64 / secs
        } else {
            0.0
        },
        cache_warning,
    })
}
