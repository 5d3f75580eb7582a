"""Loads mlae-vit's exports with timm and PEFT and compares their logits with the Rust ones.

Called by crates/mlae-vit/tests/python_exports.rs with a directory holding `cases.json`:

    {"tolerance": 1e-5, "cases": [{"name": ..., "timm_model": ..., "timm_kwargs": {...},
      "input": "x.safetensors", "logits": "case/logits.safetensors",
      "merged": "case/merged.safetensors",            # optional
      "peft": "case/peft", "base": "/path/backbone.safetensors"}]}   # optional

For each case:
- merged: `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=merged,
  num_classes=C), **kwargs)` (timm drops the file's head unless the overlay's num_classes is C);
- peft: the timm model on the base backbone, then `PeftModel.from_pretrained(model, dir)`.
Prints one line per check and exits 1 when any logit differs by more than the tolerance.

Run:  .venv/bin/python xtask/python/check_exports.py DIR
It installs its pinned packages into the running interpreter when they are missing.
"""
import json
import sys
from pathlib import Path


from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("torch", "torchvision", "timm", "peft", "safetensors")

import timm  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def timm_model(case: dict, file: str) -> torch.nn.Module:
    kw = dict(case["timm_kwargs"])
    overlay = dict(file=file, num_classes=kw["num_classes"])
    return timm.create_model(case["timm_model"], pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()


def main() -> int:
    root = Path(sys.argv[1])
    spec = json.loads((root / "cases.json").read_text())
    tol = spec["tolerance"]
    failed = 0
    torch.set_num_threads(1)
    for case in spec["cases"]:
        x = load_file(str(root / case["input"]))["x"]
        want = load_file(str(root / case["logits"]))["logits"]
        checks = []
        if "merged" in case:
            checks.append(("timm merged", lambda: timm_model(case, str(root / case["merged"]))))
        if "peft" in case:
            def peft_model(case=case):
                base = timm_model(case, case["base"])
                return PeftModel.from_pretrained(base, str(root / case["peft"])).eval()
            checks.append(("PEFT adapter", peft_model))
        for what, build in checks:
            with torch.no_grad():
                got = build()(x)
            diff = (got - want).abs().max().item()
            ok = diff <= tol
            failed += not ok
            print(f"{case['name']}: {what}: max abs diff {diff:.3e} ({'ok' if ok else 'FAILED'}, tolerance {tol:.0e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
