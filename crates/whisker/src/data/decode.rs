//! Decoding image files to RGB u8, recognising the format by content (a PNG named `.jpg`
//! still loads). JPEG (baseline, progressive, CMYK), PNG (8/16-bit, grey, alpha, palette),
//! GIF (first frame), BMP and WebP.

use std::path::Path;

use image::{ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Decode an image file to RGB u8. Errors name the file and say why.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes).map_err(|reason| Error::Decode {
        path: path.to_path_buf(),
        reason,
    })
}

/// Decode image bytes to RGB u8; the error is a human-readable reason.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() >= 3 && bytes[..3] == [0xFF, 0xD8, 0xFF] {
        if let Some(img) = decode_jpeg_libjpeg(bytes)? {
            return Ok(img);
        }
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let Some(format) = reader.format() else {
        return Err("not a recognised image format (JPEG, PNG, GIF, BMP or WebP)".into());
    };
    let mut reader = reader;
    reader.no_limits();
    let img = reader.decode().map_err(|e| format!("{format:?}: {e}"))?;
    Ok(to_rgb8(img))
}

/// Decode a JPEG with libjpeg-turbo's decoder (through mozjpeg): integer IDCT and fancy
/// upsampling, the same pixels Pillow gives. `Ok(None)` for colour spaces it does not convert
/// to RGB (CMYK / YCCK), which the pure-Rust decoder handles instead.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> std::result::Result<Option<RgbImage>, String> {
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
    let res = std::panic::catch_unwind(|| -> std::result::Result<Option<RgbImage>, String> {
        let d = Decompress::new_mem(bytes).map_err(|e| format!("JPEG: {e}"))?;
        if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut started = d.rgb().map_err(|e| format!("JPEG: {e}"))?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let data: Vec<u8> = started
            .read_scanlines::<u8>()
            .map_err(|e| format!("JPEG: {e}"))?;
        started.finish().map_err(|e| format!("JPEG: {e}"))?;
        RgbImage::from_raw(w, h, data)
            .map(Some)
            .ok_or_else(|| "JPEG: decoded size does not match".to_string())
    });
    match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "corrupt data".into());
            Err(format!("JPEG: {msg}"))
        }
    }
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
