"""Time and peak extra memory of the selection math (ssal.select.functional) on random inputs.

Each case runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own:
"extra" is the peak minus the resident size just before the call (inputs already built), and
the ratio divides it by the size of the case's main input matrix.

    .venv/bin/python scripts/bench_selection.py [--threads 2] [--only kcenter_greedy badge ...]

Bounds (issue 5, 2 CPU cores): kcenter_greedy N=100k (1k labeled), D=512, budget 1k <= 30 s with
extra memory <= 2x the features; badge N=50k, C=10, D=512, budget 1k <= 15 s; bald scoring
T=20, N=60k, C=10 <= 0.1 s. Issue 25: egl within 2x of entropy's time (entropy runs first);
bait and dfal at documented smaller sizes (bait: 5k candidates, budget 100; dfal: 1k images).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ssal.select import functional as Fn

# name -> (description, bound in seconds or None)
CASES = {
    "kcenter_greedy": ("N=100,000 (1,000 labeled), D=512, budget 1,000", 30.0),
    "badge": ("N=50,000, C=10, D=512, budget 1,000", 15.0),
    "bald": ("T=20, N=60,000, C=10", 0.1),
    "bald_passes": ("the T=20 MC-dropout passes: head of D=128, N=60,000", None),
    "entropy": ("N=60,000, C=10", None),
    "egl": ("N=60,000, C=10, D=128 (bound: 2x entropy's time)", None),
    "bait": ("N=5,000 (+100 labeled), C=10, D=128, budget 100", None),
    "dfal": ("DeepFool on N=1,000 28x28 images, cnn_small, <= 50 steps", None),
    "consistency": ("K=10, N=60,000, C=10", None),
    "cal": ("N=10,000 candidates, 1,000 labeled, D=512, k=10", None),
    "feature_similarity": ("N=60,000, 1,000 labeled, D=128", None),
    "probcover": ("N=60,000 (1,000 lab.), D=512, 10 clusters, budget 1,000", None),
    "label_propagation": ("N=60,000 (1,000 lab.), D=512, 10 clusters, k=50", None),
}


def _clustered(g: torch.Generator, n: int = 60_000, d: int = 512, c: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """SSL-like features: ``c`` Gaussian clusters whose noise is as large as their centres' spread."""
    y = torch.randint(0, c, (n,), generator=g)
    return torch.randn(c, d, generator=g)[y] + torch.randn(n, d, generator=g), y


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(name: str) -> dict:
    g = torch.Generator().manual_seed(0)
    if name == "kcenter_greedy":
        x = torch.randn(100_000, 512, generator=g)
        labeled = torch.zeros(len(x), dtype=torch.bool)
        labeled[torch.randperm(len(x), generator=g)[:1000]] = True
        main, call = x, lambda: Fn.kcenter_greedy(x, labeled, 1000)
    elif name == "badge":
        probs = torch.softmax(torch.randn(50_000, 10, generator=g) * 3, dim=1)
        h = torch.randn(50_000, 512, generator=g).relu_()
        main, call = h, lambda: Fn.badge(probs, h, 1000, generator=torch.Generator().manual_seed(0))
    elif name == "bald":
        mc = torch.softmax(torch.randn(20, 60_000, 10, generator=g), dim=2)
        main, call = mc, lambda: Fn.bald(mc)
    elif name == "bald_passes":  # what the signal pass does per chunk: dropout + linear head, T times
        h = torch.randn(60_000, 128, generator=g)
        head = torch.nn.Linear(128, 10)

        def passes():
            with torch.inference_mode():
                stream = Fn.BALDStream()
                for _ in range(20):
                    stream.update(torch.softmax(head(torch.nn.functional.dropout(h, 0.5, training=True)), dim=1))
                return stream.score()

        main, call = h, passes
    elif name == "entropy":
        p = torch.softmax(torch.randn(60_000, 10, generator=g), dim=1)
        main, call = p, lambda: Fn.entropy(p)
    elif name == "egl":
        p = torch.softmax(torch.randn(60_000, 10, generator=g), dim=1)
        h = torch.randn(60_000, 128, generator=g).relu_()
        main, call = h, lambda: Fn.egl(p, h)
    elif name == "bait":
        p = torch.softmax(torch.randn(5_100, 10, generator=g) * 2, dim=1)
        h = torch.randn(5_100, 128, generator=g).relu_()
        labeled = torch.zeros(5_100, dtype=torch.bool)
        labeled[:100] = True
        main, call = h, lambda: Fn.bait(p, h, labeled, 100)
    elif name == "dfal":  # a trained-looking model is not needed for the cost: steps until the class changes
        from ssal.models import build_model
        from ssal.recipe import ModelConfig

        spec = type("Spec", (), {"channels": 1, "num_classes": 10, "mean": (0.5,), "std": (0.25,),
                                 "image_size": (28, 28)})()
        torch.manual_seed(0)
        model = build_model(ModelConfig(), spec).eval()
        x = torch.rand(1_000, 1, 28, 28, generator=g)

        def deepfool():
            return torch.cat([Fn.deepfool(model, x[s:s + 250]) for s in range(0, len(x), 250)])

        main, call = x, deepfool
    elif name == "consistency":
        aug = torch.softmax(torch.randn(10, 60_000, 10, generator=g), dim=2)
        main, call = aug, lambda: Fn.consistency(aug)
    elif name == "cal":
        cf, lf = torch.randn(10_000, 512, generator=g), torch.randn(1000, 512, generator=g)
        cp = torch.softmax(torch.randn(10_000, 10, generator=g), dim=1)
        lp = torch.softmax(torch.randn(1000, 10, generator=g), dim=1)
        main, call = cf, lambda: Fn.cal(cf, cp, lf, lp, k=10)
    elif name == "feature_similarity":
        cf, lf = torch.randn(60_000, 128, generator=g), torch.randn(1000, 128, generator=g)
        ly = torch.randint(0, 10, (1000,), generator=g)
        main, call = cf, lambda: Fn.feature_similarity(cf, lf, ly)
    elif name == "probcover":
        from ssal.select.probcover import probcover

        x, _ = _clustered(g)
        labeled = torch.zeros(len(x), dtype=torch.bool)
        labeled[:1000] = True
        note = {}

        def call():
            picked, note["delta"] = probcover(x, labeled, 1000, g, clusters=10)
        main = x
    elif name == "label_propagation":
        from ssal.semi.label_propagation import certainty, knn_graph, propagate

        x, y = _clustered(g)
        note = {}

        def call():
            w = knn_graph(x, 50)
            z = propagate(w, torch.arange(1000).numpy(), y[:1000].numpy(), 10)
            note["pseudo_acc"] = float((z.argmax(1)[1000:] == y[1000:].numpy()).mean())
            note["certainty"] = float(certainty(z).mean())
            note["graph_mb"] = (w.data.nbytes + w.indices.nbytes + w.indptr.nbytes) / 2**20
        main = x
    else:
        raise SystemExit(f"unknown case {name}; choose from {', '.join(CASES)}")
    # fast ones: best of a few
    call_small = {"bald": 5, "bald_passes": 3, "entropy": 5, "egl": 5, "consistency": 5}.get(name, 1)
    before = _current_rss_mb()
    times = []
    for _ in range(call_small):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    extra = max(_rss_mb() - before, 0.0)
    input_mb = main.numel() * main.element_size() / 2**20
    return {"case": name, "seconds": min(times), "extra_mb": extra, "input_mb": input_mb,
            **(note if name in ("probcover", "label_propagation") else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=list(CASES))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs visible")
    print(f"{'case':<20} {'size':<52} {'time':>9} {'bound':>7} {'extra MB':>9} {'x input':>8}")
    failed = []
    seconds = {}
    for name in args.only:
        out = subprocess.run([sys.executable, __file__, "--case", name, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        desc, bound = CASES[name]
        seconds[name] = r["seconds"]
        if name == "egl" and "entropy" in seconds:  # the bound: within 2x of entropy, measured alike
            bound = 2 * seconds["entropy"]
        ok = bound is None or r["seconds"] <= bound
        mem_ok = name != "kcenter_greedy" or r["extra_mb"] <= 2 * r["input_mb"]
        if not (ok and mem_ok):
            failed.append(name)
        b = f"{bound:.3g} s" if bound is not None else "-"
        extra = {k: round(v, 4) for k, v in r.items() if k not in ("case", "seconds", "extra_mb", "input_mb")}
        print(f"{name:<20} {desc:<52} {r['seconds']:>7.3f} s {b:>7} {r['extra_mb']:>9.0f} "
              f"{r['extra_mb'] / r['input_mb']:>7.2f}x" + (f"  {extra}" if extra else ""))
    print("all bounds hold" if not failed else f"over a bound: {', '.join(failed)}")


if __name__ == "__main__":
    main()
