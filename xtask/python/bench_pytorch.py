"""PyTorch reference for `cargo xtask bench --against pytorch` and `cargo xtask gpu-check`:
the same work as `mlae-cli bench`, written the way people write it today. Not a test.

- The model is timm's VisionTransformer (`--vit timm`, the default) or the same network in
  plain torch (`--vit plain`: no timm needed, for machines that only have torch), built from
  the exact architecture the Rust side reports (patch, width, depth, heads, MLP width, qkv
  bias, layer-scale); eager, or `--compile` (torch.compile, default inductor; the first
  warm-up step, which compiles, is reported as `compile_seconds`). fp32, or `--precision bf16`
  (torch.autocast to bfloat16 around the forward, fp32 weights).
- MLAE is written from the paper's formula with the official layer's semantics:
  base(x) + ((x @ A^T) * dropout(lambda)) @ B (one Bernoulli mask of the coefficients per call,
  survivors scaled by 1/(1-p); rank-k experts repeat their coefficient k times). LoRA is
  PEFT's (lora_alpha = r, so the scale is 1, like the Rust default).
- A training step is the Rust trainer's: a batch indexed from a resident uint8 dataset,
  normalisation, forward, cross-entropy, loss.item(), backward, AdamW over the trainable
  tensors only (same lr and weight decay), the accuracy count.
- Inference times the base model, the unmerged adapter and the merged adapter (the adapted
  nn.Linear replaced by one with the merged weight; PEFT's merge_and_unload for LoRA),
  interleaved per batch size, under torch.no_grad().
- Memory: CPU: the process's peak resident set (getrusage ru_maxrss, = VmHWM); CUDA: peak
  device memory in use (torch.cuda.mem_get_info, i.e. cuMemGetInfo), sampled after every step,
  as the Rust side samples it.

Prints one JSON object on its last line.
"""
import argparse
import copy
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LR = 5e-4
WEIGHT_DECAY = 1e-4
TARGETS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


class MLAELinear(nn.Module):
    """A frozen nn.Linear plus n experts of rank k with trainable coefficients."""

    def __init__(self, base: nn.Linear, experts: int, expert_rank: int, coeff_init: float, p: float):
        super().__init__()
        self.base = base
        self.k = expert_rank
        self.A = nn.Parameter(torch.empty(experts * expert_rank, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(experts * expert_rank, base.out_features))
        self.lam = nn.Parameter(torch.full((experts,), float(coeff_init)))
        self.drop = nn.Dropout(p)

    def coefficients(self):
        c = self.drop(self.lam)
        return c if self.k == 1 else c.repeat_interleave(self.k)

    def forward(self, x):
        return self.base(x) + ((x @ self.A.t()) * self.coefficients()) @ self.B

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with W + B^T diag(lambda) A (inference: every expert on, unscaled)."""
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        lam = self.lam if self.k == 1 else self.lam.repeat_interleave(self.k)
        lin.weight.copy_(self.base.weight + (self.B.t() * lam) @ self.A)
        if self.base.bias is not None:
            lin.bias.copy_(self.base.bias)
        return lin.to(self.base.weight.device)


class PlainAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class PlainMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class PlainBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, qkv_bias, layer_scale_init):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PlainAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PlainMlp(dim, mlp_dim)
        init = layer_scale_init is not None
        self.ls1 = nn.Parameter(torch.full((dim,), layer_scale_init)) if init else None
        self.ls2 = nn.Parameter(torch.full((dim,), layer_scale_init)) if init else None

    def forward(self, x):
        a = self.attn(self.norm1(x))
        x = x + (a * self.ls1 if self.ls1 is not None else a)
        m = self.mlp(self.norm2(x))
        return x + (m * self.ls2 if self.ls2 is not None else m)


class PlainViT(nn.Module):
    """timm's VisionTransformer (class token, pre-norm blocks, final norm, head on the class
    token) in plain torch, with timm's module names, so the adapters attach the same way."""

    def __init__(self, args):
        super().__init__()
        d = args.dim
        self.patch_embed = nn.Conv2d(3, d, args.patch_size, stride=args.patch_size)
        tokens = 1 + (args.image_size // args.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        ls = args.layer_scale_init if args.layer_scale else None
        self.blocks = nn.ModuleList(PlainBlock(d, args.heads, args.mlp_dim, args.qkv_bias, ls)
                                    for _ in range(args.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, args.classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def vit(args):
    if args.vit == "plain":
        return PlainViT(args)
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=args.image_size,
        patch_size=args.patch_size,
        embed_dim=args.dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_dim / args.dim,
        qkv_bias=args.qkv_bias,
        init_values=args.layer_scale_init if args.layer_scale else None,
        num_classes=args.classes,
        global_pool="token",
        class_token=True,
    )


def adapted_modules(model, targets):
    for blk in model.blocks:
        for t in targets:
            parent_name, child = TARGETS[t]
            yield getattr(blk, parent_name), child


def build(args, kind):
    """timm ViT with the adapter `kind`: none (base), mlae, lora, linear-probe, full."""
    model = vit(args)
    if kind in ("none", "full"):
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.experts, lora_alpha=args.experts, target_modules=args.targets,
                         lora_dropout=args.dropout, modules_to_save=["head"])
        return get_peft_model(model, cfg)
    if kind == "mlae":
        for parent, child in adapted_modules(model, args.targets):
            setattr(parent, child, MLAELinear(getattr(parent, child), args.experts, args.expert_rank, 1.0,
                                              args.dropout))
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def merge(model, kind, targets):
    if kind == "lora":
        return model.merge_and_unload()
    for parent, child in adapted_modules(model, targets):
        setattr(parent, child, getattr(parent, child).merged())
    return model


def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Mem:
    def __init__(self, device):
        self.device = device
        self.peak = 0.0

    def sample(self):
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            self.peak = max(self.peak, (total - free) / 2**20)

    def peak_mb(self):
        if self.device.type == "cuda":
            self.sample()
            return self.peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def measure(self):
        if self.device.type == "cuda":
            return ("peak device memory in use, sampled after every step (torch.cuda.mem_get_info: "
                    "context + caching allocator), fresh process")
        return "peak resident set size of the process (ru_maxrss = VmHWM), fresh process"


def median(v):
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mean_std(device):
    m = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    return m, s


def preprocess(u8_nhwc, ms):
    x = u8_nhwc.permute(0, 3, 1, 2).float() / 255.0
    return (x - ms[0]) / ms[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args, device):
    torch.manual_seed(args.seed)
    mem = Mem(device)
    model = build(args, args.adapter).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if args.compile else model
    bf16 = args.precision == "bf16"
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    n = 4 * args.batch
    images = torch.randint(0, 256, (n, args.image_size, args.image_size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (n,), device=device)
    ms = mean_std(device)
    setup = mem.peak_mb() if device.type == "cuda" else rss_mb("VmRSS")
    times, losses, loss_value, first_step = [], [], float("nan"), None
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        torch.manual_seed(args.seed ^ step)
        first = (step % 4) * args.batch
        index = torch.arange(first, first + args.batch, device=device)
        x = preprocess(images.index_select(0, index), ms)
        y = labels.index_select(0, index)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x).float()
        loss = F.cross_entropy(logits, y)
        loss_value = loss.item()
        losses.append(loss_value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            _correct = (logits.argmax(-1) == y).sum().item()
        secs = time.perf_counter() - t0
        mem.sample()
        if step == 0:
            first_step = secs
        if step >= args.warmup:
            times.append(secs)
    if not math.isfinite(loss_value):
        raise SystemExit(f"the loss became {loss_value}")
    return {
        "train_img_per_s": args.batch / median(times),
        "peak_mem_mb": mem.peak_mb(),
        "train": {
            "train_img_per_s": args.batch / median(times),
            "step_seconds": times,
            "peak_mem_mb": mem.peak_mb(),
            "setup_mem_mb": setup,
            "mem_measure": mem.measure(),
            "trainable_params": sum(p.numel() for p in params),
            "last_loss": loss_value,
            "losses": losses,
            "first_step_seconds": first_step,
            "compile_seconds": first_step if args.compile else None,
        },
    }


@torch.no_grad()
def randomise_adapters(model):
    for name, p in model.named_parameters():
        if p.requires_grad and (name.endswith(".B") or "lora_B" in name):
            p.copy_(torch.randn_like(p) * 0.01)


def bench_infer(args, device):
    # The same seed before each build gives the same backbone and head (the adapter is added
    # after the ViT is initialised).
    torch.manual_seed(args.seed)
    base = build(args, "none").to(device).eval()
    torch.manual_seed(args.seed)
    unmerged = build(args, args.adapter).to(device).eval()
    randomise_adapters(unmerged)
    merged = merge(copy.deepcopy(unmerged), args.adapter, args.targets).eval()
    ms = mean_std(device)
    variants = [("base", base), ("unmerged", unmerged), ("merged", merged)]
    with torch.no_grad():
        x = preprocess(torch.randint(0, 256, (2, args.image_size, args.image_size, 3), dtype=torch.uint8,
                                     device=device), ms)
        diff = (unmerged(x) - merged(x)).abs().max().item()
    if args.compile:
        # compiled: the merged model only (the figure that matters for deployment); the first
        # call at each batch size compiles and is a warm-up step
        variants = [("merged", torch.compile(merged))]
    times = {}
    for _ in range(args.rounds):
        for bs in args.infer_batches:
            x = preprocess(torch.randint(0, 256, (bs, args.image_size, args.image_size, 3), dtype=torch.uint8,
                                         device=device), ms)
            for name, model in variants:
                with torch.no_grad():
                    for i in range(args.warmup + args.steps):
                        t0 = time.perf_counter()
                        logits = model(x)
                        logits[0, 0].item()
                        secs = time.perf_counter() - t0
                        if i >= args.warmup:
                            times.setdefault((name, bs), []).append(secs)
    img_per_s = {}
    for (name, bs), t in times.items():
        img_per_s.setdefault(name, {})[str(bs)] = bs / median(t)
    out = {"infer": {"img_per_s": img_per_s, "merge_max_abs_diff": diff}}
    if "16" in img_per_s["merged"]:
        out["infer_img_per_s_bs16"] = img_per_s["merged"]["16"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["train", "infer"], required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--patch-size", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--mlp-dim", type=int, required=True)
    ap.add_argument("--qkv-bias", type=int, default=1)
    ap.add_argument("--layer-scale", type=int, default=0)
    ap.add_argument("--layer-scale-init", type=float, default=1e-5)
    ap.add_argument("--classes", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--infer-batches", default="1,4,16")
    ap.add_argument("--adapter", default="mlae", choices=["mlae", "lora", "linear-probe", "full"])
    ap.add_argument("--targets", default="qkv")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-rank", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vit", choices=["timm", "plain"], default="timm",
                    help="timm's VisionTransformer, or the same network in plain torch (no timm needed)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (training; for inference the merged model only)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast around the forward (training only)")
    args = ap.parse_args()
    if args.compile and args.warmup < 1:
        ap.error("--compile needs --warmup >= 1 (the first step compiles)")
    args.targets = args.targets.split(",")
    args.infer_batches = [int(b) for b in args.infer_batches.split(",")]
    args.qkv_bias = bool(args.qkv_bias)
    args.layer_scale = bool(args.layer_scale)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    result = bench_train(args, device) if args.mode == "train" else bench_infer(args, device)
    timm_version = None
    if args.vit == "timm":
        import timm

        timm_version = timm.__version__
    result.update({"impl": "pytorch", "torch": torch.__version__, "timm": timm_version, "vit": args.vit,
                   "compiled": args.compile, "precision": args.precision,
                   "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads(), "mode": args.mode})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
