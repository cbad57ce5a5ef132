"""The numerics platform: what decides a build's bits besides its sources.

PyTorch on a CPU picks its kernels when it starts: ATen by the widest vector ISA it
finds (`ATEN_CPU_CAPABILITY`), oneDNN by its own probe (`ONEDNN_MAX_CPU_ISA`), MKL by
the CPU's vendor and ISA (`MKL_CBWR`, `MKL_ENABLE_INSTRUCTIONS`). Each choice changes
the order of floating-point operations, so one training on two CPUs gives two sets of
bits. A *platform* pins every one of those choices to a level that many machines share,
so that every machine offering the level computes the same bits. The levels are the
x86-64 micro-architecture levels of the System V psABI; `x86-64-v3` (AVX2 and FMA:
Intel from Haswell, AMD from Zen 1) is what recipes get unless they say otherwise
("portable"). A recipe may name another level, or opt out with `platform = "native"`
and a reason: then the machine's best kernels run, and only machines of one CPU model
and ISA can expect the same bits.

MKL needs two settings: `MKL_CBWR=COMPATIBLE` takes one code path on Intel and AMD
alike, and that path's GEMMs depend on MKL's thread count (bench/numerics/README.md),
so MKL runs on one thread inside the build whatever the intra-op thread count.

The platform is part of the derivation (by name, as Nix's `system` is) and of the
environment record (`platform`: the name plus the versions and settings that decide the
bits, with its digest). Its pure core: which level a machine offers (`offered`),
what a name stands for here (`resolve`), and how two recorded platforms relate
(`relation`): only a genuine difference (architecture, library versions, a level the
local machine was asked to build at instead of the recipe's) earns a rebuild any slack;
a claim that differs only in what the builder pins earns none.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform as host
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .digest import record_digest
from .errors import UsageError

PORTABLE = "portable"
NATIVE = "native"
ENV_CHOICE = "REWEIGH_PLATFORM"  # what --platform sets: build on this platform instead


@dataclass(frozen=True)
class Level:
    """One micro-architecture level and the kernel settings that keep a build to it."""

    name: str
    arch: str
    flags: frozenset[str]  # what /proc/cpuinfo must list (lzcnt is "abm" there)
    rank: int
    aten: str  # ATEN_CPU_CAPABILITY
    onednn: str | None  # ONEDNN_MAX_CPU_ISA
    mkl: str | None  # MKL_ENABLE_INSTRUCTIONS
    capability: str  # what torch.backends.cpu.get_cpu_capability() must then report


_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVELS: dict[str, Level] = {level.name: level for level in (
    Level("x86-64-v2", "x86_64", _V2, 2, "default", "SSE41", "SSE4_2", "DEFAULT"),
    Level("x86-64-v3", "x86_64", _V3, 3, "avx2", "AVX2", "AVX2", "AVX2"),
    Level("x86-64-v4", "x86_64", _V4, 4, "avx512", "AVX512_CORE", "AVX512", "AVX512"),
    # Not yet run on an ARM machine: ATen's "default" kernels there are its NEON ones.
    Level("aarch64-v8", "aarch64", frozenset({"asimd"}), 1, "default", None, None, "DEFAULT"),
)}
PORTABLE_LEVEL = {"x86_64": "x86-64-v3", "aarch64": "aarch64-v8"}

# Settings a user may set to make this machine offer less (to build as an older CPU
# would): each value, lowered to the rank of the x86-64 level it allows at most.
CAPS: dict[str, dict[str, int]] = {
    "ATEN_CPU_CAPABILITY": {"default": 2, "avx2": 3, "avx512": 4},
    "ONEDNN_MAX_CPU_ISA": {"SSE41": 2, "AVX": 2, "AVX2": 3, "AVX2_VNNI": 3,
                           "AVX2_VNNI_2": 3, "AVX512_CORE": 4},
    "MKL_ENABLE_INSTRUCTIONS": {"SSE4_2": 2, "AVX": 2, "AVX2": 3, "AVX512": 4},
}
CAPS["DNNL_MAX_CPU_ISA"] = CAPS["ONEDNN_MAX_CPU_ISA"]
FLAGS = tuple(sorted(_V4 | {"asimd", "sve", "avx512_vnni", "avx512_bf16", "amx_tile",
                            "amx_bf16"}))


@dataclass(frozen=True)
class Platform:
    """A platform as this machine runs it: its name, and the process settings."""

    name: str  # a level's name, or "native"
    arch: str
    env: dict[str, str] = field(default_factory=dict)  # set before torch loads
    mkl_threads: int | None = None  # MKL's own thread count (None: as torch's)

    @property
    def level(self) -> Level | None:
        return LEVELS.get(self.name)


def default_name(requested: str, arch: str) -> str:
    """The platform a recipe's `platform` (or `--platform`) names on this architecture:
    a level's name as it is, "portable" the architecture's portable level."""
    if requested == NATIVE or requested in LEVELS:
        return requested
    if requested == PORTABLE:
        if arch not in PORTABLE_LEVEL:
            raise UsageError(f"no portable numerics platform is defined for {arch}; "
                             "set [build] platform = \"native\" with a platform_reason")
        return PORTABLE_LEVEL[arch]
    known = ", ".join([PORTABLE, NATIVE, *LEVELS])
    raise UsageError(f"platform: {requested!r} is not one of {known}")


def offered(arch: str, flags: frozenset[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
    """The highest level rank this machine offers on `arch`, and what holds it there:
    missing CPU flags, or a setting in `env` that lowers it (emulating an older CPU)."""
    best, limits = 0, []
    for level in sorted((lv for lv in LEVELS.values() if lv.arch == arch), key=lambda lv: lv.rank):
        missing = sorted(level.flags - flags)
        if missing:
            limits.append(f"the CPU lacks {', '.join(missing)} ({level.name})")
            break
        best = level.rank
    for key, ranks in CAPS.items():
        value = env.get(key)
        if arch == "x86_64" and value:
            rank = ranks.get(value.upper() if key != "ATEN_CPU_CAPABILITY" else value.lower())
            if rank is not None and rank < best:
                best = rank
                limits.append(f"{key}={value} allows no more than x86-64-v{rank}")
    return best, limits


def resolve(name: str, arch: str, flags: frozenset[str], env: Mapping[str, str]) -> Platform:
    """The platform `name` on this machine, or exit 2 saying why this machine cannot run
    it (another architecture, a missing instruction set, a setting that caps it)."""
    if name == NATIVE:
        return Platform(NATIVE, arch, {k: env[k] for k in CAPS if env.get(k)})
    level = LEVELS.get(name)
    if level is None:
        default_name(name, arch)  # raises, listing the known names
        raise AssertionError(name)
    if level.arch != arch:
        raise UsageError(f"platform {name} is for {level.arch} machines, and this one is {arch}; "
                         "--platform native builds with this machine's own numerics, whose "
                         "weights can only be equivalent")
    rank, limits = offered(arch, flags, env)
    if rank < level.rank:
        raise UsageError(f"this machine cannot build on platform {name}: {'; '.join(limits)}; "
                         "--platform LEVEL builds on a lower level it has, whose weights can "
                         "only be equivalent")
    settings = {"ATEN_CPU_CAPABILITY": level.aten}
    if level.onednn:
        settings |= {"ONEDNN_MAX_CPU_ISA": level.onednn, "DNNL_MAX_CPU_ISA": level.onednn}
    if level.mkl:
        settings |= {"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": level.mkl}
    return Platform(name, arch, settings, mkl_threads=1 if level.mkl else None)


def here(name: str) -> Platform:
    """`resolve` on this machine, with this process's environment as the user's caps."""
    return resolve(name, machine_arch(), cpu_flags(), os.environ)


def machine_arch() -> str:
    return host.machine()


def cpu_flags() -> frozenset[str]:
    text = cpuinfo()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


# --- inside the build process ----------------------------------------------------------

def hold_mkl_threads(count: int | None) -> None:
    """Hold MKL to `count` threads in this process, whatever the intra-op thread count.
    torch.set_num_threads sets MKL's thread-local count too, so every later call (the
    builder's own, for the backward pass, or the recipe's) is followed by this one.
    None lets MKL follow torch's count again (a process set up before with a count)."""
    import torch

    if count is None:
        rewrap(torch, "set_num_threads", None)
        return

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        # The C entry point (by value); the lower-case name is MKL's Fortran one (by pointer).
        set_local = ctypes.CDLL(str(library)).MKL_Set_Num_Threads_Local
    except (OSError, AttributeError) as e:
        if torch.backends.mkl.is_available():
            raise RuntimeError(f"cannot hold MKL to {count} thread(s): {e}") from e
        return  # a torch without MKL: nothing to hold

    def held(original: Callable[[int], None]) -> Callable[[int], None]:
        @functools.wraps(original)
        def set_num_threads(threads: int) -> None:
            original(threads)
            set_local(ctypes.c_int(count))

        return set_num_threads

    rewrap(torch, "set_num_threads", held)
    set_local(ctypes.c_int(count))


def rewrap(owner: Any, name: str, wrap: Callable[[Any], Any] | None) -> None:
    """Set `owner.name` to `wrap(original)`, or back to the original with None: the
    original as its library defined it, never an earlier wrapper of ours. A process that
    is set up more than once (a Ray worker runs one build's tasks after another's) would
    otherwise wrap its wrappers, until a call overflows the stack."""
    current = getattr(owner, name)
    original = getattr(current, "_reweigh_original", current)
    if wrap is None:
        setattr(owner, name, original)
        return
    wrapped = wrap(original)
    wrapped._reweigh_original = original
    setattr(owner, name, wrapped)


def measured_problem(name: str, capability: str) -> str | None:
    """Why the running process is not on platform `name` (torch's kernel level as it
    reports it), or None. The settings are checked where they take effect."""
    level = LEVELS.get(name)
    if level is not None and capability != level.capability:
        return (f"platform {name} needs torch's {level.capability} kernels, and torch "
                f"reports {capability}")
    return None


# --- records and how two relate ------------------------------------------------------

class EnvRelation(Enum):
    SAME = "same"  # built on this platform: only the same bytes can pass
    UNKNOWN = "unknown"  # nothing says where it was built
    OTHER = "other"  # genuinely another platform: the recipe's tolerance applies


# The fields of a platform record that say where it ran; those whose difference makes two
# platforms genuinely different, whatever the builder pins.
GENUINE = ("arch", "python", "packages", "blas", "device")
NATIVE_GENUINE = ("cpu_model", "isa")


def record(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A platform record: `fields` (arch, python, packages, blas, settings, the measured
    capability; a native one also the CPU model and ISA) named and digested."""
    body = {"name": name, **fields}
    return {**body, "digest": record_digest(body)}


def digest_of(platform: dict[str, Any]) -> str:
    """A recorded platform's digest, recomputed (a claimed one is never taken as given)."""
    return record_digest({k: v for k, v in platform.items() if k != "digest"})


def genuine_differences(local: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The fields that make another platform genuinely different from the local one (see
    GENUINE); the CPU model and ISA count only where the local one is native, as a claim
    of native kernels against a recipe that pins a level is no platform of its."""
    keys = GENUINE + (NATIVE_GENUINE if local.get("name") == NATIVE else ())
    return [key for key in keys if local.get(key) != other.get(key)]


def pinned_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields that differ and that the builder pins (the level, its settings)."""
    keys = sorted((set(a) | set(b)) - {"digest", *GENUINE, *NATIVE_GENUINE})
    return [key for key in keys if a.get(key) != b.get(key)]


def describe(key: str, local: dict[str, Any], other: dict[str, Any]) -> str:
    """One field's difference in words, leaf by leaf (what it is there, what it is here)."""
    return "; ".join(f"{path}: {b} there, {a} here"
                     for path, a, b in _leaves(key, local.get(key), other.get(key)))


def _leaves(path: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [leaf for k in sorted(set(a) | set(b), key=str)
                for leaf in _leaves(f"{path}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [(path, a, b)]


def relate(local: dict[str, Any], claimed: dict[str, Any] | None, recipe_platform: str,
           signed: bool = False) -> tuple[EnvRelation, list[str], list[str]]:
    """How the platform a rebuild or replay ran on (`local`, measured here) relates to the
    one a publisher claims, given the platform the recipe names: the relation, the fields
    that differ, and the reasons in words.

    Slack comes only from what is known: the local run was asked onto another platform
    than the recipe's (`--platform`), or a trusted key signed the claim of another
    platform (`signed`). An unsigned claim earns none: one that differs only in what the
    builder pins (the level, its settings, the kernels torch reports) describes no build
    of this recipe on this architecture with these libraries, and one of another
    architecture or library version is only the publisher's word.
    """
    name = local.get("name")
    if name != recipe_platform:
        return (EnvRelation.OTHER, ["name"],
                [f"rebuilt on platform {name}, not on the recipe's {recipe_platform} "
                 "(--platform): another platform"])
    if claimed is None:
        return EnvRelation.UNKNOWN, [], []
    if digest_of(claimed) == digest_of(local):
        return EnvRelation.SAME, [], [f"built on this platform ({name})"]
    genuine = genuine_differences(local, claimed)
    differing = genuine + pinned_differences(local, claimed)
    said = "; ".join(describe(key, local, claimed) for key in differing)
    if signed:
        return EnvRelation.OTHER, differing, [f"signed as built on another platform: {said}"]
    if genuine:
        return (EnvRelation.UNKNOWN, differing,
                [f"the published provenance claims another platform ({said}); unsigned, the "
                 "claim earns no slack (a trusted key's signature would)"])
    return (EnvRelation.SAME, differing,
            [f"the published provenance claims other {', '.join(differing)}, with this "
             f"architecture and these library versions; platform {name} pins those, so "
             "the claim earns no slack"])
