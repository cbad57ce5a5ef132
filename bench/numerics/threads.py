#!/usr/bin/env python
"""Which PyTorch CPU numerics settings make training thread-count invariant?

For every candidate configuration this script trains the digits CNN (the model
that ``examples/digits-cnn`` uses) in a *fresh* subprocess, once with
``torch.set_num_threads(1)`` and once with ``torch.set_num_threads(2)``.
Environment variables (MKL_CBWR, ONEDNN_*/DNNL_*, ATEN_CPU_CAPABILITY,
OMP_NUM_THREADS, MKL_NUM_THREADS) are set before torch is imported.  Each
worker reports the sha256 of the final state_dict (tensors in sorted name
order, ``.numpy().tobytes()``), the wall time of the training loop only, and
the held-out accuracy.  Rounds are interleaved over configurations so that
noise from the shared machine spreads evenly; timings are medians.

Run from the repository root:

    .venv/bin/python bench/numerics/threads.py            # full run (~8 min)
    .venv/bin/python bench/numerics/threads.py --repeats 1 --only mlp

Results are also written to bench/numerics/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SEED = 20231
EPOCHS = 15
BATCH = 64
LR = 1e-3

# Variables that influence numerics; scrubbed from the parent environment so
# that every worker starts from exactly what its configuration says.
SCRUB_PREFIXES = ("MKL_", "ONEDNN_", "DNNL_", "ATEN_CPU_CAPABILITY", "OMP_", "KMP_", "GOMP_")

MKL_BRANCH_NAMES = {
    0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3",
    7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512",
    13: "AVX512_MIC_E1", 14: "AVX512_E1",
}


# --------------------------------------------------------------------------
# Candidate configurations
# --------------------------------------------------------------------------
def _cfg(name, env=None, **kw):
    c = {
        "name": name,
        "env": env or {},
        "model": "cnn",          # "cnn" | "mlp"
        "det": True,             # torch.use_deterministic_algorithms(True)
        "mkldnn": True,          # torch.backends.mkldnn.enabled
        "mkldnn_det": False,     # torch.backends.mkldnn.deterministic
        "mkldnn_bwd": True,      # if False: oneDNN on for forward, off for backward
        "bwd_1thread": False,    # run backward with torch.set_num_threads(1)
        "conv": "nn",            # "nn" (nn.Conv2d) | "im2col" (unfold + one GEMM)
        "channels_last": False,
        "flush_denormal": False,
    }
    c.update(kw)
    return c


CBWR = {"MKL_CBWR": "COMPATIBLE"}
ISA_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

CONFIGS = [
    # 1-3: baseline, flag only, the known-good
    _cfg("default", det=False),
    _cfg("det"),
    _cfg("det+CBWR=COMPAT+mkldnn_off", CBWR, mkldnn=False),
    # 4: oneDNN on, its deterministic attribute
    _cfg("det+CBWR=COMPAT+mkldnn_on", CBWR),
    _cfg("det+CBWR=COMPAT+mkldnn.deterministic", CBWR, mkldnn_det=True),
    # 5: strict CNR modes, oneDNN on / off
    _cfg("det+CBWR=AVX2,STRICT+mkldnn_on", {"MKL_CBWR": "AVX2,STRICT"}),
    _cfg("det+CBWR=AVX512,STRICT+mkldnn_on", {"MKL_CBWR": "AVX512,STRICT"}),
    _cfg("det+CBWR=AUTO,STRICT+mkldnn_on", {"MKL_CBWR": "AUTO,STRICT"}),
    _cfg("det+CBWR=AVX2,STRICT+mkldnn_off", {"MKL_CBWR": "AVX2,STRICT"}, mkldnn=False),
    _cfg("det+CBWR=AVX512,STRICT+mkldnn_off", {"MKL_CBWR": "AVX512,STRICT"}, mkldnn=False),
    _cfg("det+CBWR=AUTO,STRICT+mkldnn_off", {"MKL_CBWR": "AUTO,STRICT"}, mkldnn=False),
    _cfg("det+mkldnn_off (no CBWR)", mkldnn=False),
    # 6: ISA pinned everywhere (oneDNN + ATen) with CBWR, oneDNN on
    _cfg("det+CBWR=COMPAT+ISA=avx2+mkldnn_on", {**CBWR, **ISA_AVX2}),
    _cfg("det+CBWR=COMPAT+ISA=avx2+mkldnn.det", {**CBWR, **ISA_AVX2}, mkldnn_det=True),
    _cfg("det+CBWR=COMPAT+ISA=avx2+mkldnn_off", {**CBWR, **ISA_AVX2}, mkldnn=False),
    # 7: explicit im2col conv (unfold + a single GEMM per conv)
    _cfg("det+CBWR=COMPAT+im2col", CBWR, conv="im2col"),
    _cfg("det+CBWR=COMPAT+im2col+mkldnn_off", CBWR, conv="im2col", mkldnn=False),
    _cfg("det+im2col (no CBWR)", conv="im2col"),
    _cfg("det+CBWR=AUTO,STRICT+im2col", {"MKL_CBWR": "AUTO,STRICT"}, conv="im2col"),
    # 8: other ideas
    _cfg("det+CBWR=COMPAT+mkldnn_fwd_only", CBWR, mkldnn_bwd=False),
    _cfg("det+CBWR=COMPAT+channels_last", CBWR, channels_last=True),
    _cfg("det+CBWR=COMPAT+bwd_1thread", CBWR, bwd_1thread=True),
    _cfg("det+CBWR=COMPAT+im2col+flush_denormal", CBWR, conv="im2col", flush_denormal=True),
    _cfg("det+CBWR=COMPAT+mkldnn_off+flush_denormal", CBWR, mkldnn=False, flush_denormal=True),
    # pure MLP 64->128->10 (Linear layers only)
    _cfg("mlp:default", model="mlp", det=False),
    _cfg("mlp:det", model="mlp"),
    _cfg("mlp:det+CBWR=COMPAT", CBWR, model="mlp"),
    _cfg("mlp:det+CBWR=AUTO,STRICT", {"MKL_CBWR": "AUTO,STRICT"}, model="mlp"),
    _cfg("mlp:det+mkldnn_off", model="mlp", mkldnn=False),
]


# --------------------------------------------------------------------------
# Worker: runs in a fresh interpreter, env already set by the parent
# --------------------------------------------------------------------------
def _mkl_cbwr_branch(torch):
    """Ask MKL which CNR branch is really in effect (None if not reachable)."""
    try:
        import ctypes

        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        f = lib.mkl_serv_cbwr_get
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int]
        v = f(1)  # MKL_CBWR_BRANCH
        name = MKL_BRANCH_NAMES.get(v & 0xFFFF, str(v & 0xFFFF))
        return name + (",STRICT" if v & 0x10000 else "")
    except Exception:  # pragma: no cover - diagnostic only
        return None


def worker(cfg: dict, threads: int) -> dict:
    import hashlib
    import random

    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    torch.set_num_threads(threads)
    if cfg["det"]:
        torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = cfg["mkldnn"]
    if cfg["mkldnn_det"]:
        torch.backends.mkldnn.deterministic = True
    if cfg["flush_denormal"]:
        torch.set_flush_denormal(True)

    class Im2colConv2d(nn.Conv2d):
        """Same parameters/initialisation as nn.Conv2d; forward is unfold + one GEMM.

        The (N*H*W, C*k*k) x (C*k*k, O) product makes every reduction (forward,
        grad-input, grad-weight over N*H*W) a single MKL sgemm.
        """

        def forward(self, x):
            n, _, h, w = x.shape
            k, p = self.kernel_size[0], self.padding[0]
            cols = F.unfold(x, k, padding=p)                       # (n, C*k*k, h*w)
            cols = cols.transpose(1, 2).reshape(n * h * w, -1)     # (n*h*w, C*k*k)
            out = F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias)
            return out.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    digits = load_digits()
    n_all = len(digits.target)
    X = (digits.images.astype(np.float32) / 16.0).reshape(n_all, 1, 8, 8)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(n_all)
    n_train = int(0.8 * n_all)
    tr, te = perm[:n_train], perm[n_train:]
    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    Xte, yte = torch.from_numpy(X[te]), torch.from_numpy(y[te])

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    if cfg["model"] == "cnn":
        Conv = Im2colConv2d if cfg["conv"] == "im2col" else nn.Conv2d
        model = nn.Sequential(
            Conv(1, 16, 3, padding=1), nn.ReLU(),
            Conv(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )
    else:
        Xtr, Xte = Xtr.reshape(len(Xtr), 64), Xte.reshape(len(Xte), 64)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        Xtr = Xtr.contiguous(memory_format=torch.channels_last)
        Xte = Xte.contiguous(memory_format=torch.channels_last)

    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(SEED)
    n = len(Xtr)
    mk = torch.backends.mkldnn

    model.train()
    t0 = time.perf_counter()
    for _epoch in range(EPOCHS):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            xb, yb = Xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            if not cfg["mkldnn_bwd"]:
                mk.enabled = True
            loss = loss_fn(model(xb), yb)
            if not cfg["mkldnn_bwd"]:
                mk.enabled = False
            if cfg["bwd_1thread"]:
                torch.set_num_threads(1)
            loss.backward()
            if cfg["bwd_1thread"]:
                torch.set_num_threads(threads)
            opt.step()
    elapsed = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()

    h = hashlib.sha256()
    sd = model.state_dict()
    for name in sorted(sd):
        h.update(sd[name].detach().cpu().contiguous().numpy().tobytes())
    return {
        "digest": h.hexdigest(),
        "time": elapsed,
        "acc": acc,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": _mkl_cbwr_branch(torch),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def child_env(cfg: dict, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES)}
    env.update(cfg["env"])
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_one(cfg: dict, threads: int) -> dict:
    payload = json.dumps({"cfg": cfg, "threads": threads})
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", payload],
        env=child_env(cfg, threads), capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {cfg['name']} t={threads}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (median taken)")
    ap.add_argument("--only", default=None, help="comma-separated substrings of config names")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
    args = ap.parse_args()

    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["cfg"], job["threads"])))
        return

    configs = CONFIGS
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        configs = [c for c in CONFIGS if c["name"] in ("default", "mlp:default")
                   or any(k in c["name"] for k in keys)]

    results: dict[str, dict[int, list[dict]]] = {c["name"]: {1: [], 2: []} for c in configs}
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for c in configs:
            # alternate the order of 1t/2t between rounds to cancel drift
            for t in ((1, 2) if r % 2 == 0 else (2, 1)):
                results[c["name"]][t].append(run_one(c, t))
        print(f"round {r + 1}/{args.repeats} done, {time.perf_counter() - t_start:.0f}s", file=sys.stderr)

    rows = []
    for c in configs:
        res = results[c["name"]]
        d1 = {x["digest"] for x in res[1]}
        d2 = {x["digest"] for x in res[2]}
        rows.append({
            "name": c["name"],
            "model": c["model"],
            "invariant": len(d1) == 1 and d1 == d2,
            "run_to_run": len(d1) == 1 and len(d2) == 1,
            "digest1": sorted(d1)[0][:12], "digest2": sorted(d2)[0][:12],
            "t1": statistics.median(x["time"] for x in res[1]),
            "t2": statistics.median(x["time"] for x in res[2]),
            "t1_all": [round(x["time"], 3) for x in res[1]],
            "t2_all": [round(x["time"], 3) for x in res[2]],
            "acc": res[2][0]["acc"],
            "acc_1t": res[1][0]["acc"],
            "cpu_capability": res[2][0]["cpu_capability"],
            "mkl_cbwr": res[2][0]["mkl_cbwr"],
            "cfg": c,
        })
    base = {r["model"]: r["t2"] for r in rows if r["name"] in ("default", "mlp:default")}

    first = results[configs[0]["name"]][1][0]
    print(f"\ntorch {first['torch']}, {os.cpu_count()} CPUs, repeats={args.repeats}, "
          f"epochs={EPOCHS}, total {time.perf_counter() - t_start:.0f}s")
    print("ratio = median 2-thread time / default config's median 2-thread time (same model)\n")
    hdr = (f"{'config':44s} {'1t==2t':6s} {'r2r':4s} {'t1 [s]':>7s} {'t2 [s]':>7s} "
           f"{'ratio':>6s} {'acc':>6s} {'ATen':7s} {'MKL CNR':18s} digest1/digest2")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ratio = r["t2"] / base[r["model"]] if r["model"] in base else float("nan")
        r["ratio"] = ratio
        dg = r["digest1"] if r["digest1"] == r["digest2"] else f"{r['digest1']}/{r['digest2']}"
        print(f"{r['name']:44s} {'YES' if r['invariant'] else 'no':6s} "
              f"{'ok' if r['run_to_run'] else 'NO':4s} {r['t1']:7.3f} {r['t2']:7.3f} "
              f"{ratio:6.2f} {r['acc']:6.4f} {r['cpu_capability']:7s} {str(r['mkl_cbwr']):18s} {dg}")

    with open(args.json, "w") as f:
        json.dump({"torch": first["torch"], "repeats": args.repeats, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
