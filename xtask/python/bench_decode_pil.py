"""Decode + resize throughput of PIL + torchvision: the reference side of `cargo xtask bench-data`.

What is timed: a multiprocessing pool of --workers processes (default 2, one per core on the
reference machine; forked after the imports) maps over the files in chunks of 8. Each task
opens the JPEG with PIL, converts it to RGB, applies
`torchvision.transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC)` to the
PIL image (which is PIL's antialiased bicubic `Image.resize`, what the VTAB-1k code does) and
turns the result into a uint8 numpy array. Workers return a checksum only, so sending pixels
back to the main process is not counted (this favours Python). Pool start-up and a warm-up
pass over the first images are not timed.

Prints one JSON object: images, seconds, img_per_s, workers, versions.
With --dump DIR, instead writes for the first --dump-count images the PIL-decoded RGB pixels
(`<i>.decoded.rgb`, with `<i>.shape` = "height width") and the resized pixels
(`<i>.resized.rgb`), for the numerical comparison, and times nothing.

Run by `cargo xtask bench-data`, which installs the pinned packages first
(torchvision==0.26.0, pillow==13.0.0).
"""
import argparse
import json
import multiprocessing as mp
import time
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

RESIZE = None


def init(size: int) -> None:
    global RESIZE
    torch.set_num_threads(1)
    RESIZE = transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC)


def work(path: str) -> int:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    out = np.asarray(RESIZE(rgb))
    return zlib.adler32(out.tobytes()[:64])


def dump(paths, size: int, out_dir: Path, count: int) -> None:
    init(size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths[:count]):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        (out_dir / f"{i}.decoded.rgb").write_bytes(rgb.tobytes())
        (out_dir / f"{i}.shape").write_text(f"{rgb.height} {rgb.width}")
        (out_dir / f"{i}.resized.rgb").write_bytes(np.asarray(RESIZE(rgb)).tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True, help="file with one image path a line")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dump", type=Path)
    ap.add_argument("--dump-count", type=int, default=20)
    args = ap.parse_args()
    paths = [p for p in Path(args.list).read_text().splitlines() if p]
    if args.dump:
        dump(paths, args.size, args.dump, args.dump_count)
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=init, initargs=(args.size,)) as pool:
        pool.map(work, paths[: min(len(paths), 4 * args.workers)], chunksize=1)
        start = time.perf_counter()
        checks = pool.map(work, paths, chunksize=8)
        seconds = time.perf_counter() - start
    assert len(checks) == len(paths)
    print(
        json.dumps(
            {
                "images": len(paths),
                "seconds": seconds,
                "img_per_s": len(paths) / seconds,
                "workers": args.workers,
                "pillow": PIL.__version__,
                "torchvision": torchvision.__version__,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
