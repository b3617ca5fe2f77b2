//! Grey portable float maps (`Pf`), as Pillow 13 reads them and `convert("RGB")` turns them
//! into bytes: the header's tokens (comments from `#` to the end of the line; a token of at
//! most 10 characters), a scale whose sign gives the byte order (negative: little-endian),
//! rows of 32-bit floats from the bottom up, each value clamped to 0..255 and truncated (NaN
//! is 0). Colour maps (`PF`) are refused, as Pillow refuses them.

use image::RgbImage;

use super::decode::DecodeFailure;

fn invalid(reason: impl Into<String>) -> DecodeFailure {
    DecodeFailure::Invalid(format!("PFM: {}", reason.into()))
}

/// A PFM file's first bytes: `Pf` or `PF` and a whitespace.
pub(crate) fn looks_like_pfm(b: &[u8]) -> bool {
    b.len() >= 3 && (b.starts_with(b"Pf") || b.starts_with(b"PF")) && b[2].is_ascii_whitespace()
}

/// The next header token from `*at`: whitespace before it skipped, comments dropped; `*at`
/// is left after the one whitespace byte that ends it.
fn token(b: &[u8], at: &mut usize) -> Result<String, DecodeFailure> {
    let mut t = Vec::new();
    while t.len() <= 10 {
        let Some(&c) = b.get(*at) else { break };
        *at += 1;
        if c.is_ascii_whitespace() || c == 0x0B {
            if t.is_empty() {
                continue;
            }
            break;
        }
        if c == b'#' {
            while b.get(*at).is_some_and(|&c| c != b'\r' && c != b'\n') {
                *at += 1;
            }
            *at += 1;
            continue;
        }
        t.push(c);
    }
    match t.len() {
        0 => Err(invalid("the file ends inside the header")),
        11.. => Err(invalid("a header token longer than 10 characters")),
        _ => Ok(String::from_utf8_lossy(&t).into_owned()),
    }
}

/// Decode a PFM file.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeFailure> {
    if bytes.starts_with(b"PF") {
        return Err(invalid(
            "colour float maps (PF) are not read (Pillow does not read them either)",
        ));
    }
    let mut at = 3;
    let number = |t: String| -> Result<u64, DecodeFailure> {
        t.parse::<u64>()
            .map_err(|_| invalid(format!("the size {t:?} is not a whole number")))
    };
    let width = number(token(bytes, &mut at)?)?;
    let height = number(token(bytes, &mut at)?)?;
    let scale_text = token(bytes, &mut at)?;
    let scale: f64 = scale_text
        .parse()
        .map_err(|_| invalid(format!("the scale {scale_text:?} is not a number")))?;
    if scale == 0.0 || !scale.is_finite() {
        return Err(invalid("the scale must be finite and non-zero"));
    }
    super::decode::check_size(width, height, max_pixels)?;
    let (w, h) = (width as usize, height as usize);
    let data = bytes
        .get(at..)
        .filter(|d| d.len() >= w * h * 4)
        .ok_or_else(|| {
            invalid(format!(
                "the file is truncated: {w}×{h} floats need {} bytes after the header, it has {}",
                w * h * 4,
                bytes.len().saturating_sub(at)
            ))
        })?;
    let _big = super::decode::big_guard(width * height);
    let mut rgb = vec![0u8; w * h * 3];
    for (r, row) in data[..w * h * 4].chunks_exact(w * 4).enumerate() {
        let out = &mut rgb[(h - 1 - r) * w * 3..][..w * 3];
        for (px, f) in out.chunks_exact_mut(3).zip(row.chunks_exact(4)) {
            let f = [f[0], f[1], f[2], f[3]];
            let v = if scale < 0.0 {
                f32::from_le_bytes(f)
            } else {
                f32::from_be_bytes(f)
            };
            // `as` saturates and takes NaN to 0: Pillow's clamp and truncation
            px.fill(v.clamp(0.0, 255.0) as u8);
        }
    }
    RgbImage::from_raw(width as u32, height as u32, rgb).ok_or_else(|| invalid("size mismatch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_clamped_and_truncated_as_pillow_converts_mode_f() {
        // values and results read off Pillow 13.0.0 (mode F → RGB)
        let vals = [
            -1.0f32,
            0.4,
            0.5,
            0.6,
            1.5,
            2.5,
            254.5,
            255.5,
            300.0,
            f32::NAN,
            f32::INFINITY,
            -0.5,
            1e10,
        ];
        let pillow = [0u8, 0, 0, 0, 1, 2, 254, 255, 255, 0, 255, 0, 255];
        let mut le = format!("Pf\n# a comment\n{} 1\n-1.0\n", vals.len()).into_bytes();
        vals.iter().for_each(|v| le.extend(v.to_le_bytes()));
        let mut be = format!("Pf {} 1 2.5\n", vals.len()).into_bytes();
        vals.iter().for_each(|v| be.extend(v.to_be_bytes()));
        for file in [le, be] {
            let img = decode(&file, 1 << 20).unwrap();
            let grey: Vec<u8> = img.pixels().map(|p| p[0]).collect();
            assert_eq!(grey, pillow);
        }
        // rows are stored bottom-up
        let mut f = b"Pf\n1 2\n-1\n".to_vec();
        f.extend(7.0f32.to_le_bytes());
        f.extend(9.0f32.to_le_bytes());
        assert_eq!(decode(&f, 1 << 20).unwrap().as_raw(), &[9, 9, 9, 7, 7, 7]);
    }

    #[test]
    fn bad_headers_and_short_data_are_refused_with_the_reason() {
        for (file, why) in [
            (&b"Pf\n2 2\n0\n"[..], "finite and non-zero"),
            (b"Pf\n2 2\nnan\n", "finite and non-zero"),
            (b"Pf\n2 2\n-1\n\0\0\0\0", "truncated"),
            (b"Pf\n2", "ends inside the header"),
            (b"Pf\n123456789012 2\n-1\n", "longer than 10"),
            (b"Pf\n-2 2\n-1\n", "not a whole number"),
            (b"PF\n2 2\n-1\n", "PF"),
        ] {
            let e = decode(file, 1 << 20).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert!(matches!(
            decode(b"Pf\n100000 100000\n-1\n", 1 << 20),
            Err(DecodeFailure::TooLarge { .. })
        ));
    }
}
