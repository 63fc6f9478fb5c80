#!/usr/bin/env python3
"""lus vs PyTorch on one U-Net training step, in the same sitting.

Runs `lus bench unet-step --json` (the lus binary, built with `cargo build --release -p
lus-experiments`), then the same network in PyTorch — the U-Net class of
crates/lus-unet/tests/fixtures/make_reference.py, whose tensors are lus's — with the same
step (train-mode forward, cross-entropy, backward, AdamW) and the same shapes, and prints the
medians and the ratios. PyTorch is optional: without it only lus's figures are printed.

    python3 benches/pytorch_unet_step.py [--lus target/release/lus] [--batch 8] [--size 128]
        [--base 16] [--depth 4] [--classes 6] [--rounds 5] [--device cpu|cuda]
        [--precision f32|tf32|bf16] [--kernels lus|candle] [--json-out FILE]

Precision, on both sides: `f32` (PyTorch with TF32 switched off for cuDNN and matmul; note that
PyTorch's own default lets cuDNN convolutions use TF32), `tf32` (TF32 allowed), `bf16` (autocast:
bf16 convolutions, f32 weights and optimizer). `--json-out` appends one JSON line holding both
results (for the tables of benches/README.md).
"""

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_lus(args):
    cmd = [
        args.lus, "bench", "unet-step", "--json",
        "--batch", str(args.batch), "--size", str(args.size), "--base", str(args.base),
        "--depth", str(args.depth), "--classes", str(args.classes),
        "--rounds", str(args.rounds), "--device", args.device,
        "--precision", args.precision, "--kernels", args.kernels, "--conv3x3", args.conv3x3,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_torch(args):
    try:
        import torch
    except ImportError:
        return None
    spec = importlib.util.spec_from_file_location(
        "reference", ROOT / "crates/lus-unet/tests/fixtures/make_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    device = torch.device(args.device)
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    torch.manual_seed(0)
    model = reference.UNet(1, args.classes, args.depth, args.base, "batch", "transposed-conv").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        model.train()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        loss.item()
        sync()
        return (time.perf_counter() - start) * 1e3

    def forward():
        model.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            model(x).float().sum().item()
        sync()
        return (time.perf_counter() - start) * 1e3

    step()
    steps = [step() for _ in range(args.rounds)]
    device_memory = None
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        device_memory = {
            "device_memory_after_steps_mib": (total - free) / 2**20,
            "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "gpu": torch.cuda.get_device_name(),
        }
    forward()
    forwards = [forward() for _ in range(args.rounds)]
    return {
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "step_ms_median": statistics.median(steps),
        "forward_ms_median": statistics.median(forwards),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(device_memory or {}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lus", default=str(ROOT / "target/release/lus"))
    for name, default in [("batch", 8), ("size", 128), ("base", 16), ("depth", 4),
                          ("classes", 6), ("rounds", 5)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    parser.add_argument("--kernels", default="lus", choices=["lus", "candle"],
                        help="lus's kernels (CPU: its own ops; CUDA: convolutions as GEMMs) or candle's")
    parser.add_argument("--conv3x3", default="direct", choices=["direct", "gemm"],
                        help="lus's 3x3 convolutions on the CPU: direct AVX-512 kernels where they "
                             "apply, or im2col + GEMM everywhere")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    lus = run_lus(args)
    torch = run_torch(args)
    print(f"U-Net depth {args.depth}, base {args.base}, {args.classes} classes, batch "
          f"{args.batch} x 1 x {args.size} x {args.size} on {args.device}, {args.precision}; "
          f"{lus['gflop_per_step']:.1f} GFLOP per step; median of {args.rounds} rounds")
    print(f"{'':24} {'step ms':>9} {'forward ms':>11} {'peak RSS MiB':>13} threads")
    print(f"{'lus (' + lus['kernels'] + ', ' + lus.get('conv3x3', '?') + ')':24} {lus['step_ms_median']:9.1f} "
          f"{lus['forward_ms_median']:11.1f} {lus['peak_rss_mib'] or float('nan'):13.0f} {lus['threads']}")
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(json.dumps({"args": vars(args), "lus": lus, "torch": torch}) + "\n")
    if torch is None:
        print("PyTorch is not installed: no comparison", file=sys.stderr)
        return
    print(f"{torch['framework']:24} {torch['step_ms_median']:9.1f} {torch['forward_ms_median']:11.1f} "
          f"{torch['peak_rss_mib']:13.0f} {torch['threads']}")
    print(f"lus / PyTorch: step {lus['step_ms_median'] / torch['step_ms_median']:.2f}x, "
          f"forward {lus['forward_ms_median'] / torch['forward_ms_median']:.2f}x; "
          f"lus reaches {lus['step_gflops']:.1f} GFLOP/s in the step")
    if "device_memory_after_steps_mib" in torch:
        print(f"CUDA memory in use after the steps (driver): lus "
              f"{lus['device_memory_after_steps_mib']:.0f} MiB, PyTorch "
              f"{torch['device_memory_after_steps_mib']:.0f} MiB (its allocator's peak "
              f"{torch['max_memory_allocated_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
