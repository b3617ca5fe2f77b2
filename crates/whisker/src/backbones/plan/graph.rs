//! A backbone as a graph of plain layers with unpacked, folded weights: what the plan's
//! builder lowers, recorded as it lowers it (each family's `Arch::lower` is the one place a
//! network is described; the CPU engine and every export are derived from it). Eval mode:
//! BatchNorms folded into their convolutions (in f64), layer scales into their linear layers.

use whisker_kernels::Act;

use super::{Pad, V};

/// One layer of a [`Graph`]. Values are the plan's: value 0 is the normalised input image
/// `(h, w, 3)`; a value is a feature map, a vector or a sequence of tokens (`(t, 1, c)`).
#[derive(Debug, Clone)]
pub enum Node {
    /// A convolution `w` `[cout, cin/groups, kh, kw]` (a BatchNorm folded in) with bias `b`;
    /// `res` added before `act`.
    Conv {
        x: V,
        out: V,
        w: Vec<f32>,
        b: Vec<f32>,
        dims: [usize; 4],
        stride: usize,
        pad: Pad,
        groups: usize,
        act: Act,
        res: Option<V>,
    },
    /// A linear layer on the vector (or the flattened map, NCHW order) `x`: `w` `[in, out]`.
    Linear {
        x: V,
        out: V,
        w: Vec<f32>,
        b: Vec<f32>,
        act: Act,
    },
    /// A linear layer at every pixel or token of `x`: `w` `[out, in]` (a layer scale
    /// folded in), `res` added before `act`.
    Pointwise {
        x: V,
        out: V,
        w: Vec<f32>,
        b: Vec<f32>,
        act: Act,
        res: Option<V>,
    },
    /// A vision transformer's tokens from the patch map `x`: the class token `cls` `[c]`,
    /// the `reg` register tokens `[r, c]`, then the patches; position embeddings `pos`
    /// `[1 + grid², c]` (the class token's first), resampled to the map's grid.
    Tokens {
        x: V,
        out: V,
        cls: Vec<f32>,
        pos: Vec<f32>,
        reg: Vec<f32>,
        grid: usize,
    },
    /// Multi-head self-attention on the packed q, k, v projection `qkv` (`[t, 3c]`).
    Attention { qkv: V, out: V, heads: usize },
    /// The class token of `x`; with `mean_from`, concatenated with the mean of the tokens
    /// from that one on.
    ClassToken {
        x: V,
        out: V,
        mean_from: Option<usize>,
    },
    /// Max pooling, `k × k`, `stride`, `pad` (padding never chosen).
    MaxPool {
        x: V,
        out: V,
        k: usize,
        stride: usize,
        pad: usize,
    },
    /// Adaptive average pooling to `oh × ow`.
    AvgPool { x: V, out: V, oh: usize, ow: usize },
    /// LayerNorm over the channels of each pixel or token.
    LayerNorm {
        x: V,
        out: V,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f64,
    },
    /// `a + b`.
    Add { a: V, b: V, out: V },
    /// Squeeze-excitation rescaling `x` in place: global average, 1×1 convolution `w1`
    /// `[hid, c]` + `act`, 1×1 convolution `w2` `[c, hid]` + `gate`, times `x`.
    Se {
        x: V,
        w1: Vec<f32>,
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: Vec<f32>,
        hid: usize,
        act: Act,
        gate: Act,
    },
}

/// A backbone's graph: its nodes in order, the channels of each value, and which values are
/// the feature vector and the ImageNet logits (the features themselves for a headless
/// backbone; `classifier_start` is the first node only the logits need).
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub channels: Vec<usize>,
    pub features: V,
    pub logits: V,
    pub classifier_start: usize,
    /// The input normalisation `(x·scale − mean) / std` per channel, `x` in [0, 1].
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Graph {
    /// Whether the backbone has an ImageNet classifier of its own.
    pub fn has_classifier(&self) -> bool {
        self.logits != self.features
    }
}

/// The value `node` writes (`None`: squeeze-excitation rescales its input in place).
pub fn output_of(node: &Node) -> Option<V> {
    match node {
        Node::Conv { out, .. }
        | Node::Linear { out, .. }
        | Node::Pointwise { out, .. }
        | Node::Tokens { out, .. }
        | Node::Attention { out, .. }
        | Node::ClassToken { out, .. }
        | Node::MaxPool { out, .. }
        | Node::AvgPool { out, .. }
        | Node::LayerNorm { out, .. }
        | Node::Add { out, .. } => Some(*out),
        Node::Se { .. } => None,
    }
}
