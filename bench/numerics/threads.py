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
    .venv/bin/python bench/numerics/threads.py --inner 1 --extra-threads "" --only mlp

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
        "nofill": False,         # torch.utils.deterministic.fill_uninitialized_memory = False
        "mkldnn": True,          # torch.backends.mkldnn.enabled
        "mkldnn_det": False,     # torch.backends.mkldnn.deterministic
        "mkldnn_bwd": True,      # if False: oneDNN on for forward, off for backward
        "bwd_1thread": False,    # run loss.backward() under torch.set_num_threads(1)
        "conv": "nn",            # "nn" | "unfold" (F.unfold + 1 GEMM) | "slices" (9 shifted views + 1 GEMM)
        "channels_last": False,
        "flush_denormal": False,
    }
    c.update(kw)
    return c


COMPAT = {"MKL_CBWR": "COMPATIBLE"}
STRICT = {"MKL_CBWR": "AUTO,STRICT"}
ISA_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
ONEDNN_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}

CONFIGS = [
    # 1-3: baseline, flag only, the previously "known-good" one
    _cfg("default", det=False),
    _cfg("det"),
    _cfg("det+COMPAT+mkldnn_off", COMPAT, mkldnn=False),
    # 4: oneDNN on, with and without its deterministic attribute
    _cfg("det+COMPAT", COMPAT),
    _cfg("det+COMPAT+mkldnn.deterministic", COMPAT, mkldnn_det=True),
    # 5: strict CNR, oneDNN on / off
    _cfg("det+AVX2,STRICT", {"MKL_CBWR": "AVX2,STRICT"}),
    _cfg("det+AVX512,STRICT", {"MKL_CBWR": "AVX512,STRICT"}),
    _cfg("det+AUTO,STRICT", STRICT),
    _cfg("det+AUTO,STRICT+mkldnn.deterministic", STRICT, mkldnn_det=True),
    _cfg("det+AVX2,STRICT+mkldnn_off", {"MKL_CBWR": "AVX2,STRICT"}, mkldnn=False),
    _cfg("det+AVX512,STRICT+mkldnn_off", {"MKL_CBWR": "AVX512,STRICT"}, mkldnn=False),
    _cfg("det+AUTO,STRICT+mkldnn_off", STRICT, mkldnn=False),
    _cfg("det+mkldnn_off (no CBWR)", mkldnn=False),
    # 6: ISA pinned (oneDNN and/or ATen) with CBWR, oneDNN on
    _cfg("det+COMPAT+ISA=avx2", {**COMPAT, **ISA_AVX2}),
    _cfg("det+AUTO,STRICT+ISA=avx2", {**STRICT, **ISA_AVX2}),
    _cfg("det+AUTO,STRICT+ONEDNN_ISA=avx2", {**STRICT, **ONEDNN_AVX2}),
    _cfg("det+AUTO,STRICT+ATEN=avx2+mkldnn_off", {**STRICT, "ATEN_CPU_CAPABILITY": "avx2"}, mkldnn=False),
    # 7: explicit im2col conv: one GEMM per conv (fixed reduction order given the GEMM)
    _cfg("det+COMPAT+unfold", COMPAT, conv="unfold"),
    _cfg("det+AUTO,STRICT+unfold", STRICT, conv="unfold"),
    _cfg("det+AUTO,STRICT+unfold+mkldnn_off", STRICT, conv="unfold", mkldnn=False),
    _cfg("det+unfold (no CBWR)", conv="unfold"),
    _cfg("det+AUTO,STRICT+slices", STRICT, conv="slices"),
    _cfg("det+AUTO,STRICT+slices+nofill", STRICT, conv="slices", nofill=True),
    # 8: other ideas
    _cfg("det+AUTO,STRICT+mkldnn_fwd_only", STRICT, mkldnn_bwd=False),
    _cfg("det+AUTO,STRICT+channels_last", STRICT, channels_last=True),
    _cfg("det+AUTO,STRICT+bwd_1thread", STRICT, bwd_1thread=True),
    _cfg("det+AUTO,STRICT+mkldnn_off+nofill", STRICT, mkldnn=False, nofill=True),
    _cfg("det+AUTO,STRICT+mkldnn_off+flush_denormal", STRICT, mkldnn=False, flush_denormal=True),
    _cfg("det+AUTO,STRICT+ONEDNN_ISA=avx2+nofill", {**STRICT, **ONEDNN_AVX2}, nofill=True),
    # pure MLP 64->128->10 (Linear layers only)
    _cfg("mlp:default", model="mlp", det=False),
    _cfg("mlp:det", model="mlp"),
    _cfg("mlp:det+COMPAT", COMPAT, model="mlp"),
    _cfg("mlp:det+AUTO,STRICT", STRICT, model="mlp"),
    _cfg("mlp:det+mkldnn_off (no CBWR)", model="mlp", mkldnn=False),
    _cfg("mlp:det+AUTO,STRICT+nofill", STRICT, model="mlp", nofill=True),
]


# --------------------------------------------------------------------------
# Worker: runs in a fresh interpreter, env already set by the parent
# --------------------------------------------------------------------------
def _mkl_cnr_mode(torch):
    """Ask MKL which CNR mode is really in effect (None if not reachable)."""
    try:
        import ctypes

        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        f = lib.mkl_serv_cbwr_get
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_int]
        v = f(-1)  # MKL_CBWR_ALL: branch | STRICT bit
        name = MKL_BRANCH_NAMES.get(v & 0xFFFF, str(v & 0xFFFF))
        return name + (",STRICT" if v & 0x10000 else "")
    except Exception:  # pragma: no cover - diagnostic only
        return None


def build_model(cfg: dict):
    import torch.nn as nn
    import torch.nn.functional as F

    class UnfoldConv2d(nn.Conv2d):
        """nn.Conv2d parameters/initialisation; forward = F.unfold + one GEMM.

        (N*H*W, C*k*k) x (C*k*k, O): forward, grad-input and grad-weight (the
        reduction over N*H*W) are each a single MKL sgemm.
        """

        def forward(self, x):
            n, _, h, w = x.shape
            k, p = self.kernel_size[0], self.padding[0]
            cols = F.unfold(x, k, padding=p)                       # (n, C*k*k, h*w)
            cols = cols.transpose(1, 2).reshape(n * h * w, -1)     # (n*h*w, C*k*k)
            out = F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias)
            return out.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    class SlicesConv2d(nn.Conv2d):
        """Same GEMM as UnfoldConv2d, but the columns are built from k*k shifted
        views of the padded input (no per-sample im2col/col2im loops)."""

        def forward(self, x):
            n, c, h, w = x.shape
            k, p = self.kernel_size[0], self.padding[0]
            xp = F.pad(x, (p, p, p, p))
            cols = torch_stack([xp[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)], 4)
            cols = cols.permute(0, 2, 3, 1, 4).reshape(n * h * w, c * k * k)  # (c, ki, kj) order
            out = F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias)
            return out.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    import torch
    torch_stack = torch.stack

    if cfg["model"] == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    Conv = {"nn": nn.Conv2d, "unfold": UnfoldConv2d, "slices": SlicesConv2d}[cfg["conv"]]
    return nn.Sequential(
        Conv(1, 16, 3, padding=1), nn.ReLU(),
        Conv(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_once(cfg: dict, threads: int, X, y):
    """One full training run from the seed; returns (loop seconds, accuracy, sha256)."""
    import hashlib
    import random

    import numpy as np
    import torch
    import torch.nn as nn

    n_all = len(y)
    perm = np.random.default_rng(SEED).permutation(n_all)
    n_train = int(0.8 * n_all)
    tr, te = perm[:n_train], perm[n_train:]
    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    Xte, yte = torch.from_numpy(X[te]), torch.from_numpy(y[te])
    if cfg["model"] == "mlp":
        Xtr, Xte = Xtr.reshape(len(Xtr), 64), Xte.reshape(len(Xte), 64)

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    model = build_model(cfg)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        Xtr = Xtr.contiguous(memory_format=torch.channels_last)
        Xte = Xte.contiguous(memory_format=torch.channels_last)

    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(SEED)
    n = len(Xtr)
    mk = torch.backends.mkldnn
    split_mkldnn = not cfg["mkldnn_bwd"]
    bwd1 = cfg["bwd_1thread"]

    model.train()
    t0 = time.perf_counter()
    for _epoch in range(EPOCHS):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            xb, yb = Xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            if split_mkldnn:
                mk.enabled = True
            loss = loss_fn(model(xb), yb)
            if split_mkldnn:
                mk.enabled = False
            if bwd1:
                torch.set_num_threads(1)
            loss.backward()
            if bwd1:
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
    return elapsed, acc, h.hexdigest()


def worker(cfg: dict, threads: int, data_path: str, inner: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    if cfg["det"]:
        torch.use_deterministic_algorithms(True)
    if cfg["nofill"]:
        torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.mkldnn.enabled = cfg["mkldnn"]
    if cfg["mkldnn_det"]:
        torch.backends.mkldnn.deterministic = True
    if cfg["flush_denormal"]:
        torch.set_flush_denormal(True)

    d = np.load(data_path)
    runs = [train_once(cfg, threads, d["X"], d["y"]) for _ in range(inner)]
    return {
        "times": [r[0] for r in runs],
        "accs": [r[1] for r in runs],
        "digests": [r[2] for r in runs],
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cnr": _mkl_cnr_mode(torch),
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


def run_one(cfg: dict, threads: int, data_path: str, inner: int) -> dict:
    payload = json.dumps({"cfg": cfg, "threads": threads, "data": data_path, "inner": inner})
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", payload],
        env=child_env(cfg, threads), capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {cfg['name']} t={threads}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_data(path: str) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    X = (digits.images.astype(np.float32) / 16.0).reshape(n, 1, 8, 8)
    y = digits.target.astype(np.int64)
    np.savez(path, X=X, y=y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--rounds", type=int, default=1,
                    help="fresh-subprocess rounds per (config, threads), interleaved over configs")
    ap.add_argument("--inner", type=int, default=3,
                    help="training runs per subprocess (timings: median over rounds*inner)")
    ap.add_argument("--extra-threads", default="3,4",
                    help="also check digests at these thread counts (1 run each, oversubscribed "
                         "on a 2-core box) for configs invariant at 1 vs 2; '' to skip")
    ap.add_argument("--only", default=None, help="comma-separated substrings of config names")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
    args = ap.parse_args()

    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["cfg"], job["threads"], job["data"], job["inner"])))
        return

    configs = CONFIGS
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        configs = [c for c in CONFIGS if c["name"] in ("default", "mlp:default")
                   or any(k in c["name"] for k in keys)]
    extra = [int(t) for t in args.extra_threads.split(",") if t.strip()]

    import tempfile

    tmp = tempfile.mkdtemp(prefix="reweigh-numerics-")
    data_path = os.path.join(tmp, "digits.npz")
    load_data(data_path)

    results: dict[str, dict[int, list[dict]]] = {c["name"]: {1: [], 2: []} for c in configs}
    t_start = time.perf_counter()
    try:
        for r in range(args.rounds):
            for c in configs:
                # alternate the order of 1t/2t between rounds to cancel drift
                for t in ((1, 2) if r % 2 == 0 else (2, 1)):
                    results[c["name"]][t].append(run_one(c, t, data_path, args.inner))
                print(f"  [{time.perf_counter() - t_start:5.0f}s] round {r + 1} {c['name']}", file=sys.stderr)

        rows = []
        for c in configs:
            res = results[c["name"]]
            d = {t: {dg for x in res[t] for dg in x["digests"]} for t in (1, 2)}
            times = {t: [v for x in res[t] for v in x["times"]] for t in (1, 2)}
            row = {
                "name": c["name"],
                "model": c["model"],
                "invariant": len(d[1]) == 1 and d[1] == d[2],
                "run_to_run": len(d[1]) == 1 and len(d[2]) == 1,
                "digest1": sorted(d[1])[0][:12], "digest2": sorted(d[2])[0][:12],
                "t1": statistics.median(times[1]), "t2": statistics.median(times[2]),
                "t1_all": [round(v, 3) for v in times[1]], "t2_all": [round(v, 3) for v in times[2]],
                "acc": res[2][0]["accs"][0], "acc_1t": res[1][0]["accs"][0],
                "cpu_capability": res[2][0]["cpu_capability"], "mkl_cnr": res[2][0]["mkl_cnr"],
                "extra": {}, "cfg": c,
            }
            if row["invariant"]:
                for t in extra:
                    x = run_one(c, t, data_path, 1)
                    row["extra"][t] = x["digests"][0] == sorted(d[1])[0]
                print(f"  [{time.perf_counter() - t_start:5.0f}s] extra threads {c['name']}", file=sys.stderr)
            rows.append(row)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

    base = {r["model"]: r["t2"] for r in rows if r["name"] in ("default", "mlp:default")}
    first = results[configs[0]["name"]][1][0]
    print(f"\ntorch {first['torch']}, {os.cpu_count()} CPUs, rounds={args.rounds} x inner={args.inner} "
          f"runs per (config, threads), epochs={EPOCHS}, total {time.perf_counter() - t_start:.0f}s")
    print("1t==2t: sha256 of final weights identical across all 1- and 2-thread runs; "
          "r2r: each thread count reproducible run-to-run;")
    print(f"more: digest also identical at {extra} threads (checked only if 1t==2t); "
          "ratio: median 2-thread time / default's median 2-thread time (same model)\n")
    hdr = (f"{'config':42s} {'1t==2t':6s} {'r2r':3s} {'more':5s} {'t1 [s]':>6s} {'t2 [s]':>6s} "
           f"{'ratio':>5s} {'acc':>6s} {'ATen':6s} {'MKL CNR':17s} digest(1t)/digest(2t)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        r["ratio"] = r["t2"] / base[r["model"]] if r["model"] in base else float("nan")
        dg = r["digest1"] if r["digest1"] == r["digest2"] else f"{r['digest1']}/{r['digest2']}"
        more = "".join("+" if ok else "-" for ok in r["extra"].values()) or "."
        print(f"{r['name']:42s} {'YES' if r['invariant'] else 'no':6s} "
              f"{'ok' if r['run_to_run'] else 'NO':3s} {more:5s} {r['t1']:6.3f} {r['t2']:6.3f} "
              f"{r['ratio']:5.2f} {r['acc']:6.4f} {r['cpu_capability']:6s} {str(r['mkl_cnr']):17s} {dg}")

    with open(args.json, "w") as f:
        json.dump({"torch": first["torch"], "rounds": args.rounds, "inner": args.inner,
                   "extra_threads": extra, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
