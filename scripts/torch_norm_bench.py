#!/usr/bin/env python3
"""Times PyTorch's layer_norm, rms_norm, group_norm, instance_norm and batch_norm on the shapes
of `cargo run --example bench` (benches/common/mod.rs: grid),
on the same GPU, so BENCHMARKS.md can give fused-norm's ratio to PyTorch.

Each op is timed with CUDA events (median of repeated runs after warm-up), next to a plain
device copy of the same bytes (y.copy_(x)): the same "x copy" ratio the Rust table reports.

usage: python3 scripts/torch_norm_bench.py [--json FILE]
"""
import json
import sys

import torch
import torch.nn.functional as F

LN = [(65536, 64), (16384, 256), (16384, 768), (4096, 1024), (2048, 4096), (512, 16384), (256, 65536),
      (64, 65536), (8, 65536)]
BN = [((32, 64, 56, 56), "NCHW"), ((256, 256, 14, 14), "NCHW"), ((256, 14, 14, 256), "NHWC"), ((4096, 1024), "NCHW"),
      ((32, 56, 56, 64), "NHWC")]
# (op, groups or None for InstanceNorm, NCHW shape); each also channels-last.
IMAGES = [("group_norm", 32, (32, 64, 56, 56)), ("group_norm", 32, (8, 512, 64, 64)), ("group_norm", 32, (1, 512, 64, 64)),
          ("instance_norm", None, (32, 64, 56, 56)), ("instance_norm", None, (1, 64, 512, 512))]


def median_ms(fn, reps=50, warm=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    out = None
    if "--json" in sys.argv:
        out = sys.argv[sys.argv.index("--json") + 1]
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print("| op | shape | layout | dtype | MB moved | ms | GB/s | x copy |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    rows = []

    def report(op, shape, layout, x, fn, copies=1):
        # `copies` x-sized copies are the bytes the op must move at least (a forward: x in, y
        # out = 1 copy; a backward: x and dy in, dx out = 1.5 copies), timed as one copy of
        # that many bytes so the ratio compares like with like.
        n = int(x.numel() * copies)
        src = torch.empty(n, dtype=x.dtype, device=x.device).normal_()
        dst = torch.empty_like(src)
        copy = median_ms(lambda: dst.copy_(src))
        ms = median_ms(fn)
        nbytes = 2 * n * x.element_size()
        dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[x.dtype]
        r = dict(op=op, shape=list(shape), layout=layout, dtype=dtype, bytes=nbytes, median_ms=ms,
                 gbps=nbytes / ms / 1e6, copy_ms=copy, ratio_to_copy=ms / copy, impl="torch")
        rows.append(r)
        print(f"| {op} | {list(shape)} | {layout} | {dtype} | {nbytes / 1e6:.1f} | {ms:.4f} | {r['gbps']:.1f} | {r['ratio_to_copy']:.2f} |")

    for rows_, d in LN:
        x = torch.randn(rows_, d, device=dev)
        w = torch.randn(d, device=dev)
        b = torch.randn(d, device=dev)
        report("layer_norm", (rows_, d), "rows", x, lambda: F.layer_norm(x, (d,), w, b, 1e-5))
        if hasattr(F, "rms_norm"):
            report("rms_norm", (rows_, d), "rows", x, lambda: F.rms_norm(x, (d,), w, 1e-6))
    for op, groups, (n, c, h, wd) in IMAGES:
        w = torch.randn(c, device=dev)
        b = torch.randn(c, device=dev)
        for layout in ("NCHW", "NHWC"):
            x = torch.randn(n, c, h, wd, device=dev)
            shape = (n, c, h, wd)
            if layout == "NHWC":
                x = x.to(memory_format=torch.channels_last)
                shape = (n, h, wd, c)
            if groups is None:
                fn = lambda: F.instance_norm(x, weight=w, bias=b, eps=1e-5)
            else:
                fn = lambda: F.group_norm(x, groups, w, b, 1e-5)
            report(op, shape, layout, x, fn)
    for shape, layout in BN:
        if layout == "NHWC":
            n, h, wd, c = shape
            x = torch.randn(n, c, h, wd, device=dev).to(memory_format=torch.channels_last)
        else:
            c = shape[1]
            x = torch.randn(*shape, device=dev)
        w = torch.randn(c, device=dev)
        b = torch.randn(c, device=dev)
        rm = torch.zeros(c, device=dev)
        rv = torch.ones(c, device=dev)
        report("batch_norm_train", shape, layout, x,
               lambda: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5))
        report("batch_norm_eval", shape, layout, x,
               lambda: F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5))
    # Backward (examples/bench_backward.rs's shapes): autograd.grad on a graph built once, so
    # only the backward kernels run; bytes = x and dy read, dx written.
    def backward(op, shape, layout, x, forward, params):
        x = x.detach().requires_grad_(True)
        y = forward(x)
        dy = torch.randn_like(y)
        report(op + " backward", shape, layout, x,
               lambda: torch.autograd.grad(y, [x] + params, dy, retain_graph=True), copies=1.5)

    for d in (768, 1024, 4096, 65536):
        x = torch.randn(64, d, device=dev)
        w = torch.randn(d, device=dev, requires_grad=True)
        b = torch.randn(d, device=dev, requires_grad=True)
        backward("layer_norm", (64, d), "rows", x, lambda t: F.layer_norm(t, (d,), w, b, 1e-5), [w, b])
        if hasattr(F, "rms_norm"):
            backward("rms_norm", (64, d), "rows", x, lambda t: F.rms_norm(t, (d,), w, 1e-6), [w])
    for layout in ("NCHW", "NHWC"):
        x = torch.randn(32, 64, 56, 56, device=dev)
        shape = (32, 64, 56, 56)
        if layout == "NHWC":
            x = x.to(memory_format=torch.channels_last)
            shape = (32, 56, 56, 64)
        w = torch.randn(64, device=dev, requires_grad=True)
        b = torch.randn(64, device=dev, requires_grad=True)
        rm, rv = torch.zeros(64, device=dev), torch.ones(64, device=dev)
        backward("batch_norm train", shape, layout, x,
                 lambda t: F.batch_norm(t, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5), [w, b])
        backward("batch_norm eval", shape, layout, x,
                 lambda t: F.batch_norm(t, rm, rv, w, b, training=False, eps=1e-5), [w, b])
        backward("group_norm(32)", shape, layout, x, lambda t: F.group_norm(t, 32, w, b, 1e-5), [w, b])
        backward("instance_norm", shape, layout, x,
                 lambda t: F.instance_norm(t, weight=w, bias=b, eps=1e-5), [w, b])

    # Half precision (examples/bench_half.rs's shapes), f32 weights as in mixed precision, and
    # the unfused residual add + LayerNorm that `forward_add` replaces.
    for rows_, d in ((16384, 768), (2048, 4096)):
        for dt in (torch.float16, torch.bfloat16):
            x = torch.randn(rows_, d, device=dev).to(dt)
            res = torch.randn(rows_, d, device=dev).to(dt)
            w = torch.randn(d, device=dev, dtype=dt)
            b = torch.randn(d, device=dev, dtype=dt)
            report("layer_norm", (rows_, d), "rows", x, lambda: F.layer_norm(x, (d,), w, b, 1e-5))
            if hasattr(F, "rms_norm"):
                report("rms_norm", (rows_, d), "rows", x, lambda: F.rms_norm(x, (d,), w, 1e-6))
            report("add + layer_norm", (rows_, d), "rows", x,
                   lambda: F.layer_norm(x + res, (d,), w, b, 1e-5), copies=2)

    if out:
        with open(out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
