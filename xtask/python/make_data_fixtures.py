"""Golden fixtures for mlae-data, made with Pillow and torchvision themselves.

pil_resample.json: a small deterministic RGB image (photo-like gradients plus noise) and what
Pillow's `Image.resize` gives for it with BICUBIC and BILINEAR at several sizes (down, up,
one axis only, and the height shrinking faster than the width, which Pillow 13 resamples
vertically first), what torchvision's `Resize(s) + CenterCrop(c)` gives (the FGVC evaluation
transform, PIL input, default bilinear), and `resized_crop` on a fixed box (the crop step of
RandomResizedCrop). Pixels are hex strings of packed RGB rows. The Rust resampler and
transforms must reproduce every byte.

Needs pillow==13.0.0 (whose pass-order rule the Rust code follows) and torchvision==0.26.0,
both in the project venv. Run:
    .venv/bin/python xtask/python/make_data_fixtures.py crates/mlae-data/tests/fixtures
"""
import json
import sys
from pathlib import Path

import PIL
import torchvision
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F


def source_image(w: int, h: int) -> Image.Image:
    state = 12345
    data = bytearray()
    for y in range(h):
        for x in range(w):
            px = []
            for c in range(3):
                state = (state * 1103515245 + 12345) & 0x7FFFFFFF
                noise = (state >> 16) % 31 - 15
                base = [40 + 6 * x, 220 - 8 * y, 128 + 3 * (x - y)][c]
                px.append(max(0, min(255, base + noise)))
            data.extend(px)
    return Image.frombytes("RGB", (w, h), bytes(data))


def hexof(img: Image.Image) -> str:
    assert img.mode == "RGB"
    return img.tobytes().hex()


def main(out_dir: Path) -> None:
    if PIL.__version__ != "13.0.0" or not torchvision.__version__.startswith("0.26.0"):
        sys.exit(f"needs pillow 13.0.0 and torchvision 0.26.0, found {PIL.__version__}, {torchvision.__version__}")
    src = source_image(37, 23)
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    resizes = []
    for name, flt in filters.items():
        for w, h in [(16, 16), (50, 30), (37, 10), (12, 23), (5, 40), (64, 48), (30, 6), (50, 12)]:
            resizes.append({"filter": name, "width": w, "height": h, "pixels": hexof(src.resize((w, h), flt))})
    center = []
    for resize, crop in [(20, 16), (56, 48), (23, 23)]:
        tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])
        center.append({"resize": resize, "crop": crop, "pixels": hexof(tf(src))})
    crops = []
    for top, left, height, width, size in [(3, 5, 15, 20, 16), (0, 0, 23, 37, 8), (10, 30, 13, 7, 12)]:
        out = F.resized_crop(src, top, left, height, width, [size, size], InterpolationMode.BILINEAR)
        crops.append({"top": top, "left": left, "height": height, "width": width, "size": size, "pixels": hexof(out)})
    fixture = {
        "generator": "xtask/python/make_data_fixtures.py",
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
        "width": src.width,
        "height": src.height,
        "source": hexof(src),
        "resize": resizes,
        "resize_center_crop": center,
        "resized_crop": crops,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pil_resample.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "crates/mlae-data/tests/fixtures"))
