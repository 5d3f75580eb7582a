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
- peft_lora.safetensors: a PEFT LoRA (r 4, alpha 8, targets qkv and fc1, non-zero random B) on
  the tiny ViT: its lora_A / lora_B and the PeftModel's logits.
- mlae_layer.safetensors: one MLAE layer from the formula
  `y = x W^T + b + ((x A^T) * repeat_k(lambda * s)) B` with 3 experts of rank 2 and given mask
  scales s, forward and backward of `sum(y * g)`: y and the gradients of x, A, B, lambda; plus an
  inference case (s = 1).

Run:  .venv/bin/python xtask/python/make_vit_fixtures.py [out_dir]
It installs its pinned packages into the running interpreter when they are missing.
"""
import json
import sys
from pathlib import Path


from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("torch", "torchvision", "timm", "peft", "safetensors")

import torch  # noqa: E402
import timm  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
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


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "crates/mlae-vit/tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    backbone_fixture(out, TINY_VIT, "tiny_vit", [48, 24], seed=1)
    backbone_fixture(out, TINY_DINOV2, "tiny_dinov2", [42], seed=2)
    pos_resample_fixture(out, seed=3)
    peft_fixture(out, seed=4)
    mlae_layer_fixture(out, seed=5)
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote fixtures to {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
