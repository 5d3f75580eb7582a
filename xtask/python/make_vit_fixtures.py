"""Golden fixtures for mlae-vit, made with timm, PEFT and PyTorch themselves.

Writes into crates/mlae-vit/tests/fixtures/ (all fp32, CPU, a few hundred KB in all):

- tiny_vit.safetensors: a tiny timm ViT (`vit_tiny_patch16_224` with img 32, patch 8, dim 32,
  2 blocks, 2 heads, MLP 128, 5 classes) with random weights of realistic magnitude (timm's own
  init leaves biases at 0 and weights near 0, which would hide mistakes).
- tiny_vit_io.safetensors: inputs and timm logits at the native 32 px, and at 48 px (grid 6x6,
  upsampled position table) and 24 px (grid 3x3, downsampled), where the timm model is created at
  that size and loads tiny_vit.safetensors through timm's own pretrained path
  (`pretrained_cfg_overlay=dict(file=..., num_classes=C)`, i.e. checkpoint_filter_fn ->
  resample_abs_pos_embed);
  also timm's resampled position tables.
- tiny_dinov2.safetensors / tiny_dinov2_io.safetensors: the same for a DINOv2-style model
  (`vit_small_patch14_dinov2` with img 28, patch 7, dim 32, 2 blocks, layer-scale gammas),
  at 28 px and 42 px.
- pos_resample.safetensors: timm's resample_abs_pos_embed of a 1+37x37 table (DINOv2's native
  grid) to 16x16 and 20x20.
- pos_resize.safetensors: the same table resized both ways the `PosResize` choice offers, by
  timm's resample_abs_pos_embed: `antialias{n}` (antialias=True, timm's default) and `bicubic{n}`
  (antialias=False, the DINOv2 code's plain bicubic) for n in 4 (the quickstart's 56 px grid),
  16 and 20.
- timm_init_stats.json: statistics of timm's fresh classifier (`vit_small_patch16_224`, 1000
  classes: `trunc_normal_(std=.02)`, bounds +-2 absolute) and of `trunc_normal_(std=1)` (where
  the bounds cut), for the init tests.
- peft_lora.safetensors: a PEFT LoRA (r 4, alpha 8, targets qkv and fc1, non-zero random B) on
  the tiny ViT: its lora_A / lora_B and the PeftModel's logits.
- mlae_layer.safetensors: one MLAE layer from the formula
  `y = x W^T + b + ((x A^T) * repeat_k(lambda * s)) B` with 3 experts of rank 2 and given mask
  scales s, forward and backward of `sum(y * g)`: y and the gradients of x, A, B, lambda; plus an
  inference case (s = 1).
- peft_dora.safetensors: a PEFT DoRA (`use_dora=True`, r 4, alpha 8, target qkv) on the tiny ViT
  with seeded non-zero A and B and magnitudes perturbed from PEFT's init: the factors, PEFT's
  initial magnitudes, the logits and the gradients of `sum(logits * g)` w.r.t. A, B and the
  magnitudes, the `merge_and_unload` qkv weights and logits; and one layer (block 0's qkv) alone,
  `sum(y * g)` for its captured input, at inference and in training with a fixed dropout mask.
  Metadata: the adapter file's key names and adapter_config.json fields of `save_pretrained`.

Run:  .venv/bin/python xtask/python/make_vit_fixtures.py [out_dir] [--only NAME,...]
(NAME: tiny_vit, tiny_dinov2, pos_resample, peft_lora, mlae_layer, peft_dora; default all).
Alone, a fixture is reproduced exactly only if it does not draw from torch's global RNG:
tiny_vit, tiny_dinov2 and peft_lora do (timm's and PEFT's init), so regenerate those in a full run;
peft_dora overwrites every drawn tensor with its own generator and needs tiny_vit.safetensors in
out_dir.
It installs its pinned packages into the running interpreter when they are missing.
"""
import argparse
import copy
import json
import tempfile
from pathlib import Path


from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("torch", "torchvision", "timm", "peft", "safetensors")

import torch  # noqa: E402
import timm  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402

TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                mlp_ratio=4.0, num_classes=5)
TINY_DINOV2 = dict(name="vit_small_patch14_dinov2", img_size=28, patch_size=7, embed_dim=32, depth=2,
                   num_heads=2, mlp_ratio=4.0, num_classes=3, init_values=1e-5)


def create(arch: dict, **over):
    kw = {k: v for k, v in arch.items() if k != "name"}
    kw.update(over)
    return timm.create_model(arch["name"], **kw).eval()


def overlay(arch: dict, ckpt: Path) -> dict:
    """timm drops the checkpoint's head unless the pretrained config's class count is the model's."""
    return dict(file=str(ckpt), num_classes=arch["num_classes"])


def randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Weights of realistic magnitude, so every term of the forward matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".gamma"):
                p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=g))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def backbone_fixture(out: Path, arch: dict, stem: str, sizes: list, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model = create(arch)
    randomize(model, g)
    ckpt = out / f"{stem}.safetensors"
    save_file(state_dict(model), str(ckpt))
    io = {}
    x = torch.randn(2, 3, arch["img_size"], arch["img_size"], generator=g)
    with torch.no_grad():
        io["x"] = x
        io["logits"] = model(x)
    for size in sizes:
        # timm's own loading path: the checkpoint's position table is resampled to the new grid
        m = create(arch, img_size=size, pretrained=True, pretrained_cfg_overlay=overlay(arch, ckpt))
        assert torch.equal(m.head.weight, model.head.weight), "timm did not load the checkpoint's head"
        x = torch.randn(1, 3, size, size, generator=g)
        with torch.no_grad():
            io[f"x{size}"] = x
            io[f"logits{size}"] = m(x)
            io[f"pos_embed{size}"] = m.pos_embed.detach().clone()
    meta = {"arch": json.dumps(arch), "sizes": json.dumps(sizes)}
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / f"{stem}_io.safetensors"), metadata=meta)


def pos_resample_fixture(out: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, 1 + 37 * 37, 4, generator=g)
    tensors = {"pos37": pos}
    for n in (16, 20):
        tensors[f"pos{n}"] = resample_abs_pos_embed(pos, new_size=[n, n], num_prefix_tokens=1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "pos_resample.safetensors"))


def pos_resize_fixture(out: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, 1 + 37 * 37, 4, generator=g)  # the table of pos_resample.safetensors
    tensors = {"pos37": pos}
    for n in (4, 16, 20):
        for mode, aa in (("antialias", True), ("bicubic", False)):
            tensors[f"{mode}{n}"] = resample_abs_pos_embed(pos, new_size=[n, n], num_prefix_tokens=1, antialias=aa)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "pos_resize.safetensors"))


def stats(t: torch.Tensor, std: float) -> dict:
    t = t.detach().double().flatten()
    return {
        "numel": t.numel(),
        "std": t.std().item(),
        "mean": t.mean().item(),
        "max_abs": t.abs().max().item(),
        "beyond_2std": (t.abs() > 2 * std).double().mean().item(),
        "beyond_3std": (t.abs() > 3 * std).double().mean().item(),
    }


def init_stats_fixture(out: Path, seed: int) -> None:
    with torch.random.fork_rng():  # leave the global stream of the later fixtures as it was
        torch.manual_seed(seed)
        head = timm.create_model("vit_small_patch16_224", num_classes=1000).head.weight
        wide = timm.layers.trunc_normal_(torch.empty(200_000), std=1.0)
    res = {
        "timm": timm.__version__,
        "head_vit_small_patch16_224_1000": stats(head, 0.02),
        "trunc_normal_std1": stats(wide, 1.0),
    }
    (out / "timm_init_stats.json").write_text(json.dumps(res, indent=1) + "\n")


def peft_fixture(out: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ckpt = out / "tiny_vit.safetensors"
    model = create(TINY_VIT, pretrained=True, pretrained_cfg_overlay=overlay(TINY_VIT, ckpt))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg).eval()
    tensors = {}
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            if "lora_A" in name or "lora_B" in name:
                # base_model.model.blocks.0.attn.qkv.lora_A.default.weight -> blocks.0.attn.qkv.lora_A
                key = name.replace("base_model.model.", "").replace(".default.weight", "")
                tensors[key] = p.detach().clone()
        x = torch.randn(2, 3, 32, 32, generator=g)
        tensors["x"] = x
        tensors["logits"] = peft_model(x)
    meta = {"r": "4", "lora_alpha": "8", "targets": json.dumps(["qkv", "fc1"])}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "peft_lora.safetensors"), metadata=meta)


def mlae_layer_fixture(out: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, k, d_in, d_out = 3, 2, 16, 24
    t = {
        "x": torch.randn(2, 5, d_in, generator=g),
        "w": torch.randn(d_out, d_in, generator=g) / d_in ** 0.5,
        "b": 0.1 * torch.randn(d_out, generator=g),
        "a": torch.empty(n * k, d_in).uniform_(-d_in ** -0.5, d_in ** -0.5, generator=g),
        "bb": 0.5 * torch.randn(n * k, d_out, generator=g),
        "lambda": torch.tensor([0.7, -1.3, 2.1]),
        "g": torch.randn(2, 5, d_out, generator=g),
    }
    cases = {"train": torch.tensor([2.0, 0.0, 2.0]), "eval": torch.ones(n)}
    res = dict(t)
    for case, s in cases.items():
        x = t["x"].clone().requires_grad_(True)
        a = t["a"].clone().requires_grad_(True)
        bb = t["bb"].clone().requires_grad_(True)
        lam = t["lambda"].clone().requires_grad_(True)
        coeff = (lam * s).repeat_interleave(k)
        y = x @ t["w"].T + t["b"] + ((x @ a.T) * coeff) @ bb
        (y * t["g"]).sum().backward()
        res[f"{case}.scales"] = s
        res[f"{case}.y"] = y.detach()
        res[f"{case}.grad_x"] = x.grad
        res[f"{case}.grad_a"] = a.grad
        res[f"{case}.grad_b"] = bb.grad
        res[f"{case}.grad_lambda"] = lam.grad
    save_file({k_: v.contiguous() for k_, v in res.items()}, str(out / "mlae_layer.safetensors"),
              metadata={"experts": str(n), "expert_rank": str(k)})


class FixedDropout(torch.nn.Module):
    """Dropout with a given (already rescaled) mask, so a training forward is reproducible
    outside PyTorch's RNG. It is not nn.Identity, so PEFT takes its dropout path."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def dora_fixture(out: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    r, alpha, d_in = 4, 8, TINY_VIT["embed_dim"]
    ckpt = out / "tiny_vit.safetensors"
    model = create(TINY_VIT, pretrained=True, pretrained_cfg_overlay=overlay(TINY_VIT, ckpt))
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_dora=True, target_modules=["qkv"], lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg).eval()
    tensors = {}
    params = {}
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if not p.requires_grad:
                continue
            # base_model.model.blocks.0.attn.qkv.lora_A.default.weight -> blocks.0.attn.qkv.lora_A
            key = name.replace("base_model.model.", "").replace(".default.weight", "")
            if key.endswith("lora_A"):
                p.uniform_(-d_in ** -0.5, d_in ** -0.5, generator=g)
            elif key.endswith("lora_B"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif key.endswith("lora_magnitude_vector"):
                # PEFT's init (||W|| per output row, B being 0 then), then moved so it matters
                tensors[key.replace("lora_magnitude_vector", "magnitude_init")] = p.detach().clone()
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                raise AssertionError(f"unexpected trainable parameter {name}")
            tensors[key] = p.detach().clone()
            params[key] = p
    assert len(params) == 6, "2 blocks x (A, B, magnitude)"

    # the whole model: logits and the gradients of a fixed loss
    qkv0 = peft_model.base_model.model.blocks[0].attn.qkv
    captured = {}

    def capture(_module, inputs, _output):  # returns None: the output is kept
        captured["x"] = inputs[0].detach().clone()

    hook = qkv0.register_forward_hook(capture)
    x = torch.randn(2, 3, 32, 32, generator=g)
    logits = peft_model(x)
    hook.remove()
    g_logits = torch.randn(logits.shape, generator=g)
    (logits * g_logits).sum().backward()
    tensors["x"] = x
    tensors["logits"] = logits.detach()
    tensors["g"] = g_logits
    for key, p in params.items():
        tensors[f"grad.{key}"] = p.grad.detach().clone()
        p.grad = None

    # one layer alone: block 0's qkv on its captured input, at inference and in training with a
    # fixed dropout mask (PEFT then recomputes the base term from the dropped input)
    base = qkv0.get_base_layer()
    tensors["layer.w"] = base.weight.detach().clone()
    tensors["layer.b"] = base.bias.detach().clone()
    lx = captured["x"]
    tensors["layer.x"] = lx
    lg = torch.randn(lx.shape[:-1] + (base.out_features,), generator=g)
    tensors["layer.g"] = lg
    p_drop = 0.25
    keep = (torch.rand(lx.shape, generator=g) >= p_drop).float() / (1.0 - p_drop)
    tensors["layer.train.mask"] = keep
    layer_keys = {"grad_a": "blocks.0.attn.qkv.lora_A", "grad_b": "blocks.0.attn.qkv.lora_B",
                  "grad_m": "blocks.0.attn.qkv.lora_magnitude_vector"}
    for case in ("eval", "train"):
        if case == "train":
            qkv0.lora_dropout["default"] = FixedDropout(keep)
            qkv0.train()
        xi = lx.clone().requires_grad_(True)
        y = qkv0(xi)
        (y * lg).sum().backward()
        tensors[f"layer.{case}.y"] = y.detach()
        tensors[f"layer.{case}.grad_x"] = xi.grad.detach().clone()
        for short, key in layer_keys.items():
            tensors[f"layer.{case}.{short}"] = params[key].grad.detach().clone()
            params[key].grad = None
        for p in params.values():
            p.grad = None
    qkv0.lora_dropout["default"] = torch.nn.Identity()
    qkv0.eval()

    # the saved adapter's key names and config, as PEFT writes them
    with tempfile.TemporaryDirectory() as d:
        peft_model.save_pretrained(d)
        with safe_open(str(Path(d) / "adapter_model.safetensors"), "pt") as fh:
            saved_keys = sorted(fh.keys())
        saved_cfg = json.loads((Path(d) / "adapter_config.json").read_text())
    cfg_fields = ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora",
                  "fan_in_fan_out", "bias", "lora_bias", "init_lora_weights"]

    # merge_and_unload: the merged qkv weights (bias untouched) and the merged model's logits
    with torch.no_grad():
        merged = copy.deepcopy(peft_model).merge_and_unload().eval()
        for i, blk in enumerate(merged.blocks):
            tensors[f"merged.blocks.{i}.attn.qkv.weight"] = blk.attn.qkv.weight.detach().clone()
            tensors[f"merged.blocks.{i}.attn.qkv.bias"] = blk.attn.qkv.bias.detach().clone()
        tensors["merged_logits"] = merged(x)
    meta = {
        "r": str(r),
        "lora_alpha": str(alpha),
        "targets": json.dumps(["qkv"]),
        "layer_dropout": str(p_drop),
        "adapter_keys": json.dumps(saved_keys),
        "adapter_config": json.dumps({k: saved_cfg.get(k) for k in cfg_fields}, sort_keys=True),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "peft_dora.safetensors"), metadata=meta)


FIXTURES = {
    "tiny_vit": lambda out: backbone_fixture(out, TINY_VIT, "tiny_vit", [48, 24], seed=1),
    "tiny_dinov2": lambda out: backbone_fixture(out, TINY_DINOV2, "tiny_dinov2", [42], seed=2),
    "pos_resample": lambda out: pos_resample_fixture(out, seed=3),
    "peft_lora": lambda out: peft_fixture(out, seed=4),
    "mlae_layer": lambda out: mlae_layer_fixture(out, seed=5),
    "peft_dora": lambda out: dora_fixture(out, seed=6),
    # last, so that the global RNG state the fixtures above see is unchanged
    "pos_resize": lambda out: pos_resize_fixture(out, seed=3),
    "init_stats": lambda out: init_stats_fixture(out, seed=6),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="crates/mlae-vit/tests/fixtures")
    ap.add_argument("--only", default=",".join(FIXTURES), help="comma-separated fixture names (in this order)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        ap.error(f"unknown fixtures {unknown}; known: {list(FIXTURES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    for name in FIXTURES:  # the fixed order, so the global RNG state each one sees is unchanged
        if name in names:
            FIXTURES[name](out)
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote fixtures to {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
