//! Deterministic "formula weights": for architectures whose real weights cannot be
//! obtained here, both whisker and the PyTorch reference generator
//! (`tools/reference/make_golden.py`) fill every tensor from an integer hash of its key and
//! element index, so the two compute exactly the same network.

/// FNV-1a, 32 bit.
pub fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `i`-th value in [0, 1) for a tensor whose key hashes to `h`.
#[inline]
pub fn unit(i: u64, h: u32) -> f64 {
    let mut x = (i.wrapping_mul(0x9E37_79B1).wrapping_add(h as u64)) & 0xFFFF_FFFF;
    x ^= x >> 16;
    x = (x * 0x85EB_CA6B) & 0xFFFF_FFFF;
    x ^= x >> 13;
    x = (x * 0xC2B2_AE35) & 0xFFFF_FFFF;
    x ^= x >> 16;
    x as f64 / 4_294_967_296.0
}

/// Key endings of a transformer's learnt tokens and position embeddings (torchvision's and
/// timm's names).
const EMBEDDINGS: [&str; 6] = [
    "class_token",
    "pos_embedding",
    "cls_token",
    "pos_embed",
    "reg_token",
    "register_tokens",
];

/// The formula values of the tensor `key` of the given shape.
pub fn formula(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let h = fnv1a(key);
    let kind = if key.ends_with("running_var") {
        0
    } else if key.ends_with("running_mean") {
        1
    } else if key.ends_with("layer_scale") || key.ends_with(".gamma") {
        5
    } else if shape.len() == 1 && key.ends_with(".weight") {
        2
    } else if key.ends_with(".bias") || key.ends_with("_bias") {
        3
    } else if EMBEDDINGS.iter().any(|e| key.ends_with(e)) {
        6
    } else {
        4
    };
    let fan_in: usize = shape.iter().skip(1).product();
    let scale = (6.0 / fan_in.max(1) as f64).sqrt();
    (0..n as u64)
        .map(|i| {
            let u = unit(i, h);
            let v = match kind {
                0 => 0.5 + u,
                1 => 0.1 * (2.0 * u - 1.0),
                2 => 0.6 + 0.4 * u,
                3 => 0.1 * (2.0 * u - 1.0),
                // a layer scale of 0.1 to 0.5 (trained ones are of that order; PyTorch's
                // initial 1e-6 would make every block an identity the test cannot see)
                5 => 0.1 + 0.4 * u,
                // a transformer's class / register tokens and position embeddings: ±0.5, of
                // the patch embeddings' order (a fan-in rule would make them ±0.006, a
                // position the test could hardly see)
                6 => 0.5 * (2.0 * u - 1.0),
                _ => (2.0 * u - 1.0) * scale,
            };
            v as f32
        })
        .collect()
}
