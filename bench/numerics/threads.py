#!/usr/bin/env python
"""Which PyTorch CPU numerics settings make training thread-count invariant?

For every candidate configuration this script trains the digits CNN (the model
that ``examples/digits-cnn`` uses) in a *fresh* subprocess, once with
``torch.set_num_threads(1)`` and once with ``torch.set_num_threads(2)``.
Environment variables (MKL_CBWR, ONEDNN_*/DNNL_*, ATEN_CPU_CAPABILITY,
OMP_NUM_THREADS, MKL_NUM_THREADS) are set before torch is imported; all other
MKL_/ONEDNN_/DNNL_/OMP_/KMP_/GOMP_ variables are scrubbed.  Each worker trains
``--inner`` times (default 3) from the same seed and reports, per run, the
sha256 of the final state_dict (tensors in sorted name order,
``.numpy().tobytes()``), the wall time of the training loop only
(``time.perf_counter`` around the epochs loop, no import/data time), and the
held-out accuracy.  Timings are medians over all runs of a (config, threads)
pair; ``--rounds`` > 1 interleaves fresh subprocesses over configurations.

The machine is shared: before each timed worker the script waits (up to
``--max-wait`` s) until other processes use < 10% of the CPUs, measures the
foreign CPU share while the worker ran (the ``noise`` column) and reruns the
worker if it was > 10%; after ``--budget`` s it stops waiting and rerunning.

Configurations whose 1- and 2-thread digests agree are then also trained once
at each ``--extra-threads`` count (default 8, oversubscribed on a 2-core box)
to see whether the invariance is structural or a 1-vs-2 coincidence.

Run from the repository root (about 10 minutes on a quiet 2-core machine):

    .venv/bin/python bench/numerics/threads.py
    .venv/bin/python bench/numerics/threads.py --extra-threads 4,8      # as in README.md
    .venv/bin/python bench/numerics/threads.py --only "mlp" --inner 1 --extra-threads ""
    .venv/bin/python bench/numerics/threads.py --rounds 3 --only "=det;=det+bwd_1thread (no CBWR)"

Results are also written to bench/numerics/results.json (``--json``).
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
    0: "OFF",
    1: "BRANCH_OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}


# --------------------------------------------------------------------------
# Candidate configurations
# --------------------------------------------------------------------------
def _cfg(name, env=None, **kw):
    c = {
        "name": name,
        "env": env or {},
        "model": "cnn",  # "cnn" | "mlp"
        "det": True,  # torch.use_deterministic_algorithms(True)
        "nofill": False,  # torch.utils.deterministic.fill_uninitialized_memory = False
        "mkldnn": True,  # torch.backends.mkldnn.enabled
        "mkldnn_det": False,  # torch.backends.mkldnn.deterministic
        "mkldnn_bwd": True,  # if False: oneDNN on for forward, off for backward
        "bwd_1thread": False,  # run loss.backward() under torch.set_num_threads(1)
        "conv": "nn",  # "nn" | "unfold" (F.unfold + 1 GEMM) | "slices" (9 shifted views + 1 GEMM)
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
    _cfg("det+COMPAT+mkldnn.deterministic", COMPAT, mkldnn_det=True),
    # 5: strict CNR, oneDNN on / off (on AMD, MKL maps AVX2/AVX512 to AUTO)
    _cfg("det+AVX2,STRICT", {"MKL_CBWR": "AVX2,STRICT"}),
    _cfg("det+AVX512,STRICT", {"MKL_CBWR": "AVX512,STRICT"}),
    _cfg("det+AUTO,STRICT", STRICT),
    _cfg("det+AVX2,STRICT+mkldnn_off", {"MKL_CBWR": "AVX2,STRICT"}, mkldnn=False),
    _cfg("det+AVX512,STRICT+mkldnn_off", {"MKL_CBWR": "AVX512,STRICT"}, mkldnn=False),
    _cfg("det+AUTO,STRICT+mkldnn_off", STRICT, mkldnn=False),
    _cfg("det+mkldnn_off (no CBWR)", mkldnn=False),
    # 6: ISA pinned (oneDNN and/or ATen) with CBWR, oneDNN on
    _cfg("det+COMPAT+ISA=avx2", {**COMPAT, **ISA_AVX2}),
    _cfg("det+AUTO,STRICT+ISA=avx2", {**STRICT, **ISA_AVX2}),
    _cfg("det+AUTO,STRICT+ONEDNN_ISA=avx2", {**STRICT, **ONEDNN_AVX2}),
    _cfg(
        "det+AUTO,STRICT+ATEN=avx2+mkldnn_off",
        {**STRICT, "ATEN_CPU_CAPABILITY": "avx2"},
        mkldnn=False,
    ),
    # 7: explicit im2col conv: one GEMM per conv (conv layers never reach oneDNN)
    _cfg("det+AUTO,STRICT+unfold", STRICT, conv="unfold"),
    _cfg("det+AUTO,STRICT+slices", STRICT, conv="slices"),
    _cfg("det+AUTO,STRICT+slices+nofill", STRICT, conv="slices", nofill=True),
    _cfg("det+slices (no CBWR)", conv="slices"),
    # 8: other ideas
    _cfg("det+AUTO,STRICT+mkldnn_fwd_only", STRICT, mkldnn_bwd=False),
    _cfg("det+AUTO,STRICT+channels_last", STRICT, channels_last=True),
    _cfg("det+AUTO,STRICT+bwd_1thread", STRICT, bwd_1thread=True),
    _cfg("det+COMPAT+bwd_1thread", COMPAT, bwd_1thread=True),
    _cfg("det+bwd_1thread (no CBWR)", bwd_1thread=True),
    _cfg("det+bwd_1thread+nofill (no CBWR)", bwd_1thread=True, nofill=True),
    _cfg("det+AUTO,STRICT+mkldnn_off+flush_denormal", STRICT, mkldnn=False, flush_denormal=True),
    # pure MLP 64->128->10 (Linear layers only)
    _cfg("mlp:default", model="mlp", det=False),
    _cfg("mlp:det", model="mlp"),
    _cfg("mlp:det+COMPAT", COMPAT, model="mlp"),
    _cfg("mlp:det+AUTO,STRICT", STRICT, model="mlp"),
    _cfg("mlp:det+mkldnn_off (no CBWR)", model="mlp", mkldnn=False),
    _cfg("mlp:det+bwd_1thread (no CBWR)", model="mlp", bwd_1thread=True),
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
            cols = F.unfold(x, k, padding=p)  # (n, C*k*k, h*w)
            cols = cols.transpose(1, 2).reshape(n * h * w, -1)  # (n*h*w, C*k*k)
            out = F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias)
            return out.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    class SlicesConv2d(nn.Conv2d):
        """Same GEMM as UnfoldConv2d, but the columns are built from k*k shifted
        views of the padded input (no per-sample im2col/col2im loops)."""

        def forward(self, x):
            n, c, h, w = x.shape
            k, p = self.kernel_size[0], self.padding[0]
            xp = F.pad(x, (p, p, p, p))
            cols = torch_stack(
                [xp[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)], 4
            )
            cols = cols.permute(0, 2, 3, 1, 4).reshape(n * h * w, c * k * k)  # (c, ki, kj) order
            out = F.linear(cols, self.weight.reshape(self.out_channels, -1), self.bias)
            return out.reshape(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    import torch

    torch_stack = torch.stack

    if cfg["model"] == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    Conv = {"nn": nn.Conv2d, "unfold": UnfoldConv2d, "slices": SlicesConv2d}[cfg["conv"]]
    return nn.Sequential(
        Conv(1, 16, 3, padding=1),
        nn.ReLU(),
        Conv(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
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
            idx = order[i : i + BATCH]
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


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4]  # everything but idle + iowait


def _wait_quiet(max_wait: float, limit: float = 0.10) -> float:
    """Wait (up to max_wait s) until the rest of the machine uses < limit of all CPUs."""
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        b0 = _busy_jiffies()
        time.sleep(0.5)
        frac = (_busy_jiffies() - b0) / hz / (0.5 * ncpu)
        if frac < limit or time.monotonic() > deadline:
            return frac
        time.sleep(1.0)


def run_one(cfg: dict, threads: int, data_path: str, inner: int, gate: dict | None = None) -> dict:
    """Run one fresh worker.

    With ``gate`` (and while its deadline has not passed): wait for a quiet
    machine first, and rerun (up to gate['retries'] times) if other processes
    used more than gate['limit'] of the CPUs while it ran, or if it exceeded
    gate['timeout'] s (a 2-thread OpenMP run sharing a core with a foreign
    process can slow down 10-30x).  'foreign' records that share of the CPUs."""
    import resource

    payload = json.dumps({"cfg": cfg, "threads": threads, "data": data_path, "inner": inner})
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    attempt = 0
    while True:
        gated = (
            gate is not None and time.monotonic() < gate["deadline"] and attempt < gate["retries"]
        )
        if gated:
            _wait_quiet(gate["max_wait"], gate["limit"])
        b0, r0, w0 = (
            _busy_jiffies(),
            resource.getrusage(resource.RUSAGE_CHILDREN),
            time.perf_counter(),
        )
        try:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", payload],
                env=child_env(cfg, threads),
                capture_output=True,
                text=True,
                timeout=gate["timeout"] if gated else 1800,
            )
        except subprocess.TimeoutExpired:
            attempt += 1
            continue
        b1, r1, w1 = (
            _busy_jiffies(),
            resource.getrusage(resource.RUSAGE_CHILDREN),
            time.perf_counter(),
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"worker failed for {cfg['name']} t={threads}:\n{proc.stderr[-3000:]}"
            )
        own = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        foreign = max(0.0, ((b1 - b0) / hz - own) / ((w1 - w0) * ncpu))
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["foreign"] = round(foreign, 3)
        out["attempts"] = attempt + 1
        if not gated or foreign <= gate["limit"]:
            return out
        attempt += 1


def load_data(path: str) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    X = (digits.images.astype(np.float32) / 16.0).reshape(n, 1, 8, 8)
    y = digits.target.astype(np.int64)
    np.savez(path, X=X, y=y)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fresh-subprocess rounds per (config, threads), interleaved over configs",
    )
    ap.add_argument(
        "--inner",
        type=int,
        default=3,
        help="training runs per subprocess (timings: median over rounds*inner)",
    )
    ap.add_argument(
        "--extra-threads",
        default="8",
        help="also check digests at these thread counts (1 run each, oversubscribed "
        "on a 2-core box) for configs invariant at 1 vs 2; '' to skip",
    )
    ap.add_argument(
        "--only",
        default=None,
        help="';'-separated substrings of config names ('=name' for an exact name)",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=30.0,
        help="seconds to wait for a quiet machine before each timed worker (0: no gate)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="reruns of a timed worker if other processes used >10%% of the CPUs meanwhile",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds after which waiting for quiet and reruns stop (bounds total runtime)",
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    )
    return ap.parse_args()


def select_configs(only: str | None) -> list[dict]:
    if not only:
        return CONFIGS
    keys = [k.strip() for k in only.split(";") if k.strip()]

    def hit(name: str) -> bool:
        return any(name == k[1:] if k.startswith("=") else k in name for k in keys)

    return [c for c in CONFIGS if c["name"] in ("default", "mlp:default") or hit(c["name"])]


def summarize(c: dict, res: dict[int, list[dict]]) -> dict:
    d = {t: {dg for x in res[t] for dg in x["digests"]} for t in (1, 2)}
    times = {t: [v for x in res[t] for v in x["times"]] for t in (1, 2)}
    return {
        "name": c["name"],
        "model": c["model"],
        "invariant": len(d[1]) == 1 and d[1] == d[2],
        "run_to_run": len(d[1]) == 1 and len(d[2]) == 1,
        "digest_full": sorted(d[1])[0],
        "digest1": sorted(d[1])[0][:12],
        "digest2": sorted(d[2])[0][:12],
        "t1": statistics.median(times[1]),
        "t2": statistics.median(times[2]),
        "t1_all": [round(v, 3) for v in times[1]],
        "t2_all": [round(v, 3) for v in times[2]],
        "acc": res[2][0]["accs"][0],
        "acc_1t": res[1][0]["accs"][0],
        "cpu_capability": res[2][0]["cpu_capability"],
        "mkl_cnr": res[2][0]["mkl_cnr"],
        "foreign_max": max(x["foreign"] for t in (1, 2) for x in res[t]),
        "extra": {},
        "cfg": c,
    }


def check_extra_threads(rows: list[dict], extra: list[int], data_path: str, t_start: float):
    """Train invariant configs once at each extra thread count; compare digests."""
    checked: dict[str, tuple[str, dict]] = {}
    for row in rows:
        if not (row["invariant"] and extra):
            continue
        c = row["cfg"]
        # configs that differ only in an MKL_CBWR value that MKL resolved to the same
        # effective mode (e.g. AVX2,STRICT -> AUTO,STRICT on AMD) are the same run
        same = {k: v for k, v in c.items() if k != "name"}
        same["env"] = {k: v for k, v in c["env"].items() if k != "MKL_CBWR"}
        key = json.dumps([row["mkl_cnr"], row["cpu_capability"], same], sort_keys=True)
        if key in checked:
            row["extra"], row["extra_from"] = dict(checked[key][1]), checked[key][0]
            continue
        for t in extra:
            x = run_one(c, t, data_path, 1)
            row["extra"][t] = x["digests"][0] == row["digest_full"]
        checked[key] = (c["name"], row["extra"])
        elapsed = time.perf_counter() - t_start
        print(f"  [{elapsed:5.0f}s] extra threads {c['name']}", file=sys.stderr)


def print_table(rows: list[dict], extra: list[int], header: str) -> None:
    base = {r["model"]: r["t2"] for r in rows if r["name"] in ("default", "mlp:default")}
    print(header)
    print(
        "1t==2t: sha256 of final weights identical across all 1- and 2-thread runs; "
        "r2r: each thread count reproducible run-to-run;"
    )
    print(
        f"more: digest also identical at {extra} threads (checked only if 1t==2t); "
        "ratio: median 2-thread time / default's median 2-thread time (same model);"
    )
    print(
        "noise: worst share of the CPUs used by other processes during this config's "
        "timed workers (* = above 0.10, timing unreliable)\n"
    )
    hdr = (
        f"{'config':42s} {'1t==2t':6s} {'r2r':3s} {'more':5s} {'t1 [s]':>6s} {'t2 [s]':>6s} "
        f"{'ratio':>5s}  {'acc':>6s} {'ATen':6s} {'MKL CNR':17s} {'noise':>5s} "
        "digest(1t)/digest(2t)"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        r["ratio"] = r["t2"] / base[r["model"]] if r["model"] in base else float("nan")
        dg = r["digest1"] if r["digest1"] == r["digest2"] else f"{r['digest1']}/{r['digest2']}"
        more = "".join("+" if ok else "-" for ok in r["extra"].values()) or "."
        star = "*" if r["foreign_max"] > 0.10 else " "
        print(
            f"{r['name']:42s} {'YES' if r['invariant'] else 'no':6s} "
            f"{'ok' if r['run_to_run'] else 'NO':3s} {more:5s} {r['t1']:6.3f} {r['t2']:6.3f} "
            f"{r['ratio']:5.2f}{star} {r['acc']:6.4f} {r['cpu_capability']:6s} "
            f"{r['mkl_cnr']!s:17s} {r['foreign_max']:5.2f} {dg}"
        )


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["cfg"], job["threads"], job["data"], job["inner"])))
        return

    configs = select_configs(args.only)
    extra = [int(t) for t in args.extra_threads.split(",") if t.strip()]
    gate = None
    if args.max_wait > 0:
        gate = {
            "max_wait": args.max_wait,
            "limit": 0.10,
            "retries": args.retries,
            "timeout": 30.0 + 10.0 * args.inner,
            "deadline": time.monotonic() + args.budget,
        }

    import shutil
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
                for t in (1, 2) if r % 2 == 0 else (2, 1):
                    results[c["name"]][t].append(run_one(c, t, data_path, args.inner, gate))
                elapsed = time.perf_counter() - t_start
                print(f"  [{elapsed:5.0f}s] round {r + 1} {c['name']}", file=sys.stderr)
        rows = [summarize(c, results[c["name"]]) for c in configs]
        check_extra_threads(rows, extra, data_path, t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    first = results[configs[0]["name"]][1][0]
    print_table(
        rows,
        extra,
        f"\ntorch {first['torch']}, {os.cpu_count()} CPUs, rounds={args.rounds} x "
        f"inner={args.inner} runs per (config, threads), epochs={EPOCHS}, "
        f"total {time.perf_counter() - t_start:.0f}s",
    )
    with open(args.json, "w") as f:
        json.dump(
            {
                "torch": first["torch"],
                "rounds": args.rounds,
                "inner": args.inner,
                "extra_threads": extra,
                "rows": rows,
            },
            f,
            indent=1,
        )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
