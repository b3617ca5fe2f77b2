//! Windows bitmaps (BMP files and headerless DIBs) decoded as Pillow 13's BMP plugin decodes
//! them, so that `convert("RGB")` and whisker give the same pixels on the files real tools
//! write and on the odd ones (issue 25, item 5): every header (OS/2 v1 and v2, Windows v3 to
//! v5), top-down and bottom-up rows, 1/4/8-bit palettes (a palette past the header when the
//! file's data offset points at the palette, indices past the palette black), grey palettes
//! read as grey, RLE8 and RLE4 with deltas, end-of-line and absolute runs, 16-bit 5-5-5 and
//! 5-6-5 (scaled by `v·255/max`, truncated), 24-bit, 32-bit with the bitfield layouts Pillow
//! knows. The planes field is ignored, as Pillow ignores it. What Pillow refuses (a truncated
//! raster, RLE data that ends before the image is complete, a palette of more than 256
//! colours, an unknown header, depth, compression or bitfield layout) is refused with the
//! reason.

use image::RgbImage;

use super::decode::DecodeFailure;

/// The header sizes Pillow reads: OS/2 v1 (12), Windows v3 (40), v2/v3 extensions (52, 56),
/// OS/2 v2 (64), Windows v4 (108), v5 (124).
const HEADER_SIZES: [u32; 7] = [12, 40, 52, 56, 64, 108, 124];

const RAW: u32 = 0;
const RLE8: u32 = 1;
const RLE4: u32 = 2;
const BITFIELDS: u32 = 3;

/// A headerless DIB (a Windows clipboard bitmap): its first four bytes are one of the
/// bitmap header sizes, as Pillow's DIB plugin recognises it.
pub(crate) fn looks_like_dib(b: &[u8]) -> bool {
    b.len() >= 16
        && HEADER_SIZES.contains(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        && !b.starts_with(b"BM")
}

fn u16_at(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u32
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn invalid(reason: impl Into<String>) -> DecodeFailure {
    DecodeFailure::Invalid(format!("BMP: {}", reason.into()))
}

/// How the pixel values become RGB.
enum Colours {
    /// Indices through a palette of RGB triples; an index past it is black.
    Palette(Vec<[u8; 3]>),
    /// A palette of 0 and 255 only: Pillow's mode "1" (each value nonzero → 255).
    Bilevel,
    /// A grey ramp palette (entry i = (i, i, i)): Pillow's mode "L", the index is the grey.
    Grey,
    /// Direct colour: for each of R, G, B its mask in the little-endian pixel word.
    Masks([u32; 3]),
}

/// What a bitmap's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `.bmp` file: the 14-byte file header first.
    File,
    /// A DIB: the bitmap header first, the pixels right after the palette.
    Dib,
    /// A DIB inside an icon: its height counts the colour image and the AND mask below it;
    /// the image is the upper half (the mask is transparency, which RGB drops).
    IconDib,
}

/// Decode a bitmap.
pub(crate) fn decode(bytes: &[u8], kind: Kind, max_pixels: u64) -> Result<RgbImage, DecodeFailure> {
    let dib = kind != Kind::File;
    let (offset, at) = if dib {
        (0usize, 0usize)
    } else {
        if bytes.len() < 18 || !bytes.starts_with(b"BM") {
            return Err(invalid("the file is too short for a bitmap header"));
        }
        (u32_at(bytes, 10) as usize, 14usize)
    };
    let header_size = u32_at(bytes, at);
    if !HEADER_SIZES.contains(&header_size) {
        return Err(invalid(format!("unsupported header size {header_size}")));
    }
    let h = bytes
        .get(at + 4..at + header_size as usize)
        .ok_or_else(|| invalid("the file ends inside the bitmap header"))?;
    let mut cursor = at + header_size as usize;
    let (width, height, bits, compression, colours_used, top_down, palette_entry);
    let mut masks = None;
    if header_size == 12 {
        width = u16_at(h, 0) as u64;
        height = u16_at(h, 2) as u64;
        bits = u16_at(h, 6);
        compression = RAW;
        colours_used = 0;
        top_down = false;
        palette_entry = 3usize;
    } else {
        // a negative height (top-down rows) is told by its top byte, as Pillow tells it
        top_down = h[7] == 0xFF;
        width = u32_at(h, 0) as u64;
        height = if top_down {
            (1u64 << 32) - u32_at(h, 4) as u64
        } else {
            u32_at(h, 4) as u64
        };
        bits = u16_at(h, 10);
        compression = u32_at(h, 12);
        colours_used = u32_at(h, 28);
        palette_entry = 4;
        if compression == BITFIELDS {
            masks = Some(if h.len() >= 48 {
                [u32_at(h, 36), u32_at(h, 40), u32_at(h, 44)]
            } else {
                // a 40-byte header: the three masks follow it
                let m = bytes
                    .get(cursor..cursor + 12)
                    .ok_or_else(|| invalid("the file ends inside the bitfield masks"))?;
                cursor += 12;
                [u32_at(m, 0), u32_at(m, 4), u32_at(m, 8)]
            });
        }
    }
    let alpha_mask = if compression == BITFIELDS && h.len() >= 52 {
        u32_at(h, 48)
    } else {
        0
    };
    super::decode::check_size(width, height, max_pixels)?;
    let height = if kind == Kind::IconDib {
        let half = height / 2;
        super::decode::check_size(width, half, max_pixels)?;
        half
    } else {
        height
    };
    let colour_count = if colours_used == 0 {
        1u64 << bits.min(32)
    } else {
        colours_used as u64
    };
    if !matches!(bits, 1 | 4 | 8 | 16 | 24 | 32) {
        return Err(invalid(format!("unsupported pixel depth of {bits} bits")));
    }
    let mut colours = match (compression, bits) {
        (RAW, 16) => Colours::Masks([0x7C00, 0x3E0, 0x1F]),
        (RAW, 24 | 32) => Colours::Masks([0xFF0000, 0xFF00, 0xFF]),
        (RAW | RLE8 | RLE4, 1 | 4 | 8) => Colours::Grey,
        (BITFIELDS, 16 | 24 | 32) => {
            let m = masks.unwrap_or_default();
            let known = match bits {
                32 => [
                    [0xFF0000, 0xFF00, 0xFF, 0],
                    [0xFF000000, 0xFF0000, 0xFF00, 0],
                    [0xFF000000, 0xFF00, 0xFF, 0],
                    [0xFF000000, 0xFF0000, 0xFF00, 0xFF],
                    [0xFF, 0xFF00, 0xFF0000, 0xFF000000],
                    [0xFF0000, 0xFF00, 0xFF, 0xFF000000],
                    [0xFF000000, 0xFF00, 0xFF, 0xFF0000],
                    [0, 0, 0, 0],
                ]
                .contains(&[m[0], m[1], m[2], alpha_mask]),
                24 => m == [0xFF0000, 0xFF00, 0xFF],
                _ => m == [0xF800, 0x7E0, 0x1F] || m == [0x7C00, 0x3E0, 0x1F],
            };
            if !known {
                return Err(invalid(format!(
                    "unsupported {bits}-bit bitfield layout (masks {:#x}, {:#x}, {:#x})",
                    m[0], m[1], m[2]
                )));
            }
            Colours::Masks(if m == [0, 0, 0] {
                [0xFF0000, 0xFF00, 0xFF]
            } else {
                m
            })
        }
        (RLE8 | RLE4, _) => {
            return Err(invalid(format!(
                "run-length compression with {bits}-bit pixels"
            )))
        }
        (c, _) => return Err(invalid(format!("unsupported compression {c}"))),
    };
    // the palette: right after the header (and masks); a data offset pointing at the
    // palette itself means the pixels start after it
    let mut start = offset;
    if bits <= 8 {
        if !(1..=65536).contains(&colour_count) {
            return Err(invalid(format!(
                "unsupported palette size of {colour_count} colours"
            )));
        }
        if !dib && offset == 14 + header_size as usize {
            start += palette_entry * colour_count as usize;
        }
        let raw = &bytes[cursor.min(bytes.len())
            ..(cursor + palette_entry * colour_count as usize).min(bytes.len())];
        cursor += raw.len();
        let entry = |i: usize| raw.get(i * palette_entry..i * palette_entry + 3);
        let grey = if colour_count == 2 {
            entry(0) == Some(&[0, 0, 0][..]) && entry(1) == Some(&[255, 255, 255][..])
        } else {
            (0..colour_count as usize).all(|i| {
                let v = i as u8;
                entry(i) == Some(&[v, v, v][..])
            })
        };
        colours = if grey && colour_count <= 2 {
            Colours::Bilevel
        } else if grey {
            Colours::Grey
        } else if colour_count > 256 {
            return Err(invalid(format!(
                "a palette of {colour_count} colours (at most 256)"
            )));
        } else {
            Colours::Palette(
                raw.chunks_exact(palette_entry)
                    .map(|c| [c[2], c[1], c[0]])
                    .collect(),
            )
        };
    }
    if start == 0 {
        start = cursor;
    }
    let (w, hgt) = (width as usize, height as usize);
    // rows are padded to 4 bytes; the last row's padding need not be in the file
    let stride = ((w * bits as usize + 31) >> 3) & !3;
    let row_bytes = (w * bits as usize).div_ceil(8);
    if !matches!(compression, RLE8 | RLE4)
        && bytes.len().saturating_sub(start) < stride * (hgt - 1) + row_bytes
    {
        return Err(invalid(format!(
            "the file is truncated: {hgt} rows of {stride} bytes from byte {start}, the file has {}",
            bytes.len()
        )));
    }
    let _big = super::decode::big_guard(width * height);
    let mut rgb = vec![0u8; w * hgt * 3];
    // the file's rows, bottom-up unless the height was negative
    let row_of = |r: usize| if top_down { r } else { hgt - 1 - r };
    if matches!(compression, RLE8 | RLE4) {
        let indices = run_length(bytes, start, w, hgt, compression == RLE4)?;
        for (r, row) in indices.chunks_exact(w).enumerate() {
            let out = &mut rgb[row_of(r) * w * 3..][..w * 3];
            for (px, &i) in out.chunks_exact_mut(3).zip(row) {
                px.copy_from_slice(&index_colour(&colours, i as u32));
            }
        }
    } else {
        let data = &bytes[start..];
        for r in 0..hgt {
            let line = &data[r * stride..r * stride + row_bytes];
            let out = &mut rgb[row_of(r) * w * 3..][..w * 3];
            for (x, px) in out.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&pixel(&colours, line, x, bits));
            }
        }
    }
    RgbImage::from_raw(width as u32, height as u32, rgb).ok_or_else(|| invalid("size mismatch"))
}

/// An icon (`.ico`) as Pillow opens it: of the directory's entries the largest (width ×
/// height, a 0 meaning 256), among those the lowest colour depth; a PNG entry is decoded as
/// a PNG, a bitmap entry as a DIB whose real size (not the directory's) is the image's.
pub(crate) fn decode_ico(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeFailure> {
    let bad = |r: String| DecodeFailure::Invalid(format!("ICO: {r}"));
    let count = u16_at(
        bytes
            .get(..6)
            .ok_or_else(|| bad("the file is too short".into()))?,
        4,
    );
    let entries = bytes.get(6..6 + 16 * count as usize).ok_or_else(|| {
        bad(format!(
            "the file ends inside the directory of {count} images"
        ))
    })?;
    // Pillow's choice: the largest square, among those the lowest colour depth, among
    // those the first listed (min_by_key keeps the first of equals)
    let (_, _, offset) = entries
        .chunks_exact(16)
        .map(|e| {
            let side = |b: u8| if b == 0 { 256u64 } else { b as u64 };
            let (colours, bpp) = (e[2] as u32, u16_at(e, 6));
            let depth = if bpp != 0 {
                bpp
            } else if colours > 1 {
                // ⌈log2(colours)⌉ (one colour is depth 0, which Pillow takes for 256)
                32 - (colours - 1).leading_zeros()
            } else {
                256
            };
            (side(e[0]) * side(e[1]), depth, u32_at(e, 12) as usize)
        })
        .min_by_key(|&(square, depth, _)| (std::cmp::Reverse(square), depth))
        .ok_or_else(|| bad("the icon has no images".into()))?;
    let data = bytes
        .get(offset..)
        .filter(|d| d.len() >= 8)
        .ok_or_else(|| {
            bad(format!(
                "the image's offset {offset} is past the file's end"
            ))
        })?;
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        super::decode::decode_bytes_limited(data, max_pixels)
    } else {
        decode(data, Kind::IconDib, max_pixels)
    }
}

/// Pixel `x` of a raw row.
fn pixel(colours: &Colours, line: &[u8], x: usize, bits: u32) -> [u8; 3] {
    match colours {
        // Pillow reads a bilevel image one bit a pixel whatever the declared depth
        Colours::Bilevel => {
            let bit = line[x / 8] >> (7 - x % 8) & 1;
            [bit * 255; 3]
        }
        Colours::Masks(m) => {
            let b = bits as usize / 8;
            let v = line[x * b..x * b + b]
                .iter()
                .rev()
                .fold(0u32, |a, &c| a << 8 | c as u32);
            m.map(|mask| {
                let max = mask >> mask.trailing_zeros();
                ((v & mask) >> mask.trailing_zeros()) as u64 * 255 / max.max(1) as u64
            })
            .map(|c| c as u8)
        }
        _ => {
            let i = match bits {
                1 => line[x / 8] >> (7 - x % 8) & 1,
                4 => line[x / 2] >> (4 * (1 - x % 2)) & 0xF,
                _ => line[x],
            };
            index_colour(colours, i as u32)
        }
    }
}

/// The colour of a palette index.
fn index_colour(colours: &Colours, i: u32) -> [u8; 3] {
    match colours {
        Colours::Palette(p) => p.get(i as usize).copied().unwrap_or([0; 3]),
        Colours::Bilevel => [if i != 0 { 255 } else { 0 }; 3],
        Colours::Grey => [i as u8; 3],
        Colours::Masks(_) => [0; 3],
    }
}

/// Expand RLE8/RLE4 data from `start` to `w·h` palette indices in file row order: encoded
/// runs (clipped at the row's end), absolute runs (word aligned in the file), end of line
/// (the row's rest is index 0), delta (skipped pixels are index 0), end of bitmap. Data that
/// ends before every row is complete is refused, as Pillow refuses it.
fn run_length(
    bytes: &[u8],
    start: usize,
    w: usize,
    h: usize,
    rle4: bool,
) -> Result<Vec<u8>, DecodeFailure> {
    let total = w * h;
    let mut data: Vec<u8> = Vec::with_capacity(total);
    let mut x = 0usize;
    let mut pos = start;
    while data.len() < total {
        let (Some(&count), Some(&value)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            break;
        };
        pos += 2;
        if count > 0 {
            // a run past the row's end is clipped to it
            let n = (count as usize).min(w.saturating_sub(x));
            let kept = n.min(total - data.len());
            if rle4 {
                data.extend((0..kept).map(|k| if k % 2 == 0 { value >> 4 } else { value & 0xF }));
            } else {
                data.extend(std::iter::repeat_n(value, kept));
            }
            x += n;
            continue;
        }
        match value {
            0 => {
                let pad = (w - data.len() % w) % w;
                data.resize(data.len() + pad, 0);
                x = 0;
            }
            1 => break,
            2 => {
                let (Some(&right), Some(&up)) = (bytes.get(pos), bytes.get(pos + 1)) else {
                    break;
                };
                pos += 2;
                let skip = (right as usize + up as usize * w).min(total - data.len());
                data.resize(data.len() + skip, 0);
                x = data.len() % w;
            }
            n => {
                let count = (n as usize).min(total - data.len());
                let byte_count = if rle4 { count.div_ceil(2) } else { count };
                let got = &bytes[pos.min(bytes.len())..(pos + byte_count).min(bytes.len())];
                pos += got.len();
                if rle4 {
                    for (i, &b) in got.iter().enumerate() {
                        data.push(b >> 4);
                        if i * 2 + 1 < count {
                            data.push(b & 0xF);
                        }
                    }
                } else {
                    data.extend_from_slice(got);
                }
                if got.len() < byte_count || data.len() == total {
                    break;
                }
                x += n as usize;
                pos += pos % 2;
            }
        }
    }
    if data.len() < total {
        return Err(invalid(format!(
            "the run-length data ends after {} of {total} pixels",
            data.len()
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    //! Expected values were read off Pillow 13.0.0 (`Image.open(p).convert("RGB")`) on the
    //! same synthetic files.
    use super::*;

    /// A BMP with a 40-byte header: `palette` as BGRX entries, `masks` after the header.
    fn bmp(
        w: i32,
        h: i32,
        bits: u16,
        comp: u32,
        masks: &[u32],
        palette: &[u8],
        px: &[u8],
    ) -> Vec<u8> {
        let off = 14 + 40 + masks.len() * 4 + palette.len();
        let mut b = b"BM".to_vec();
        b.extend(((off + px.len()) as u32).to_le_bytes());
        b.extend([0; 4]);
        b.extend((off as u32).to_le_bytes());
        b.extend(40u32.to_le_bytes());
        b.extend(w.to_le_bytes());
        b.extend(h.to_le_bytes());
        b.extend(1u16.to_le_bytes());
        b.extend(bits.to_le_bytes());
        b.extend(comp.to_le_bytes());
        b.extend((px.len() as u32).to_le_bytes());
        b.extend([0; 8]);
        b.extend(((palette.len() / 4) as u32).to_le_bytes());
        b.extend([0; 4]);
        masks.iter().for_each(|m| b.extend(m.to_le_bytes()));
        b.extend(palette);
        b.extend(px);
        b
    }

    fn reds(img: &RgbImage) -> Vec<u8> {
        img.pixels().map(|p| p[0]).collect()
    }

    #[test]
    fn sixteen_bit_channels_scale_as_pillow_truncating() {
        // one row: red = 0..31 in 5-5-5; then 5-6-5 green 0..63
        let px: Vec<u8> = (0u16..32).flat_map(|r| (r << 10).to_le_bytes()).collect();
        let img = decode(&bmp(32, 1, 16, RAW, &[], &[], &px), Kind::File, 1 << 20).unwrap();
        let pillow_5bit = [
            0, 8, 16, 24, 32, 41, 49, 57, 65, 74, 82, 90, 98, 106, 115, 123, 131, 139, 148, 156,
            164, 172, 180, 189, 197, 205, 213, 222, 230, 238, 246, 255,
        ];
        assert_eq!(reds(&img), pillow_5bit);
        let px: Vec<u8> = (0u16..64).flat_map(|g| (g << 5).to_le_bytes()).collect();
        let masks = [0xF800, 0x7E0, 0x1F];
        let img = decode(
            &bmp(64, 1, 16, BITFIELDS, &masks, &[], &px),
            Kind::File,
            1 << 20,
        )
        .unwrap();
        let greens: Vec<u8> = img.pixels().map(|p| p[1]).collect();
        assert_eq!(greens[..8], [0, 4, 8, 12, 16, 20, 24, 28]);
        assert_eq!(greens[20..23], [80, 85, 89]);
        assert_eq!(greens[41..43], [165, 170]);
        assert_eq!(greens[63], 255);
    }

    #[test]
    fn indices_past_the_palette_are_black_and_grey_palettes_are_grey() {
        let pal = [10, 20, 30, 0, 40, 50, 60, 0];
        let img = decode(
            &bmp(4, 1, 8, RAW, &[], &pal, &[0, 1, 2, 255]),
            Kind::File,
            1 << 20,
        )
        .unwrap();
        assert_eq!(img.as_raw(), &[30, 20, 10, 60, 50, 40, 0, 0, 0, 0, 0, 0]);
        // a 16-entry grey ramp: Pillow's mode L, where an index is its grey, past the ramp too
        let ramp: Vec<u8> = (0..16).flat_map(|i| [i, i, i, 0]).collect();
        let img = decode(
            &bmp(4, 1, 8, RAW, &[], &ramp, &[1, 15, 16, 200]),
            Kind::File,
            1 << 20,
        )
        .unwrap();
        assert_eq!(reds(&img), [1, 15, 16, 200]);
        // a black-and-white palette: Pillow's mode 1 reads a bit a pixel whatever the depth
        let bw = [0, 0, 0, 0, 255, 255, 255, 0];
        let img = decode(
            &bmp(8, 1, 4, RAW, &[], &bw, &[0x01, 0x12, 0xF0, 0x10]),
            Kind::File,
            1 << 20,
        )
        .unwrap();
        assert_eq!(reds(&img), [0, 0, 0, 0, 0, 0, 0, 255]);
        // bottom-up rows
        let px = [0x80, 0, 0, 0, 0x40, 0, 0, 0, 0xC0, 0, 0, 0];
        let img = decode(&bmp(8, 3, 4, RAW, &[], &bw, &px), Kind::File, 1 << 20).unwrap();
        let r = reds(&img);
        assert_eq!(r[..2], [255, 255]);
        assert_eq!(r[8..10], [0, 255]);
        assert_eq!(r[16..18], [255, 0]);
    }

    #[test]
    fn run_length_data_as_pillow_expands_it() {
        let pal: Vec<u8> = (0..20).flat_map(|i| [0, i, 0, 0]).collect();
        // an absolute run of 3 (padded to a word), an encoded run, end of line, end of bitmap
        let rle = [0, 3, 5, 6, 7, 0, 1, 9, 0, 0, 0, 1];
        let img = decode(&bmp(4, 1, 8, RLE8, &[], &pal, &rle), Kind::File, 1 << 20).unwrap();
        let greens: Vec<u8> = img.pixels().map(|p| p[1]).collect();
        assert_eq!(greens, [5, 6, 7, 9]);
        // bilevel palette: any nonzero value is white
        let bw = [0, 0, 0, 0, 255, 255, 255, 0];
        let rle = [1, 0, 1, 1, 1, 127, 1, 128, 1, 255, 0, 0, 0, 1];
        let img = decode(&bmp(5, 1, 8, RLE8, &[], &bw, &rle), Kind::File, 1 << 20).unwrap();
        assert_eq!(reds(&img), [0, 255, 255, 255, 255]);
        // a run past the row's end is clipped, so rows without end-of-line markers leave the
        // image incomplete: refused, as Pillow refuses it
        let e = decode(
            &bmp(4, 3, 8, RLE8, &[], &pal, &[4, 1, 4, 2, 4, 3]),
            Kind::File,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ends after 4 of 12 pixels"), "{e}");
        // a delta skips pixels (index 0) across rows; a run is clipped at the row end
        let rle = [0, 2, 1, 1, 2, 3, 0, 0, 0, 1];
        let img = decode(&bmp(2, 2, 8, RLE8, &[], &pal, &rle), Kind::File, 1 << 20).unwrap();
        let greens: Vec<u8> = img.pixels().map(|p| p[1]).collect();
        assert_eq!(greens, [0, 3, 0, 0]);
    }

    #[test]
    fn truncated_and_unknown_bitmaps_are_refused_with_the_reason() {
        let e = decode(&bmp(4, 4, 24, RAW, &[], &[], &[0; 40]), Kind::File, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // the last row's padding may be missing (Pillow's mmap_error.bmp)
        assert!(decode(
            &bmp(3, 2, 24, RAW, &[], &[], &[0; 12 + 9]),
            Kind::File,
            1 << 20
        )
        .is_ok());
        let e = decode(&bmp(4, 4, 12, RAW, &[], &[], &[0; 64]), Kind::File, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("12 bits"), "{e}");
        let e = decode(
            &bmp(4, 1, 24, RLE8, &[], &[], &[0; 64]),
            Kind::File,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("run-length"), "{e}");
        let e = decode(
            &bmp(4, 1, 16, BITFIELDS, &[0xF, 0xF0, 0xF00], &[], &[0; 8]),
            Kind::File,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bitfield"), "{e}");
        let big = bmp(100_000, 100_000, 24, RAW, &[], &[], &[0; 8]);
        assert!(matches!(
            decode(&big, Kind::File, 1 << 20),
            Err(DecodeFailure::TooLarge { .. })
        ));
        for n in 0..60 {
            // every prefix of a valid file: a clean refusal, never a panic
            let whole = bmp(3, 2, 8, RAW, &[], &[1, 2, 3, 0, 4, 5, 6, 0], &[0; 12]);
            let _ = decode(&whole[..n.min(whole.len())], Kind::File, 1 << 20);
        }
    }
}
