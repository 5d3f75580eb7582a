"""The Python packages the project's scripts use, pinned in one place, and a helper that installs
the missing ones into the running interpreter (the project venv; CI starts bare).

torch must stay at the version tch links (2.11.0); torchvision 0.26.0 is the one built for it.
The Rust side pins the same versions where xtask installs packages itself.
"""
import importlib.metadata
import subprocess
import sys

PINNED = {
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "timm": "1.0.31",
    "peft": "0.21.2",
    "safetensors": "0.8.0",
    "transformers": "5.24.0",
    "onnx": "1.23.2",
    "onnxruntime": "1.31.1",
    "pillow": "13.0.0",
    "tensorboard": "2.21.0",
}


def ensure(*names: str) -> None:
    """Installs each named package at its pinned version unless that release is present (a
    local tag such as torch's `+cu130` does not count as another version)."""
    missing = []
    for name in names:
        version = PINNED[name]
        try:
            have = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            missing.append(f"{name}=={version}")
    if missing:
        print("installing", " ".join(missing), file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-input", *missing])
