//! Checkpoint key mapping: timm names → the names whisker's architectures use
//! (torchvision's, or lukemelas' for EfficientNet-Lite).
//!
//! timm's ResNets already use torchvision's names. timm's `tf_efficientnet_lite*` and
//! `mobilenetv2_100` use `conv_stem` / `blocks.S.I.conv_pw` … names, mapped here.

use std::collections::BTreeMap;

use super::RawTensor;

pub(super) fn map_keys(model: &str, tensors: &mut BTreeMap<String, RawTensor>) {
    if !tensors.contains_key("conv_stem.weight") {
        return; // not timm naming
    }
    let blocks = block_order(tensors);
    let renamed: BTreeMap<String, RawTensor> = std::mem::take(tensors)
        .into_iter()
        .map(|(k, v)| {
            let nk = if model.starts_with("efficientnet_lite") {
                timm_lite(&k, &blocks)
            } else if model == "mobilenet_v2" {
                timm_mnv2(&k, &blocks)
            } else {
                None
            };
            (nk.unwrap_or(k), v)
        })
        .collect();
    *tensors = renamed;
}

/// The (stage, index) pairs of `blocks.S.I.*` keys, in network order.
fn block_order(tensors: &BTreeMap<String, RawTensor>) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = tensors
        .keys()
        .filter_map(|k| parse_block(k).map(|(s, i, _)| (s, i)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn parse_block(k: &str) -> Option<(usize, usize, &str)> {
    let rest = k.strip_prefix("blocks.")?;
    let mut it = rest.splitn(3, '.');
    let s = it.next()?.parse().ok()?;
    let i = it.next()?.parse().ok()?;
    Some((s, i, it.next()?))
}

fn flat(blocks: &[(usize, usize)], s: usize, i: usize) -> usize {
    blocks.iter().position(|&b| b == (s, i)).unwrap_or(0)
}

fn split_leaf(rest: &str) -> (&str, &str) {
    match rest.find('.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, ""),
    }
}

fn timm_lite(k: &str, blocks: &[(usize, usize)]) -> Option<String> {
    let top = [
        ("conv_stem.", "_conv_stem."),
        ("bn1.", "_bn0."),
        ("conv_head.", "_conv_head."),
        ("bn2.", "_bn1."),
        ("classifier.", "_fc."),
    ];
    for (a, b) in top {
        if let Some(r) = k.strip_prefix(a) {
            return Some(format!("{b}{r}"));
        }
    }
    let (s, i, rest) = parse_block(k)?;
    let n = flat(blocks, s, i);
    let (layer, leaf) = split_leaf(rest);
    // A depthwise-separable first block (no expansion) has conv_dw, bn1, conv_pw, bn2.
    let first = s == 0;
    let name = match (first, layer) {
        (true, "conv_dw") => "_depthwise_conv",
        (true, "bn1") => "_bn1",
        (true, "conv_pw") => "_project_conv",
        (true, "bn2") => "_bn2",
        (false, "conv_pw") => "_expand_conv",
        (false, "bn1") => "_bn0",
        (false, "conv_dw") => "_depthwise_conv",
        (false, "bn2") => "_bn1",
        (false, "conv_pwl") => "_project_conv",
        (false, "bn3") => "_bn2",
        _ => return None,
    };
    Some(format!("_blocks.{n}.{name}.{leaf}"))
}

fn timm_mnv2(k: &str, blocks: &[(usize, usize)]) -> Option<String> {
    let nblocks = blocks.len();
    let top = [
        ("conv_stem.", "features.0.0.".to_string()),
        ("bn1.", "features.0.1.".to_string()),
        ("conv_head.", format!("features.{}.0.", nblocks + 1)),
        ("bn2.", format!("features.{}.1.", nblocks + 1)),
        ("classifier.", "classifier.1.".to_string()),
    ];
    for (a, b) in top {
        if let Some(r) = k.strip_prefix(a) {
            return Some(format!("{b}{r}"));
        }
    }
    let (s, i, rest) = parse_block(k)?;
    let n = flat(blocks, s, i) + 1;
    let (layer, leaf) = split_leaf(rest);
    let first = s == 0;
    let name = match (first, layer) {
        (true, "conv_dw") => "conv.0.0",
        (true, "bn1") => "conv.0.1",
        (true, "conv_pw") => "conv.1",
        (true, "bn2") => "conv.2",
        (false, "conv_pw") => "conv.0.0",
        (false, "bn1") => "conv.0.1",
        (false, "conv_dw") => "conv.1.0",
        (false, "bn2") => "conv.1.1",
        (false, "conv_pwl") => "conv.2",
        (false, "bn3") => "conv.3",
        _ => return None,
    };
    Some(format!("features.{n}.{name}.{leaf}"))
}
