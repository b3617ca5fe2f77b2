//! TIFFs the image crate's conversion does not take, read with the tiff crate directly and
//! turned into bytes as Pillow 13 turns them (`convert("RGB")`): BigTIFF, 1/2/4-bit grey
//! (Pillow's `L;2`, `L;4`: each value scaled to 0–255 by `v·255/max`; white-is-zero
//! inverted; fill order 2 bit-reversed), signed 8-bit grey (Pillow reads the bytes as they
//! are), CMYK (Pillow's conversion), YCbCr (JFIF's conversion; with JPEG compression the
//! tiff crate's JPEG decoder is not libjpeg, so pixels may differ by a few levels). What
//! neither reads (palette, CIELab, 12-bit, signed 16/32-bit, separate planes,
//! LZMA/Fax3/Huffman compression) is refused with the tiff crate's reason.

use image::RgbImage;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::ColorType;

use super::decode::DecodeFailure;

/// A TIFF or BigTIFF header, either byte order.
pub(crate) fn looks_like_tiff(b: &[u8]) -> bool {
    b.starts_with(b"II*\0")
        || b.starts_with(b"MM\0*")
        || b.starts_with(b"II+\0")
        || b.starts_with(b"MM\0+")
}

/// What the first directory of a TIFF says that decides how it is decoded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Probe {
    /// 8- or 16-bit CMYK (converted here with Pillow's formula rather than by the image
    /// crate, which rounds differently).
    pub cmyk: bool,
    /// Colours stored multiplied by alpha (ExtraSamples = 1, associated alpha), which Pillow
    /// divides out.
    pub associated_alpha: bool,
}

/// Read a TIFF's first directory once (nothing of an unreadable one).
pub(crate) fn probe(bytes: &[u8]) -> Probe {
    let Ok(mut d) = Decoder::new(std::io::Cursor::new(bytes)) else {
        return Probe::default();
    };
    Probe {
        cmyk: d
            .colortype()
            .is_ok_and(|c| matches!(c, ColorType::CMYK(8 | 16))),
        associated_alpha: d
            .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
            .ok()
            .flatten()
            .is_some_and(|v| v.first() == Some(&1)),
    }
}

fn invalid(reason: impl std::fmt::Display) -> DecodeFailure {
    DecodeFailure::Invalid(format!("TIFF: {reason}"))
}

/// Decode the first image of a TIFF.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeFailure> {
    let mut limits = Limits::default();
    // the decoded buffer is bounded by the pixel limit (at most 8 bytes a sample, 4 samples)
    limits.decoding_buffer_size = (max_pixels.saturating_mul(32)).min(usize::MAX as u64) as usize;
    let mut d = Decoder::new(std::io::Cursor::new(bytes))
        .map_err(invalid)?
        .with_limits(limits);
    let (w, h) = d.dimensions().map_err(invalid)?;
    super::decode::check_size(w as u64, h as u64, max_pixels)?;
    let colour = d.colortype().map_err(invalid)?;
    let tag = |d: &mut Decoder<_>, t: Tag| d.find_tag_unsigned::<u32>(t).ok().flatten();
    let planar = tag(&mut d, Tag::PlanarConfiguration).unwrap_or(1);
    if planar == 2 && !matches!(colour, ColorType::Gray(_)) {
        return Err(invalid("separate colour planes are not read yet"));
    }
    let reversed = tag(&mut d, Tag::FillOrder) == Some(2);
    let _big = super::decode::big_guard(w as u64 * h as u64);
    let data = d.read_image().map_err(invalid)?;
    let (w, h) = (w as usize, h as usize);
    let rgb: Vec<u8> = match (colour, data) {
        (ColorType::Gray(bits @ (1 | 2 | 4)), DecodingResult::U8(packed)) => {
            let bits = bits as usize;
            let max = (1u16 << bits) - 1;
            let row = (w * bits).div_ceil(8);
            if packed.len() < row * h {
                return Err(invalid("the image data is shorter than its size"));
            }
            let mut out = Vec::with_capacity(w * h * 3);
            for r in 0..h {
                let line = &packed[r * row..(r + 1) * row];
                for x in 0..w {
                    let mut byte = line[x * bits / 8];
                    if reversed {
                        byte = byte.reverse_bits();
                    }
                    // (white-is-zero samples come inverted from the tiff crate already)
                    let v = (byte >> (8 - bits - (x * bits) % 8)) as u16 & max;
                    out.extend([(v * 255 / max) as u8; 3]);
                }
            }
            out
        }
        (ColorType::Gray(8), DecodingResult::I8(v)) => {
            v.iter().flat_map(|&s| [s as u8; 3]).collect()
        }
        (ColorType::Gray(8), DecodingResult::U8(v)) => v.iter().flat_map(|&s| [s; 3]).collect(),
        (ColorType::RGB(8), DecodingResult::U8(v)) => v,
        // the tiff crate gives the samples as stored: JFIF's YCbCr → RGB, rounded
        (ColorType::YCbCr(8), DecodingResult::U8(v)) => v
            .chunks_exact(3)
            .flat_map(|p| {
                let (y, cb, cr) = (p[0] as f32, p[1] as f32 - 128.0, p[2] as f32 - 128.0);
                [
                    y + 1.402 * cr,
                    y - 0.344_136 * cb - 0.714_136 * cr,
                    y + 1.772 * cb,
                ]
                .map(|c| c.round().clamp(0.0, 255.0) as u8)
            })
            .collect(),
        (ColorType::RGBA(8), DecodingResult::U8(v)) => {
            v.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()
        }
        (ColorType::CMYK(8), DecodingResult::U8(v)) => v
            .chunks_exact(4)
            .flat_map(|p| super::decode::cmyk_to_rgb([p[0], p[1], p[2], p[3]]))
            .collect(),
        // 16-bit samples: the high byte, as Pillow's CMYK;16 unpacking
        (ColorType::CMYK(16), DecodingResult::U16(v)) => v
            .chunks_exact(4)
            .flat_map(|p| {
                super::decode::cmyk_to_rgb([p[0], p[1], p[2], p[3]].map(|s| (s >> 8) as u8))
            })
            .collect(),
        (c, _) => return Err(invalid(format!("{c:?} samples are not read"))),
    };
    if rgb.len() != w * h * 3 {
        return Err(invalid("the image data does not match its size"));
    }
    RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| invalid("size mismatch"))
}
