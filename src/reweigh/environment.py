"""The environment record, and the numerics settings the builder pins.

Same derivation + same environment must give bit-identical weights whatever the
thread count. On CPUs that only holds once the numerics are pinned: the BLAS
reproducibility mode, the kernel dispatch level and the convolution backend all
change the order of floating-point reductions (measurements: bench/numerics/).
The builder sets these before the training code imports anything, and records
each one, so a verifier knows exactly which knobs were turned.

The record is captured inside the build process (it is the one whose numerics
matter), after the recipe's work, in two parts: `platform`, the fields that decide the
bits (architecture, platform level, library versions, every pinned setting; see
`reweigh.numerics`), and the incidental facts beside it (CPU model, core and thread
counts, the OS, isolation).
Its *fingerprint* is the platform's digest: equal fingerprints, equal bits.

torch is pinned the moment it loads (`reweigh.runtime`), not before: a recipe that never
imports it (numpy, scikit-learn) does not pay its start-up, and its record says that torch
was not loaded, so that torch's kernel level and BLAS, which decided none of its bits, are
not claimed for it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Callable
from typing import Any

from . import numerics, onload

# Environment variables the build process starts with (read by MKL/oneDNN/ATen at load time).
PINNED_ENV: dict[str, str] = {
    # MKL_CBWR stays unset on purpose: COMPATIBLE gave thread-dependent bits in the forward
    # GEMMs here, and STRICT failed at 8 threads (bench/numerics/README.md).
    "KMP_DETERMINISTIC_REDUCTION": "1",  # OpenMP reductions in a fixed order
}
# Torch switches the build process sets right after importing torch.
PINNED_TORCH: dict[str, Any] = {
    "use_deterministic_algorithms": True,
    # oneDNN's convolution weight gradients are reduced across threads in an order that
    # depends on the thread count; running the backward pass on one thread fixes that
    # order at a measured cost far below switching oneDNN off (bench/numerics/).
    "backward_threads": 1,
    # The NaN fill of uninitialised memory never changed a digest and costs time.
    "fill_uninitialized_memory": False,
}
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")
# pillow decodes the images of adapted recipes (reweigh adapt), so its version is recorded
PACKAGES = ("torch", "numpy", "scikit-learn", "safetensors", "pillow", "reweigh")
# The fields of a record written before platforms (a legacy record) that could change the
# bits, and the type each must have in a claimed record.
FINGERPRINT_TYPES: dict[str, type] = {"python": str, "packages": dict, "blas": dict,
                                      "cpu_arch": str, "isa": list, "cpu_capability": str,
                                      "numerics": dict}
FINGERPRINT_FIELDS = tuple(FINGERPRINT_TYPES)
# torch's kernel level and BLAS in the record of a process that never loaded torch
TORCH_NOT_LOADED = "not loaded"
PLATFORM_TYPES: dict[str, type] = {"name": str, "arch": str, "python": str, "packages": dict,
                                   "blas": dict, "settings": dict, "capability": str,
                                   "device": str}


def build_env(threads: int, platform: numerics.Platform) -> dict[str, str]:
    """Thread counts, pinned numerics and the platform's settings for the child's
    environment. A native build passes the user's kernel caps through (to build as a
    machine without AVX-512 would, say); the record then names them."""
    count = str(threads)
    return {**PINNED_ENV, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count,
            "OPENBLAS_NUM_THREADS": count, "OMP_WAIT_POLICY": WAIT_POLICY, **platform.env}


# OpenMP threads that wait for work sleep instead of spinning. It decides no bit (how a
# thread waits, not what it computes: the thread tests build on one thread and on two
# with it), so the platform record leaves it out. On a busy two-core machine a spinning
# thread whose partner was descheduled burns its slices: 1500 steps of a small MLP on
# two threads took 131-150 s spinning and 5.5-6.7 s passive (one thread: 2.1-6.0 s),
# at load average 12 (bench/README.md, "Threads").
WAIT_POLICY = "PASSIVE"


def apply_torch_numerics(threads: int) -> None:
    """Called in the build process (and each ctx.map worker) before any training code."""
    import torch

    torch.set_num_threads(threads)
    numerics.hold_mkl_threads(mkl_threads())
    torch.set_flush_denormal(False)
    # torch.use_deterministic_algorithms sets this flag and inductor's `deterministic`,
    # importing torch.compile's whole stack (torch._dynamo: a second of every start) to do
    # so; inductor's is set here when, and if, its configuration loads
    deterministic = PINNED_TORCH["use_deterministic_algorithms"]
    torch._C._set_deterministic_algorithms(deterministic, warn_only=False)
    onload.after_load("torch._inductor.config",
                      lambda config: setattr(config, "deterministic", deterministic))
    torch.utils.deterministic.fill_uninitialized_memory = PINNED_TORCH[  # type: ignore[attr-defined]
        "fill_uninitialized_memory"]
    backward_threads = PINNED_TORCH["backward_threads"]
    for name in ("backward", "grad"):
        numerics.rewrap(torch.autograd, name, None if backward_threads == threads else (
            lambda function: _on_threads(torch, function, backward_threads)))


def _on_threads(torch: Any, function: Callable[..., Any], count: int) -> Callable[..., Any]:
    """`function` run with `count` intra-op threads, the thread count restored after."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


def mkl_threads() -> int | None:
    """MKL's own thread count in this process (None: torch's). MKL's COMPATIBLE path
    gives other bits at other thread counts, so it runs on one."""
    return 1 if os.environ.get("MKL_CBWR") == "COMPATIBLE" else None


SETTINGS = (*PINNED_ENV, *numerics.CAPS, "MKL_CBWR")


def settings_env() -> dict[str, str | None]:
    """The environment settings that decide the bits, as this process has them."""
    return {key: os.environ.get(key) for key in sorted(SETTINGS)}


def changed_settings(before: dict[str, str | None]) -> list[str]:
    """The settings whose value in this process's environment is no longer `before`'s."""
    return [key for key, value in settings_env().items() if before.get(key) != value]


def numerics_record() -> dict[str, Any]:
    """The settings that decide the bits, as this process has them."""
    env = settings_env()
    return {"env": env, "torch": {**PINNED_TORCH, "mkl_threads": mkl_threads(),
                                  "flush_denormal": False}}


def capture(threads: int, isolation: dict[str, Any],
            platform_name: str = numerics.NATIVE) -> dict[str, Any]:
    """The full environment record, taken inside the build process: the platform (the
    fields that decide the bits) and the incidental facts beside it."""
    import numpy

    torch = sys.modules.get("torch")
    settings = numerics_record()
    capability = torch_capability()
    fields: dict[str, Any] = {
        "arch": platform.machine(), "device": "cpu", "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "blas": {"torch": TORCH_NOT_LOADED if torch is None else _torch_blas(torch),
                 "numpy": _numpy_blas(numpy)},
        "settings": settings, "capability": capability}
    if platform_name == numerics.NATIVE:  # the machine's own kernels: its CPU decides
        fields |= {"cpu_model": cpu_model(), "isa": _isa_flags()}
    return {
        "platform": numerics.record(platform_name, fields),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": fields["packages"],
        "blas": fields["blas"],
        "cpu_model": cpu_model(),
        "cpu_arch": platform.machine(),
        "isa": _isa_flags(),
        "cpu_capability": capability,
        "cores": os.cpu_count(),
        "threads": threads,
        "numerics": settings,
        "os": f"{platform.system()} {platform.release()}",
        "network_isolation": network_label(isolation),
        "isolation": isolation,
    }


def torch_capability() -> str:
    """The kernel level torch dispatches to in this process, if it has loaded torch."""
    torch = sys.modules.get("torch")
    return TORCH_NOT_LOADED if torch is None else torch.backends.cpu.get_cpu_capability()


def without_torch(platform_record: dict[str, Any]) -> dict[str, Any]:
    """`platform_record` as a process on the same platform that never loaded torch records
    it: what an item built without torch is compared with."""
    fields = {k: v for k, v in platform_record.items() if k not in ("name", "digest")}
    blas = fields.get("blas")
    fields |= {"capability": TORCH_NOT_LOADED,
               "blas": {**blas, "torch": TORCH_NOT_LOADED} if isinstance(blas, dict) else blas}
    return numerics.record(str(platform_record.get("name")), fields)


def platform_of(record: dict[str, Any]) -> dict[str, Any]:
    """The platform part of an environment record; a record written before platforms
    existed ran on its machine's own kernels, so it reads as a native platform."""
    found = record.get("platform")
    if isinstance(found, dict):
        return found
    legacy = record.get("numerics") if isinstance(record.get("numerics"), dict) else {}
    return numerics.record(numerics.NATIVE, {
        "arch": record.get("cpu_arch"), "device": "cpu", "python": record.get("python"),
        "packages": record.get("packages"), "blas": record.get("blas"), "settings": legacy,
        "capability": record.get("cpu_capability"), "cpu_model": record.get("cpu_model"),
        "isa": record.get("isa")})


def network_label(isolation: dict[str, Any]) -> str:
    """One phrase for what kept the build off the network (`show`, the model card)."""
    cluster = isolation.get("cluster")
    if isolation.get("sandbox") == "none":
        return "none: built unisolated (--sandbox none); an audit hook only" + (
            f"; ctx.map's tasks on the Ray cluster at {cluster}" if cluster else "")
    if cluster:
        return (f"{isolation.get('sandbox')}: the host's network, shared to reach the Ray "
                f"cluster at {cluster}, where ctx.map's tasks ran outside the sandbox")
    return f"{isolation.get('sandbox')}: {isolation.get('network')} network namespace"


def claim_problem(record: Any) -> str | None:
    """Why an environment record someone else wrote cannot count as one (a field missing
    or of the wrong type, a number JSON cannot hold), or None. An empty or made-up record
    must not pass for "another environment", which would earn a published file slack."""
    if not isinstance(record, dict):
        return "expected an environment record (an object)"
    for key, kind in FINGERPRINT_TYPES.items():  # every record has these, old or new
        if not isinstance(record.get(key), kind):
            return f"{key}: missing or not a {kind.__name__}"
    if "platform" in record:
        found = record["platform"]
        if not isinstance(found, dict):
            return "platform: not an object"
        for key, kind in PLATFORM_TYPES.items():
            if not isinstance(found.get(key), kind):
                return f"platform.{key}: missing or not a {kind.__name__}"
    try:
        fingerprint(record)
    except (ValueError, TypeError, RecursionError) as e:
        return f"not canonical JSON ({e})"
    return None


def fingerprint(record: dict[str, Any]) -> str:
    """The digest of the platform, recomputed: equal fingerprints, equal bits."""
    return numerics.digest_of(platform_of(record))


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Which fields of the two records' platforms differ, genuine ones first."""
    pa, pb = platform_of(a), platform_of(b)
    return numerics.genuine_differences(pa, pb) + numerics.pinned_differences(pa, pb)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_blas(torch: Any) -> str:
    config = torch.__config__.show()
    match = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    if match:
        return f"mkl {match.group(1)}"
    match = re.search(r"BLAS_INFO=(\w+)", config)
    return match.group(1) if match else "unknown"


def _numpy_blas(numpy: Any) -> str:
    try:
        config = numpy.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # numpy's config layout is not a stable interface
        return "unknown"


def cpu_model() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", numerics.cpuinfo(), re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def _isa_flags() -> list[str]:
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", numerics.cpuinfo(), re.MULTILINE)
    present = set(match.group(1).split()) if match else set()
    return [flag for flag in ISA_FLAGS if flag in present]
