//! Decoding image files to RGB u8, recognising the format by content (a PNG named `.jpg`
//! still loads). JPEG (baseline, progressive, CMYK), PNG (8/16-bit, grey, alpha, palette),
//! GIF (first frame), BMP and DIB (own decoder, as Pillow reads them), WebP, TIFF (1–16-bit,
//! float, BigTIFF, YCbCr), PPM/PGM/PBM, grey PFM, TGA and ICO (the largest image).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use image::{ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS`: images declaring more pixels are refused unless the
/// limit is raised ([`set_max_pixels`], `WHISKER_MAX_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Files larger than this are not read as images (1 GiB: far more than any photo).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Images above this many pixels are decoded one at a time, so that parallel decoding of
/// several huge images cannot multiply the memory peak.
const BIG_IMAGE_PIXELS: u64 = 16 << 20;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(0);
static BIG_DECODE: Mutex<()> = Mutex::new(());

/// The largest number of pixels an image may declare: [`set_max_pixels`], else the
/// environment variable `WHISKER_MAX_PIXELS`, else [`DEFAULT_MAX_PIXELS`].
pub fn max_pixels() -> u64 {
    match MAX_PIXELS.load(Ordering::Relaxed) {
        0 => std::env::var("WHISKER_MAX_PIXELS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_MAX_PIXELS),
        n => n,
    }
}

/// Set the pixel limit for this process (0 restores the default).
pub fn set_max_pixels(n: u64) {
    MAX_PIXELS.store(n, Ordering::Relaxed);
}

/// Why an image could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeFailure {
    /// Corrupt, truncated, unsupported: the reason.
    Invalid(String),
    /// The image declares more pixels than the limit.
    TooLarge { width: u64, height: u64, limit: u64 },
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeFailure::Invalid(r) => f.write_str(r),
            DecodeFailure::TooLarge {
                width,
                height,
                limit,
            } => write!(
                f,
                "the image is {width}×{height} = {} pixels, more than the limit of {limit} (a decompression bomb?)",
                width * height
            ),
        }
    }
}

impl From<String> for DecodeFailure {
    fn from(s: String) -> Self {
        DecodeFailure::Invalid(s)
    }
}

impl From<&str> for DecodeFailure {
    fn from(s: &str) -> Self {
        DecodeFailure::Invalid(s.to_string())
    }
}

/// Decode an image file to RGB u8. Errors name the file and say why. Only regular files are
/// read (a FIFO or device would block or never end), at most [`MAX_FILE_BYTES`], and images
/// declaring more than [`max_pixels`] are refused before any pixel memory is allocated.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    decode_read_bytes(path, &read_file(path)?)
}

/// Read an image file once and decode those very bytes: the image and the sha256 (hex) of
/// the bytes it was decoded from. Whatever is keyed by a file's content (the feature cache)
/// must use this: hashing a file and then reading it again to decode it lets a file replaced
/// in between store one image's result under another image's hash.
pub fn decode_file_hashed(path: &Path) -> Result<(RgbImage, String)> {
    use sha2::{Digest, Sha256};
    let bytes = read_file(path)?;
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok((decode_read_bytes(path, &bytes)?, hash))
}

/// [`read_image_file`] with errors that name the file.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_image_file(path).map_err(|f| match f {
        ReadFailure::Io(e) => Error::io(path, e),
        ReadFailure::Refused(reason) => Error::Decode {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// Decode the bytes read from `path` (errors name it).
fn decode_read_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    decode_bytes_limited(bytes, max_pixels()).map_err(|f| match f {
        DecodeFailure::Invalid(reason) => Error::Decode {
            path: path.to_path_buf(),
            reason,
        },
        DecodeFailure::TooLarge {
            width,
            height,
            limit,
        } => Error::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            pixels: width * height,
            limit,
        },
    })
}

/// Why the bytes of an image file were not read.
#[derive(Debug)]
pub enum ReadFailure {
    Io(std::io::Error),
    /// Not a regular file, or too large: the reason.
    Refused(String),
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Io(e) => write!(f, "{e}"),
            ReadFailure::Refused(r) => write!(f, "cannot decode image: {r}"),
        }
    }
}

/// The bytes of an image file: only a regular file (a FIFO or device would block or never
/// end), at most [`MAX_FILE_BYTES`]. Every reader of image files goes through this.
pub fn read_image_file(path: &Path) -> std::result::Result<Vec<u8>, ReadFailure> {
    // the opened file's own metadata: a path checked first and opened after could be
    // swapped for a FIFO in between
    let f = crate::io::open_nonblocking(path).map_err(ReadFailure::Io)?;
    let meta = f.metadata().map_err(ReadFailure::Io)?;
    if !meta.is_file() {
        return Err(ReadFailure::Refused(if meta.is_dir() {
            "it is a directory".into()
        } else {
            "not a regular file (a FIFO, socket or device)".into()
        }));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadFailure::Refused(format!(
            "the file is {} bytes; whisker reads images of at most {MAX_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    Ok(bytes)
}

/// Decode image bytes to RGB u8 under the process's pixel limit; the error is a
/// human-readable reason.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    decode_bytes_limited(bytes, max_pixels()).map_err(|f| f.to_string())
}

pub(super) fn check_size(
    width: u64,
    height: u64,
    limit: u64,
) -> std::result::Result<(), DecodeFailure> {
    if width == 0 || height == 0 {
        return Err(DecodeFailure::Invalid(format!(
            "the image declares a size of {width}×{height}"
        )));
    }
    if width.saturating_mul(height) > limit {
        return Err(DecodeFailure::TooLarge {
            width,
            height,
            limit,
        });
    }
    Ok(())
}

/// Hold the big-image lock while decoding an image of `pixels` pixels, if it is big.
pub(super) fn big_guard(pixels: u64) -> Option<std::sync::MutexGuard<'static, ()>> {
    (pixels > BIG_IMAGE_PIXELS).then(|| BIG_DECODE.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Decode image bytes to RGB u8, refusing images that declare more than `max_pixels` pixels
/// before decoding them.
pub fn decode_bytes_limited(
    bytes: &[u8],
    max_pixels: u64,
) -> std::result::Result<RgbImage, DecodeFailure> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() >= 3 && bytes[..3] == [0xFF, 0xD8, 0xFF] {
        check_jpeg_work(bytes)?;
        if let Some(img) = decode_jpeg_libjpeg(bytes, max_pixels)? {
            return Ok(img);
        }
    }
    if bytes.starts_with(b"GIF8") {
        return decode_gif(bytes, max_pixels);
    }
    if bytes.starts_with(b"BM") || super::bmp::looks_like_dib(bytes) {
        let kind = if bytes.starts_with(b"BM") {
            super::bmp::Kind::File
        } else {
            super::bmp::Kind::Dib
        };
        return super::bmp::decode(bytes, kind, max_pixels);
    }
    if super::pfm::looks_like_pfm(bytes) {
        return super::pfm::decode(bytes, max_pixels);
    }
    if bytes.starts_with(&[0, 0, 1, 0]) {
        return super::bmp::decode_ico(bytes, max_pixels);
    }
    // the decoders of the image crate are not all hardened (a hostile TIFF made one panic):
    // a panic in any of them is a refusal of the file, never the end of the process
    let guarded = |f: &dyn Fn() -> std::result::Result<RgbImage, DecodeFailure>| match catch_quietly(
        std::panic::AssertUnwindSafe(f),
    ) {
        Ok(r) => r,
        Err(p) => Err(DecodeFailure::Invalid(format!(
            "the decoder failed on corrupt data ({})",
            panic_text(p.as_ref())
        ))),
    };
    // a TIFF's first directory is read once: CMYK goes through the tiff crate (Pillow's
    // conversion), associated alpha is divided out after the image crate's decode
    let tiff = super::tiff::looks_like_tiff(bytes)
        .then(|| catch_quietly(|| super::tiff::probe(bytes)).unwrap_or_default());
    if tiff.is_some_and(|t| t.cmyk) {
        return guarded(&|| super::tiff::decode(bytes, max_pixels));
    }
    let associated_alpha = tiff.is_some_and(|t| t.associated_alpha);
    match guarded(&|| decode_generic(bytes, max_pixels, associated_alpha)) {
        // TIFFs the image crate does not convert (BigTIFF, 1/2/4-bit and signed grey, YCbCr
        // JPEG): through the tiff crate, as Pillow converts them
        Err(DecodeFailure::Invalid(_)) if tiff.is_some() => {
            guarded(&|| super::tiff::decode(bytes, max_pixels))
        }
        r => r,
    }
}

/// The first frame of a GIF as Pillow gives it: the logical screen filled with the frame's
/// transparent index (else index 0), the frame's indices drawn at its place (transparent
/// ones too), then every index mapped through the frame's colour table, else the global
/// one; a GIF with neither is grey (index i → (i, i, i), Pillow's mode L). Transparency is
/// ignored, as `convert("RGB")` ignores it.
fn decode_gif(bytes: &[u8], max_pixels: u64) -> std::result::Result<RgbImage, DecodeFailure> {
    let gif_err = |e: gif::DecodingError| DecodeFailure::Invalid(format!("GIF: {e}"));
    // no global colour table (flag 0x80 of byte 10): the gif crate refuses a frame without a
    // local one, Pillow reads it as grey. A grey ramp as the global table is that exactly.
    let with_ramp;
    let bytes = if bytes.len() >= 13 && bytes[10] & 0x80 == 0 {
        let mut b = Vec::with_capacity(bytes.len() + 768);
        b.extend_from_slice(&bytes[..13]);
        b[10] |= 0x87;
        b.extend((0..=255u8).flat_map(|i| [i, i, i]));
        b.extend_from_slice(&bytes[13..]);
        with_ramp = b;
        &with_ramp[..]
    } else {
        bytes
    };
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    // a frame is one byte a pixel: the pixel limit bounds it (the crate's own 50 MB would
    // refuse a legitimate 8000×8000 GIF)
    if let Some(limit) = std::num::NonZeroU64::new(max_pixels) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(limit));
    }
    let mut d = opts
        .read_info(std::io::Cursor::new(bytes))
        .map_err(gif_err)?;
    let (w, h) = (d.width() as usize, d.height() as usize);
    check_size(w as u64, h as u64, max_pixels)?;
    let _big = big_guard((w * h) as u64);
    let global = d.global_palette().map(<[u8]>::to_vec);
    let frame = d
        .read_next_frame()
        .map_err(gif_err)?
        .ok_or_else(|| DecodeFailure::Invalid("GIF: no image in the file".into()))?;
    let mut canvas = vec![frame.transparent.unwrap_or(0); w * h];
    let (fl, ft, fw) = (
        frame.left as usize,
        frame.top as usize,
        frame.width as usize,
    );
    for (r, row) in frame.buffer.chunks_exact(fw.max(1)).enumerate() {
        let y = ft + r;
        if y >= h || fl >= w {
            continue;
        }
        let n = fw.min(w - fl);
        canvas[y * w + fl..y * w + fl + n].copy_from_slice(&row[..n]);
    }
    let palette = frame.palette.clone().or(global);
    let rgb: Vec<u8> = match &palette {
        Some(p) => canvas
            .iter()
            .flat_map(|&i| {
                let k = i as usize * 3;
                match p.get(k..k + 3) {
                    Some(c) => [c[0], c[1], c[2]],
                    // an index past the table: Pillow's palette is padded with black
                    None => [0, 0, 0],
                }
            })
            .collect(),
        None => canvas.iter().flat_map(|&i| [i, i, i]).collect(),
    };
    RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| DecodeFailure::Invalid("GIF: size mismatch".into()))
}

/// The message a caught panic carried.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "corrupt data".into())
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` for a decoder: a panic in it is a refused file, reported as such by the
/// caller, so the panic hook's message (and backtrace) is not printed for it; panics
/// elsewhere are reported as before.
fn catch_quietly<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(f);
    QUIET_PANICS.with(|q| q.set(false));
    r
}

/// TGA has no signature: a header whose fields all hold values the format allows (what
/// Pillow's TGA plugin accepts) is taken as one, else the file is not an image.
pub fn looks_like_tga(b: &[u8]) -> bool {
    b.len() > 18
        && b[1] <= 1
        && matches!(b[2], 1 | 2 | 3 | 9 | 10 | 11)
        && matches!(b[16], 1 | 8 | 15 | 16 | 24 | 32)
        && u16::from_le_bytes([b[12], b[13]]) > 0
        && u16::from_le_bytes([b[14], b[15]]) > 0
}

/// Every format but JPEG (and CMYK JPEGs): through the image crate, with its size checked
/// before any pixel memory is allocated.
/// `associated_alpha`: the image's colours are stored multiplied by its alpha (a TIFF's
/// ExtraSamples = 1), to be divided out.
fn decode_generic(
    bytes: &[u8],
    max_pixels: u64,
    associated_alpha: bool,
) -> std::result::Result<RgbImage, DecodeFailure> {
    let reader = || -> std::result::Result<ImageReader<std::io::Cursor<&[u8]>>, DecodeFailure> {
        let mut r = ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        if r.format().is_none() && looks_like_tga(bytes) {
            r.set_format(image::ImageFormat::Tga);
        }
        Ok(r)
    };
    let probe = reader()?;
    let Some(format) = probe.format() else {
        return Err(
            "not a recognised image format (JPEG, PNG, GIF, BMP/DIB, WebP, TIFF, PPM/PGM/PBM/PFM, TGA or ICO)"
                .into(),
        );
    };
    let (w, h) = probe
        .into_dimensions()
        .map_err(|e| format!("{format:?}: {e}"))?;
    check_size(w as u64, h as u64, max_pixels)?;
    let pixels = w as u64 * h as u64;
    let _big = big_guard(pixels);
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // the largest decoded buffer: 32-bit float RGBA (16 bytes a pixel), plus the decoder's own
    limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| format!("{format:?}: {e}"))?;
    if associated_alpha {
        return Ok(unpremultiplied(img));
    }
    Ok(to_rgb8(img))
}

/// Colours stored multiplied by their alpha (a TIFF's associated alpha), as Pillow unpacks
/// them (`RGBa`, `RGBa;16N`): each 8-bit sample (a 16-bit one's high byte) × 255 / alpha,
/// truncated and clipped; a transparent pixel black; then the alpha dropped.
fn unpremultiplied(img: image::DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let rgba: Vec<[u8; 4]> = match img {
        image::DynamicImage::ImageRgba16(i) => i
            .as_raw()
            .chunks_exact(4)
            .map(|p| [p[0], p[1], p[2], p[3]].map(|v| (v >> 8) as u8))
            .collect(),
        other => other.to_rgba8().pixels().map(|p| p.0).collect(),
    };
    let raw: Vec<u8> = rgba
        .iter()
        .flat_map(|&[r, g, b, a]| match a {
            0 => [0; 3],
            255 => [r, g, b],
            a => [r, g, b].map(|c| (c as u32 * 255 / a as u32).min(255) as u8),
        })
        .collect();
    RgbImage::from_raw(w, h, raw).expect("size matches")
}

/// The most scans a JPEG may have: real progressive files have about ten (libjpeg's
/// default script 10, mozjpeg's optimised ones up to ~20).
pub const MAX_JPEG_SCANS: usize = 256;

/// The most scan-pixels (scans × pixels) a JPEG may cost: every scan of a progressive JPEG
/// passes over the whole image, so a small file of many empty scans over a large declared
/// size is seconds to minutes of work (libjpeg-turbo bounds scans for the same reason).
/// 2³³ allows ~95 scans of a 90-megapixel image, far more than any encoder writes.
pub const MAX_JPEG_SCAN_PIXELS: u64 = 1 << 33;

/// The scans of a JPEG and its declared size (from its first start-of-frame), read from the
/// marker structure without decoding: entropy-coded data is skipped to the next marker.
pub fn jpeg_scans(b: &[u8]) -> (usize, Option<(u64, u64)>) {
    let (mut scans, mut size) = (0usize, None);
    for (m, seg) in jpeg_segments(b) {
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
        if (0xC0..=0xCF).contains(&m) && ![0xC4, 0xC8, 0xCC].contains(&m) && size.is_none() {
            if let Some(d) = seg.get(5..9) {
                let h = u16::from_be_bytes([d[0], d[1]]) as u64;
                let w = u16::from_be_bytes([d[2], d[3]]) as u64;
                size = Some((w, h));
            }
        }
        scans += usize::from(m == 0xDA);
    }
    (scans, size)
}

/// The marker segments of a JPEG in file order, each as its marker and the file from the
/// marker on: fill bytes, stray bytes, restart and standalone markers are stepped over, a
/// scan's entropy-coded data is skipped to the next marker that is not a stuffed 0xFF00 or a
/// restart; the walk ends at EOI or the file's end. Reading this never decodes anything.
fn jpeg_segments(b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut i = 2usize;
    std::iter::from_fn(move || {
        while i + 1 < b.len() {
            if b[i] != 0xFF {
                i += 1;
                continue;
            }
            let m = b[i + 1];
            match m {
                0xFF => {
                    i += 1;
                    continue;
                }
                0xD9 => break,
                0x01 | 0xD0..=0xD7 => {
                    i += 2;
                    continue;
                }
                _ => {}
            }
            if i + 3 >= b.len() {
                break;
            }
            let start = i;
            i += 2 + u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            if m == 0xDA {
                while i + 1 < b.len() {
                    let n = b[i + 1];
                    if b[i] == 0xFF && n != 0x00 && n != 0xFF && !(0xD0..=0xD7).contains(&n) {
                        break;
                    }
                    i += 1;
                }
            }
            return Some((m, &b[start..]));
        }
        i = b.len();
        None
    })
}

/// Refuse a JPEG whose decoding would cost far more than its pixels: too many scans, or
/// too many scans over a large image (a scan bomb), before any decoder runs.
fn check_jpeg_work(bytes: &[u8]) -> std::result::Result<(), DecodeFailure> {
    let (scans, size) = jpeg_scans(bytes);
    let pixels = size.map(|(w, h)| w * h).unwrap_or(0);
    if scans > MAX_JPEG_SCANS || (scans as u64).saturating_mul(pixels) > MAX_JPEG_SCAN_PIXELS {
        return Err(DecodeFailure::Invalid(format!(
            "JPEG: {scans} scans over {pixels} pixels: far more decoding work than any real JPEG needs (a scan bomb?); refused"
        )));
    }
    Ok(())
}

/// Decode a JPEG with libjpeg-turbo's decoder (through mozjpeg): integer IDCT and fancy
/// upsampling, the same pixels Pillow gives. `Ok(None)` for colour spaces it does not convert
/// to RGB (CMYK / YCCK), which the pure-Rust decoder handles instead.
fn decode_jpeg_libjpeg(
    bytes: &[u8],
    max_pixels: u64,
) -> std::result::Result<Option<RgbImage>, DecodeFailure> {
    use mozjpeg::{ColorSpace, Decompress};
    // libjpeg only warns on a truncated stream and fills the rest with grey; Pillow refuses
    // such files ("image file is truncated"), and so do we: the end-of-image marker must
    // follow the last start-of-scan.
    let find_last = |m: [u8; 2]| bytes.windows(2).rposition(|w| w == m);
    match (find_last([0xFF, 0xDA]), find_last([0xFF, 0xD9])) {
        (Some(sos), Some(eoi)) if eoi > sos => {}
        (None, _) => return Err("JPEG: no image data (no start-of-scan marker)".into()),
        _ => {
            return Err("JPEG: truncated file (no end-of-image marker after the image data)".into())
        }
    }
    let res = catch_quietly(|| -> std::result::Result<Option<RgbImage>, DecodeFailure> {
        let d = Decompress::new_mem(bytes).map_err(|e| format!("JPEG: {e}"))?;
        check_size(d.width() as u64, d.height() as u64, max_pixels)?;
        let _big = big_guard(d.width() as u64 * d.height() as u64);
        if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
            // as Pillow: libjpeg's CMYK (YCCK converted by libjpeg), inverted when an Adobe
            // segment says so, then Pillow's CMYK → RGB
            let mut started = d
                .to_colorspace(ColorSpace::JCS_CMYK)
                .map_err(|e| format!("JPEG: {e}"))?;
            let (w, h) = (started.width() as u32, started.height() as u32);
            let cmyk: Vec<u8> = started
                .read_scanlines::<u8>()
                .map_err(|e| format!("JPEG: {e}"))?;
            started.finish().map_err(|e| format!("JPEG: {e}"))?;
            let inverted = jpeg_has_adobe_segment(bytes);
            let rgb: Vec<u8> = cmyk
                .chunks_exact(4)
                .flat_map(|p| {
                    let p = [p[0], p[1], p[2], p[3]];
                    cmyk_to_rgb(if inverted { p.map(|v| 255 - v) } else { p })
                })
                .collect();
            return RgbImage::from_raw(w, h, rgb)
                .map(Some)
                .ok_or_else(|| "JPEG: decoded size does not match".into());
        }
        let mut started = d.rgb().map_err(|e| format!("JPEG: {e}"))?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let data: Vec<u8> = started
            .read_scanlines::<u8>()
            .map_err(|e| format!("JPEG: {e}"))?;
        started.finish().map_err(|e| format!("JPEG: {e}"))?;
        RgbImage::from_raw(w, h, data)
            .map(Some)
            .ok_or_else(|| "JPEG: decoded size does not match".into())
    });
    match res {
        Ok(r) => r,
        Err(p) => Err(DecodeFailure::Invalid(format!(
            "JPEG: {}",
            panic_text(p.as_ref())
        ))),
    }
}

/// Whether a JPEG has an Adobe APP14 segment before its first scan (its CMYK is stored
/// inverted, as Photoshop writes it).
fn jpeg_has_adobe_segment(b: &[u8]) -> bool {
    jpeg_segments(b)
        .take_while(|&(m, _)| m != 0xDA)
        .any(|(m, seg)| m == 0xEE && seg.get(4..9) == Some(&b"Adobe"[..]))
}

/// Pillow's CMYK → RGB: each of C, M, Y taken from 255 − K, with Pillow's rounding of
/// `v·(255 − k)/255` (exact against Pillow on 20000 random colours).
pub(super) fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - k as u32;
    [c, m, y].map(|v| {
        let t = v as u32 * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    })
}

fn hi_bytes(w: u32, h: u32, raw: &[u16], stride: usize, colours: usize) -> RgbImage {
    let data: Vec<u8> = raw
        .chunks_exact(stride)
        .flat_map(|p| {
            let px = |c: usize| (p[c.min(colours - 1)] >> 8) as u8;
            [px(0), px(1), px(2)]
        })
        .collect();
    RgbImage::from_raw(w, h, data).expect("size matches")
}

/// Convert any decoded image to RGB u8 the way Pillow's `convert("RGB")` does for the
/// common cases: 16-bit samples keep their high byte (rounded), alpha is dropped (not
/// composited), grey is replicated.
fn to_rgb8(img: image::DynamicImage) -> RgbImage {
    use image::DynamicImage as D;
    match img {
        D::ImageRgb8(i) => i,
        D::ImageRgba8(i) => {
            let (w, h) = i.dimensions();
            let raw: Vec<u8> = i
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            RgbImage::from_raw(w, h, raw).expect("size matches")
        }
        // 16-bit samples: the high byte (what Pillow does for 16-bit RGB).
        D::ImageRgb16(i) => hi_bytes(i.width(), i.height(), i.as_raw(), 3, 3),
        D::ImageRgba16(i) => hi_bytes(i.width(), i.height(), i.as_raw(), 4, 3),
        D::ImageLuma16(i) => hi_bytes(i.width(), i.height(), i.as_raw(), 1, 1),
        D::ImageLumaA16(i) => hi_bytes(i.width(), i.height(), i.as_raw(), 2, 1),
        other => other.to_rgb8(),
    }
}
