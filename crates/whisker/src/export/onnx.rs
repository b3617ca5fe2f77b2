//! A backbone's [`Graph`] (and a trained head) as one ONNX model, opset 17: input `pixels`
//! `[N, 3, H, W]` in [0, 1] (the batch dynamic), the normalisation inside; outputs `logits`
//! and `features`. Feature maps are NCHW (as PyTorch's), tokens `[N, T, C]`, vectors
//! `[N, C]`.

use prost::Message;
use whisker_kernels::Act;

use super::proto::*;
use crate::backbones::plan::graph::{Graph, Node};
use crate::error::{Error, Result};

/// The opset the models are written for (ONNX Runtime and OpenVINO of 2024 on run it).
pub const OPSET: i64 = 17;
/// The IR version of opset 17.
const IR_VERSION: i64 = 8;

/// A trained head on the features: `(f − mean) / std`, then one linear layer (`w1`
/// `[dim, hidden]`) or two with a ReLU between them.
pub struct HeadLayers<'a> {
    pub mean: &'a [f32],
    pub std: &'a [f32],
    pub layers: Vec<(&'a [f32], &'a [f32], usize, usize)>,
}

/// The shape of a value, batch left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map { c: usize, h: usize, w: usize },
    Tokens { t: usize, c: usize },
    Vector { c: usize },
}

struct Emitter {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
    /// Each value's tensor name and shape, once computed.
    values: Vec<Option<(String, Kind)>>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f: Some(v),
        ..Default::default()
    }
}

fn unsupported(what: String) -> Error {
    Error::Internal(format!("exporting to ONNX: {what}"))
}

impl Emitter {
    fn name(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}_{}", self.next)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.name(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
        });
        out
    }

    /// A weight (an initializer) of `dims` and little-endian `raw_data`; its name.
    fn init(&mut self, stem: &str, dims: Vec<i64>, data_type: i32, raw_data: Vec<u8>) -> String {
        let name = self.name(stem);
        self.inits.push(TensorProto {
            dims,
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn floats(&mut self, stem: &str, dims: &[usize], v: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), v.len());
        let dims = dims.iter().map(|&d| d as i64).collect();
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(stem, dims, data_type::FLOAT, raw)
    }

    /// A 1-D int64 tensor (shapes, slice bounds).
    fn ints(&mut self, stem: &str, v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(stem, vec![v.len() as i64], data_type::INT64, raw)
    }

    fn scalar(&mut self, v: f32) -> String {
        self.floats("c", &[], &[v])
    }

    fn get(&self, v: usize) -> Result<(String, Kind)> {
        self.values
            .get(v)
            .cloned()
            .flatten()
            .ok_or_else(|| unsupported(format!("value {v} is used before it is computed")))
    }

    fn set(&mut self, v: usize, name: String, kind: Kind) {
        if self.values.len() <= v {
            self.values.resize(v + 1, None);
        }
        self.values[v] = Some((name, kind));
    }

    fn act(&mut self, x: String, act: Act) -> String {
        match act {
            Act::None => x,
            Act::Relu => self.op("Relu", &[&x], vec![]),
            Act::Relu6 => {
                let (lo, hi) = (self.scalar(0.0), self.scalar(6.0));
                self.op("Clip", &[&x, &lo, &hi], vec![])
            }
            Act::Hardswish => self.op("HardSwish", &[&x], vec![]),
            Act::Hardsigmoid => self.op(
                "HardSigmoid",
                &[&x],
                vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
            ),
            Act::Sigmoid => self.op("Sigmoid", &[&x], vec![]),
            Act::Silu => {
                let s = self.op("Sigmoid", &[&x], vec![]);
                self.op("Mul", &[&x, &s], vec![])
            }
            Act::Gelu => {
                // x/2 · (1 + erf(x/√2)), the pattern ONNX Runtime and OpenVINO fuse
                let r2 = self.scalar(std::f32::consts::SQRT_2);
                let d = self.op("Div", &[&x, &r2], vec![]);
                let e = self.op("Erf", &[&d], vec![]);
                let one = self.scalar(1.0);
                let p = self.op("Add", &[&e, &one], vec![]);
                let m = self.op("Mul", &[&x, &p], vec![]);
                let half = self.scalar(0.5);
                self.op("Mul", &[&m, &half], vec![])
            }
        }
    }

    /// `x` (a map or a vector) as `[N, C]`.
    fn flat(&mut self, x: &str, kind: Kind) -> Result<(String, usize)> {
        match kind {
            Kind::Vector { c } => Ok((x.to_string(), c)),
            Kind::Map { c, h, w } => Ok((
                self.op("Flatten", &[x], vec![attr_int("axis", 1)]),
                c * h * w,
            )),
            Kind::Tokens { .. } => Err(unsupported("a linear layer on tokens".into())),
        }
    }

    /// `x @ w + b` for a vector `x` `[N, in]`, `w` `[in, out]`.
    fn gemm(&mut self, x: &str, w: &[f32], b: &[f32], inp: usize, out: usize) -> String {
        let wn = self.floats("w", &[inp, out], w);
        let bn = self.floats("b", &[out], b);
        self.op("Gemm", &[x, &wn, &bn], vec![])
    }

    fn node(&mut self, node: &Node) -> Result<()> {
        match node {
            Node::Conv {
                x,
                out,
                w,
                b,
                dims,
                stride,
                pad,
                groups,
                act,
                res,
            } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Map { h, w: iw, .. } = kind else {
                    return Err(unsupported(format!("a convolution on {kind:?}")));
                };
                let [cout, cpg, kh, kw] = *dims;
                let [t, bo, l, r] = pad.resolve(h, iw, kh, *stride);
                let wn = self.floats("w", &[cout, cpg, kh, kw], w);
                let bn = self.floats("b", &[cout], b);
                let mut y = self.op(
                    "Conv",
                    &[&xn, &wn, &bn],
                    vec![
                        attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                        attr_ints("strides", &[*stride as i64; 2]),
                        attr_ints("pads", &[t as i64, l as i64, bo as i64, r as i64]),
                        attr_int("group", *groups as i64),
                    ],
                );
                if let Some(res) = res {
                    let (rn, _) = self.get(*res)?;
                    y = self.op("Add", &[&y, &rn], vec![]);
                }
                let y = self.act(y, *act);
                let oh = (h + t + bo - kh) / stride + 1;
                let ow = (iw + l + r - kw) / stride + 1;
                self.set(
                    *out,
                    y,
                    Kind::Map {
                        c: cout,
                        h: oh,
                        w: ow,
                    },
                );
            }
            Node::Linear { x, out, w, b, act } => {
                let (xn, kind) = self.get(*x)?;
                let (f, inp) = self.flat(&xn, kind)?;
                let outc = b.len();
                if w.len() != inp * outc {
                    return Err(unsupported(format!(
                        "a linear layer of {} weights on {inp} inputs",
                        w.len()
                    )));
                }
                let y = self.gemm(&f, w, b, inp, outc);
                let y = self.act(y, *act);
                self.set(*out, y, Kind::Vector { c: outc });
            }
            Node::Pointwise {
                x,
                out,
                w,
                b,
                act,
                res,
            } => {
                let (xn, kind) = self.get(*x)?;
                let cout = b.len();
                let cin = w.len() / cout.max(1);
                let (mut y, k) = match kind {
                    Kind::Map { h, w: mw, .. } => {
                        let wn = self.floats("w", &[cout, cin, 1, 1], w);
                        let bn = self.floats("b", &[cout], b);
                        let y = self.op("Conv", &[&xn, &wn, &bn], vec![]);
                        (y, Kind::Map { c: cout, h, w: mw })
                    }
                    Kind::Tokens { t, .. } => {
                        let mut wt = vec![0f32; cin * cout];
                        for o in 0..cout {
                            for i in 0..cin {
                                wt[i * cout + o] = w[o * cin + i];
                            }
                        }
                        let wn = self.floats("w", &[cin, cout], &wt);
                        let bn = self.floats("b", &[cout], b);
                        let m = self.op("MatMul", &[&xn, &wn], vec![]);
                        (
                            self.op("Add", &[&m, &bn], vec![]),
                            Kind::Tokens { t, c: cout },
                        )
                    }
                    Kind::Vector { .. } => {
                        let wn = self.floats("w", &[cout, cin], w);
                        let bn = self.floats("b", &[cout], b);
                        let y = self.op("Gemm", &[&xn, &wn, &bn], vec![attr_int("transB", 1)]);
                        (y, Kind::Vector { c: cout })
                    }
                };
                if let Some(res) = res {
                    let (rn, _) = self.get(*res)?;
                    y = self.op("Add", &[&y, &rn], vec![]);
                }
                let y = self.act(y, *act);
                self.set(*out, y, k);
            }
            Node::Tokens {
                x,
                out,
                cls,
                pos,
                reg,
                grid,
            } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Map { c, h, w } = kind else {
                    return Err(unsupported(format!("tokens of {kind:?}")));
                };
                let shape = self.ints("shape", &[0, c as i64, (h * w) as i64]);
                let flat = self.op("Reshape", &[&xn, &shape], vec![]);
                let patches = self.op("Transpose", &[&flat], vec![attr_ints("perm", &[0, 2, 1])]);
                let pp = crate::backbones::plan::patch_position(pos, *grid, h, w, c);
                let ppn = self.floats("pos", &[1, h * w, c], &pp);
                let patches = self.op("Add", &[&patches, &ppn], vec![]);
                // the class token (plus its position embedding) and the registers, the same
                // for every image: broadcast to the batch
                let r = reg.len() / c.max(1);
                let mut lead: Vec<f32> = cls.iter().zip(&pos[..c]).map(|(a, b)| a + b).collect();
                lead.extend_from_slice(reg);
                let lead_n = self.floats("cls", &[1, 1 + r, c], &lead);
                let batch_shape = self.op("Shape", &[&xn], vec![]);
                let (s0, e1, ax) = (
                    self.ints("i", &[0]),
                    self.ints("i", &[1]),
                    self.ints("i", &[0]),
                );
                let n = self.op("Slice", &[&batch_shape, &s0, &e1, &ax], vec![]);
                let rest = self.ints("shape", &[(1 + r) as i64, c as i64]);
                let full = self.op("Concat", &[&n, &rest], vec![attr_int("axis", 0)]);
                let lead_b = self.op("Expand", &[&lead_n, &full], vec![]);
                let y = self.op("Concat", &[&lead_b, &patches], vec![attr_int("axis", 1)]);
                self.set(
                    *out,
                    y,
                    Kind::Tokens {
                        t: 1 + r + h * w,
                        c,
                    },
                );
            }
            Node::Attention { qkv, out, heads } => {
                let (xn, kind) = self.get(*qkv)?;
                let Kind::Tokens { t, c: c3 } = kind else {
                    return Err(unsupported(format!("attention on {kind:?}")));
                };
                let c = c3 / 3;
                let d = c / heads;
                let shape = self.ints("shape", &[0, t as i64, 3, *heads as i64, d as i64]);
                let r = self.op("Reshape", &[&xn, &shape], vec![]);
                // [3, N, heads, T, d]
                let tr = self.op(
                    "Transpose",
                    &[&r],
                    vec![attr_ints("perm", &[2, 0, 3, 1, 4])],
                );
                let mut qkv_n = Vec::new();
                for i in 0..3 {
                    let idx = self.index(i);
                    qkv_n.push(self.op("Gather", &[&tr, &idx], vec![attr_int("axis", 0)]));
                }
                let kt = self.op(
                    "Transpose",
                    &[&qkv_n[1]],
                    vec![attr_ints("perm", &[0, 1, 3, 2])],
                );
                let s = self.scalar(1.0 / (d as f32).sqrt());
                let q = self.op("Mul", &[&qkv_n[0], &s], vec![]);
                let a = self.op("MatMul", &[&q, &kt], vec![]);
                let p = self.op("Softmax", &[&a], vec![attr_int("axis", -1)]);
                let o = self.op("MatMul", &[&p, &qkv_n[2]], vec![]);
                let o = self.op("Transpose", &[&o], vec![attr_ints("perm", &[0, 2, 1, 3])]);
                let shape = self.ints("shape", &[0, t as i64, c as i64]);
                let y = self.op("Reshape", &[&o, &shape], vec![]);
                self.set(*out, y, Kind::Tokens { t, c });
            }
            Node::ClassToken { x, out, mean_from } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Tokens { t, c } = kind else {
                    return Err(unsupported(format!("a class token of {kind:?}")));
                };
                let idx = self.index(0);
                let cls = self.op("Gather", &[&xn, &idx], vec![attr_int("axis", 1)]);
                match mean_from {
                    None => self.set(*out, cls, Kind::Vector { c }),
                    Some(from) => {
                        let (s, e, ax) = (
                            self.ints("i", &[*from as i64]),
                            self.ints("i", &[t as i64]),
                            self.ints("i", &[1]),
                        );
                        let rest = self.op("Slice", &[&xn, &s, &e, &ax], vec![]);
                        let mean = self.op(
                            "ReduceMean",
                            &[&rest],
                            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
                        );
                        let y = self.op("Concat", &[&cls, &mean], vec![attr_int("axis", 1)]);
                        self.set(*out, y, Kind::Vector { c: 2 * c });
                    }
                }
            }
            Node::MaxPool {
                x,
                out,
                k,
                stride,
                pad,
            } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Map { c, h, w } = kind else {
                    return Err(unsupported(format!("max pooling of {kind:?}")));
                };
                let y = self.op(
                    "MaxPool",
                    &[&xn],
                    vec![
                        attr_ints("kernel_shape", &[*k as i64; 2]),
                        attr_ints("strides", &[*stride as i64; 2]),
                        attr_ints("pads", &[*pad as i64; 4]),
                    ],
                );
                let o = |s: usize| (s + 2 * pad - k) / stride + 1;
                self.set(
                    *out,
                    y,
                    Kind::Map {
                        c,
                        h: o(h),
                        w: o(w),
                    },
                );
            }
            Node::AvgPool { x, out, oh, ow } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Map { c, h, w } = kind else {
                    return Err(unsupported(format!("average pooling of {kind:?}")));
                };
                let y = if (*oh, *ow) == (1, 1) {
                    self.op("GlobalAveragePool", &[&xn], vec![])
                } else if (*oh, *ow) == (h, w) {
                    xn
                } else if h % oh == 0 && w % ow == 0 {
                    let (kh, kw) = (h / oh, w / ow);
                    self.op(
                        "AveragePool",
                        &[&xn],
                        vec![
                            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                            attr_ints("strides", &[kh as i64, kw as i64]),
                        ],
                    )
                } else {
                    return Err(unsupported(format!(
                        "adaptive average pooling of {h}×{w} to {oh}×{ow}"
                    )));
                };
                self.set(*out, y, Kind::Map { c, h: *oh, w: *ow });
            }
            Node::LayerNorm {
                x,
                out,
                gamma,
                beta,
                eps,
            } => {
                let (xn, kind) = self.get(*x)?;
                let c = gamma.len();
                let (g, b) = (self.floats("g", &[c], gamma), self.floats("b", &[c], beta));
                let ln = |e: &mut Emitter, x: &str| {
                    e.op(
                        "LayerNormalization",
                        &[x, &g, &b],
                        vec![attr_int("axis", -1), attr_float("epsilon", *eps as f32)],
                    )
                };
                let y = match kind {
                    Kind::Map { .. } => {
                        let nhwc =
                            self.op("Transpose", &[&xn], vec![attr_ints("perm", &[0, 2, 3, 1])]);
                        let y = ln(self, &nhwc);
                        self.op("Transpose", &[&y], vec![attr_ints("perm", &[0, 3, 1, 2])])
                    }
                    _ => ln(self, &xn),
                };
                self.set(*out, y, kind);
            }
            Node::Add { a, b, out } => {
                let (an, kind) = self.get(*a)?;
                let (bn, _) = self.get(*b)?;
                let y = self.op("Add", &[&an, &bn], vec![]);
                self.set(*out, y, kind);
            }
            Node::Se {
                x,
                w1,
                b1,
                w2,
                b2,
                hid,
                act,
                gate,
            } => {
                let (xn, kind) = self.get(*x)?;
                let Kind::Map { c, .. } = kind else {
                    return Err(unsupported(format!("squeeze-excitation of {kind:?}")));
                };
                let s = self.op("GlobalAveragePool", &[&xn], vec![]);
                let (w1n, b1n) = (
                    self.floats("w", &[*hid, c, 1, 1], w1),
                    self.floats("b", &[*hid], b1),
                );
                let h = self.op("Conv", &[&s, &w1n, &b1n], vec![]);
                let h = self.act(h, *act);
                let (w2n, b2n) = (
                    self.floats("w", &[c, *hid, 1, 1], w2),
                    self.floats("b", &[c], b2),
                );
                let g = self.op("Conv", &[&h, &w2n, &b2n], vec![]);
                let g = self.act(g, *gate);
                let y = self.op("Mul", &[&xn, &g], vec![]);
                self.set(*x, y, kind);
            }
        }
        Ok(())
    }

    /// The graph output `name`, a copy of `x`.
    fn output(&mut self, x: &str, name: &str) {
        self.nodes.push(NodeProto {
            input: vec![x.into()],
            output: vec![name.into()],
            name: name.into(),
            op_type: "Identity".into(),
            attribute: vec![],
        });
    }

    /// A scalar int64 index (for `Gather`: the axis is dropped).
    fn index(&mut self, i: i64) -> String {
        self.init("i", vec![], data_type::INT64, i.to_le_bytes().to_vec())
    }
}

fn tensor_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Some(v) => Dimension {
                                dim_value: Some(*v as i64),
                                dim_param: None,
                            },
                            None => Dimension {
                                dim_value: None,
                                dim_param: Some("N".into()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// What to write: the graph of the backbone at input size `size`, the head (`None`: the
/// backbone's ImageNet classifier, if it has one), and the model's metadata properties.
pub struct OnnxModel<'a> {
    pub graph: &'a Graph,
    pub size: usize,
    pub head: Option<HeadLayers<'a>>,
    pub name: &'a str,
    pub metadata: Vec<(String, String)>,
}

/// The ONNX model's bytes.
pub fn encode(m: &OnnxModel<'_>) -> Result<Vec<u8>> {
    let g = m.graph;
    let mut e = Emitter {
        nodes: Vec::new(),
        inits: Vec::new(),
        next: 0,
        values: Vec::new(),
    };
    // the normalisation, as the engine does it: (x·scale − mean) / std
    let mut x = "pixels".to_string();
    if g.scale != 1.0 {
        let s = e.scalar(g.scale);
        x = e.op("Mul", &[&x, &s], vec![]);
    }
    let mean = e.floats("mean", &[1, 3, 1, 1], &g.mean);
    let std = e.floats("std", &[1, 3, 1, 1], &g.std);
    let x = e.op("Sub", &[&x, &mean], vec![]);
    let x = e.op("Div", &[&x, &std], vec![]);
    e.set(
        0,
        x,
        Kind::Map {
            c: 3,
            h: m.size,
            w: m.size,
        },
    );
    let imagenet = m.head.is_none() && g.has_classifier();
    let nodes = if imagenet {
        &g.nodes[..]
    } else {
        &g.nodes[..g.classifier_start]
    };
    for n in nodes {
        e.node(n)?;
    }
    let (fname, fkind) = e.get(g.features)?;
    let (features, dim) = e.flat(&fname, fkind)?;
    e.output(&features, "features");
    let mut outputs = vec![tensor_info("features", &[None, Some(dim)])];
    let logits = match &m.head {
        Some(h) => {
            let mn = e.floats("mean", &[1, dim], h.mean);
            let sn = e.floats("std", &[1, dim], h.std);
            let z = e.op("Sub", &[&features, &mn], vec![]);
            let mut z = e.op("Div", &[&z, &sn], vec![]);
            let mut classes = dim;
            for (i, (w, b, inp, out)) in h.layers.iter().enumerate() {
                if i > 0 {
                    z = e.op("Relu", &[&z], vec![]);
                }
                if *inp != classes || w.len() != inp * out || b.len() != *out {
                    return Err(unsupported(format!(
                        "a head layer of {inp} inputs on {classes} values"
                    )));
                }
                z = e.gemm(&z, w, b, *inp, *out);
                classes = *out;
            }
            Some((z, classes))
        }
        None if imagenet => {
            let (l, k) = e.get(g.logits)?;
            Some(e.flat(&l, k)?)
        }
        None => None,
    };
    if let Some((l, classes)) = logits {
        e.output(&l, "logits");
        outputs.insert(0, tensor_info("logits", &[None, Some(classes)]));
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "whisker".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: String::new(),
        graph: Some(GraphProto {
            node: e.nodes,
            name: m.name.into(),
            initializer: e.inits,
            doc_string: String::new(),
            input: vec![tensor_info(
                "pixels",
                &[None, Some(3), Some(m.size), Some(m.size)],
            )],
            output: outputs,
        }),
        metadata_props: m
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    };
    let len = prost::Message::encoded_len(&model);
    if len > MAX_PROTOBUF {
        return Err(Error::Invalid(format!(
            "{}: the ONNX model would be {:.2} GB, over protobuf's 2 GiB limit that ONNX Runtime and onnx enforce (export to PyTorch instead: --format torch)",
            m.name,
            len as f64 / 1e9
        )));
    }
    Ok(model.encode_to_vec())
}

/// The largest protobuf message ONNX readers parse (2 GiB − 1).
pub const MAX_PROTOBUF: usize = (1 << 31) - 1;

/// What an ONNX model (one whisker wrote) declares: its inputs and outputs with their
/// shapes (`-1`: the dynamic batch), its opset and metadata, the node inputs that nothing
/// computes, the weights no node uses, and its size in weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub inputs: Vec<(String, Vec<i64>)>,
    pub outputs: Vec<(String, Vec<i64>)>,
    pub opset: i64,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub nodes: usize,
    pub weights: usize,
    pub dangling: Vec<String>,
    pub unused: Vec<String>,
}

/// Read `bytes` back (the checks of tests and of `whisker export`).
pub fn summary(bytes: &[u8]) -> Result<Summary> {
    use std::collections::HashSet;
    let m =
        ModelProto::decode(bytes).map_err(|e| Error::Invalid(format!("not an ONNX model: {e}")))?;
    let g = m.graph.unwrap_or_default();
    let dims = |v: &ValueInfoProto| -> (String, Vec<i64>) {
        let shape = v
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.dim.iter().map(|d| d.dim_value.unwrap_or(-1)).collect())
            .unwrap_or_default();
        (v.name.clone(), shape)
    };
    let mut known: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    known.extend(g.initializer.iter().map(|t| t.name.as_str()));
    let mut used = HashSet::new();
    let mut dangling = Vec::new();
    for n in &g.node {
        for i in &n.input {
            if !known.contains(i.as_str()) {
                dangling.push(i.clone());
            }
            used.insert(i.as_str());
        }
        known.extend(n.output.iter().map(|o| o.as_str()));
    }
    let unused = g
        .initializer
        .iter()
        .filter(|t| !used.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    Ok(Summary {
        inputs: g.input.iter().map(dims).collect(),
        outputs: g.output.iter().map(dims).collect(),
        opset: m.opset_import.first().map_or(0, |o| o.version),
        metadata: m
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect(),
        nodes: g.node.len(),
        weights: g
            .initializer
            .iter()
            .filter(|t| t.data_type == data_type::FLOAT)
            .map(|t| t.raw_data.len() / 4)
            .sum(),
        dangling,
        unused,
    })
}
