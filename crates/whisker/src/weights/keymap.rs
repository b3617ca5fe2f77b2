//! Checkpoint key mapping, for the families whose checkpoints also come in timm's naming
//! (`conv_stem`, `blocks.S.I.conv_pw`…): the walk over timm's block keys the families
//! share. Each family's own table lives in its file (`Definition::map_keys`).

use std::collections::BTreeMap;

use super::RawTensor;

/// timm's blocks `(stage, index)` in network order, as a checkpoint's keys name them.
pub struct TimmBlocks(Vec<(usize, usize)>);

impl TimmBlocks {
    /// The position of block `(s, i)` among all blocks (0 for a block not in the list).
    pub fn flat(&self, s: usize, i: usize) -> usize {
        self.0.iter().position(|&b| b == (s, i)).unwrap_or(0)
    }

    /// How many blocks there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rename every key of a checkpoint in timm's naming (it has `conv_stem.weight`) with
/// `rename` (`None`: the key stays); a checkpoint in another naming is left alone.
pub fn rename_timm(
    tensors: &mut BTreeMap<String, RawTensor>,
    rename: impl Fn(&str, &TimmBlocks) -> Option<String>,
) {
    if !tensors.contains_key("conv_stem.weight") {
        return;
    }
    let mut v: Vec<(usize, usize)> = tensors
        .keys()
        .filter_map(|k| parse_block(k).map(|(s, i, _)| (s, i)))
        .collect();
    v.sort_unstable();
    v.dedup();
    let blocks = TimmBlocks(v);
    *tensors = std::mem::take(tensors)
        .into_iter()
        .map(|(k, t)| (rename(&k, &blocks).unwrap_or(k), t))
        .collect();
}

/// `blocks.S.I.rest` → `(S, I, rest)`.
pub fn parse_block(k: &str) -> Option<(usize, usize, &str)> {
    let rest = k.strip_prefix("blocks.")?;
    let mut it = rest.splitn(3, '.');
    let s = it.next()?.parse().ok()?;
    let i = it.next()?.parse().ok()?;
    Some((s, i, it.next()?))
}

/// `layer.leaf…` → `(layer, leaf…)`.
pub fn split_leaf(rest: &str) -> (&str, &str) {
    match rest.find('.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, ""),
    }
}
