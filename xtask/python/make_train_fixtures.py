"""Golden fixtures for mlae-train, made with PyTorch itself.

adamw.safetensors: torch.optim.AdamW (the PyTorch default implementation) over three
parameters for five steps with a changing learning rate, weight decay 1e-4, one parameter
without a gradient at step 2, and clip_grad_norm_ before each step. The Rust optimizer must
reproduce every intermediate parameter value.

Run through `cargo xtask fixtures` (which installs the pinned packages), or directly:
    .venv/bin/python xtask/python/make_train_fixtures.py crates/mlae-train/tests/fixtures
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def adamw_fixture(out: Path) -> None:
    g = torch.Generator().manual_seed(1234)
    shapes = {"a": (4, 3), "b": (5,), "lam": (2,)}
    params = {k: torch.nn.Parameter(torch.randn(*s, generator=g)) for k, s in shapes.items()}
    opt = torch.optim.AdamW(params.values(), lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    lrs = [5e-2, 4e-2, 3e-2, 2e-2, 1e-2]
    max_norm = 3.0
    tensors = {f"init.{k}": p.detach().clone() for k, p in params.items()}
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for k, p in params.items():
            if step == 2 and k == "b":
                continue  # no gradient for b at this step: AdamW must skip it
            grad = torch.randn(p.shape, generator=g) * (step + 1)
            tensors[f"grad{step}.{k}"] = grad.clone()
            p.grad = grad
        norm = torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], max_norm)
        tensors[f"norm{step}"] = norm.reshape(1).clone()
        opt.step()
        for k, p in params.items():
            tensors[f"after{step}.{k}"] = p.detach().clone()
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    tensors["max_norm"] = torch.tensor([max_norm], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adamw.safetensors"))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "crates/mlae-train/tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    adamw_fixture(out)
    print(f"wrote {out / 'adamw.safetensors'}")


if __name__ == "__main__":
    main()
