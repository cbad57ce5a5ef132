"""The OS-level sandbox every process that runs recipe code starts in (bubblewrap).

The process sees a fixed, small file system, whatever machine or store it runs on:

    /build/src        the staged recipe source (read-only)
    /build/out        the only writable folder that outlives the run
    /build/job.json   what to run (read-only)
    /inputs/NAME/...  each declared input (read-only)
    /files/N/...      other files the run reads: networks to judge, checkpoints to resume
    /opt/reweigh/lib  this package (read-only); the Python environment at its own paths
    /usr, /lib, ...   the system's programs and libraries (read-only)
    /tmp, $HOME       private, empty, gone with the run

It gets new user, mount, pid, network (loopback only), ipc, uts and cgroup namespaces,
no capabilities, `no_new_privs`, and a seccomp filter that refuses the system calls a
build has no use for and that could reach outside (`setns`, `unshare`, `mount`,
`ptrace`, `keyctl`, `bpf`, ...), as Flatpak's and Nix's filters do. Sockets keep
working inside (multiprocessing and a local cluster need loopback and AF_UNIX): the
host's sockets are out of sight because no host folder holding one is mounted and the
network namespace is new. Every process the run started dies with it (pid namespace).

This module only says what to run (pure argument lists and a BPF program); the
builder runs it. What actually held is measured inside the run by `measure()`.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ReweighError

BUBBLEWRAP = "bubblewrap"
NONE = "none"
CHOICES = (BUBBLEWRAP, NONE)
ENV_CHOICE = "REWEIGH_SANDBOX"

BUILD = "/build"
SRC = f"{BUILD}/src"
OUT = f"{BUILD}/out"
SPEC = f"{BUILD}/job.json"
HOME = f"{BUILD}/home"
INPUTS = "/inputs"
FILES = "/files"
LIB = "/opt/reweigh/lib"
USER_ID = 1000  # who the recipe's code runs as, inside; the same on every machine

# System folders bound read-only (or recreated as the symlinks they are on usr-merged systems).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf")
# CPU topology that libraries read to size their thread pools and blocks.
SYSFS_DIRS = ("/sys/devices/system/cpu",)

FIX = ("install bubblewrap (Debian, Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
       "bubblewrap) and allow unprivileged user namespaces (sysctl "
       "kernel.unprivileged_userns_clone=1), or pass --sandbox none to build unisolated "
       "(recorded in the provenance)")


class SandboxUnavailable(ReweighError):
    """The OS-level sandbox cannot be made here, and nobody asked to run without it."""


@dataclass(frozen=True)
class Mount:
    host: Path
    inside: str
    writable: bool = False


# --- the seccomp filter ------------------------------------------------------------------
# System calls refused with EPERM: they reach other namespaces, the kernel's key rings, other
# processes' memory, file systems and kernel modules (after Flatpak's and Nix's lists).
DENIED_CALLS = (
    "setns", "unshare", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "open_by_handle_at", "name_to_handle_at", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "syslog", "acct", "quotactl", "swapon",
    "swapoff", "reboot", "uselib", "vhangup", "lookup_dcookie", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "pidfd_getfd",
)
# Socket families a build may use: local sockets, loopback IP, netlink (interface listing).
ALLOWED_FAMILIES = (socket.AF_UNSPEC, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6,
                    socket.AF_NETLINK)
CLONE_NEWUSER = 0x10000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # typing into the controlling terminal

_ACT_ALLOW = 0x7FFF0000
_CMP_GE, _CMP_MASKED_EQ = 5, 7
_LOW32 = 0xFFFFFFFF


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# libseccomp's `struct scmp_arg_cmp`: argument index, comparison, two operands.
ArgCmp = tuple[int, int, int, int]


def _equals(arg: int, value: int) -> ArgCmp:
    """Argument `arg`'s low 32 bits equal `value` (the kernel reads these as a C int)."""
    return (arg, _CMP_MASKED_EQ, _LOW32, value)


def _has_bits(arg: int, bits: int) -> ArgCmp:
    return (arg, _CMP_MASKED_EQ, bits, bits)


def _rules() -> list[tuple[str, int, list[ArgCmp]]]:
    """(system call, action, argument conditions) for every rule of the filter."""
    eperm = _errno(errno.EPERM)
    rules: list[tuple[str, int, list[ArgCmp]]] = [(name, eperm, []) for name in DENIED_CALLS]
    refused = [f for f in range(0, 46) if f not in ALLOWED_FAMILIES]
    rules += [("socket", _errno(errno.EAFNOSUPPORT), [_equals(0, f)]) for f in refused]
    rules.append(("socket", _errno(errno.EAFNOSUPPORT), [(0, _CMP_GE, 46, 0)]))
    rules += [("clone", eperm, [_has_bits(0, CLONE_NEWUSER)]),
              # glibc falls back to clone() when clone3 is missing; clone3's flags sit in
              # memory that seccomp cannot read, so it is refused outright (as Flatpak does)
              ("clone3", _errno(errno.ENOSYS), []),
              ("ioctl", eperm, [_equals(1, TIOCSTI)]), ("ioctl", eperm, [_equals(1, TIOCLINUX)])]
    return rules


@functools.cache
def seccomp_program() -> bytes:
    """The filter as a BPF program for `bwrap --seccomp`, compiled by libseccomp (the
    kept library behind Flatpak's, systemd's and Docker's filters). System calls of
    another ABI (32-bit or x32) kill the process: their numbers mean other calls."""
    import ctypes  # here, not at import: only a command that starts a run needs it
    import ctypes.util

    class ArgCmpStruct(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise SandboxUnavailable("libseccomp is not installed; the sandbox's system-call "
                                 "filter cannot be built",
                                 hint="apt-get install libseccomp2")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmpStruct)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(_ACT_ALLOW)
    try:
        for call, action, conditions in _rules():
            number = lib.seccomp_syscall_resolve_name(call.encode())
            if number < 0:  # a call this kernel's headers do not know: nothing to refuse
                continue
            array = (ArgCmpStruct * len(conditions))(*(ArgCmpStruct(*c) for c in conditions))
            status = lib.seccomp_rule_add_array(context, action, number, len(conditions), array)
            if status < 0:
                raise OSError(-status, f"seccomp rule for {call}")
        with tempfile.TemporaryFile() as handle:
            status = lib.seccomp_export_bpf(context, handle.fileno())
            if status < 0:
                raise OSError(-status, "seccomp_export_bpf")
            handle.seek(0)
            return handle.read()
    finally:
        lib.seccomp_release(context)


# --- the bubblewrap command line ----------------------------------------------------------
def python_roots() -> list[Path]:
    """The Python environment the run needs: the interpreter's prefixes (a virtual
    environment and the installation it was made from) and the folders on its import
    path, without what lies beside them. Each is bound read-only at its own place."""
    roots = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                         sys.base_exec_prefix)}
    executable = Path(sys.executable)
    roots.add(executable.parent.resolve())
    roots.add(executable.resolve().parent)
    roots.update(extra_import_paths())
    return _outermost(roots)


def extra_import_paths() -> list[Path]:
    """Folders this interpreter was told to import from (PYTHONPATH) outside its prefixes:
    the sandboxed process gets them too, so it imports what this one does. Not the rest of
    `sys.path`: a program's own folder (a test runner's, say) is not the environment."""
    prefixes = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    found: list[Path] = []
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if not entry or not os.path.isabs(entry) or not os.path.exists(entry):
            continue
        path = Path(entry).resolve()
        if not any(path.is_relative_to(p) for p in prefixes) and path not in found:
            found.append(path)
    return found


def import_path() -> str:
    """PYTHONPATH inside: this package first, then the folders `extra_import_paths` names."""
    return os.pathsep.join([LIB, *map(str, extra_import_paths())])


def _outermost(paths: Iterable[Path]) -> list[Path]:
    ordered = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return sorted(kept)


def system_args() -> list[str]:
    args: list[str] = []
    for folder in SYSTEM_DIRS:
        path = Path(folder)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), folder]
        elif path.is_dir():
            args += ["--ro-bind", folder, folder]
    for file in ETC_FILES:
        if Path(file).exists():
            args += ["--ro-bind", file, file]
    for folder in SYSFS_DIRS:
        if Path(folder).is_dir():
            args += ["--ro-bind", folder, folder]
    return args


def etc_files(folder: Path) -> list[Mount]:
    """A user, a group, a host name and name resolution from /etc/hosts only: what
    libraries look up (getpass, socket.gethostname) without the host's real files."""
    files = {
        "passwd": f"build:x:{USER_ID}:{USER_ID}:build:{HOME}:/bin/sh\n"
                  "nobody:x:65534:65534:nobody:/:/bin/false\n",
        "group": f"build:x:{USER_ID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost reweigh\n::1 localhost\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "hostname": "reweigh\n",
    }
    folder.mkdir(exist_ok=True)
    mounts = []
    for name, text in files.items():
        (folder / name).write_text(text)
        mounts.append(Mount(folder / name, f"/etc/{name}"))
    return mounts


def bwrap_args(mounts: list[Mount], seccomp_fd: int, share_network: bool = False) -> list[str]:
    """The bubblewrap options that make the sandbox; the command to run follows them.
    `share_network` keeps the host's network (a build that joins a Ray cluster), and
    every other namespace new."""
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all",
            *(["--share-net"] if share_network else []), "--unshare-user",
            "--uid", str(USER_ID), "--gid", str(USER_ID), "--disable-userns",
            "--hostname", "reweigh", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--seccomp", str(seccomp_fd),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", BUILD,
            *system_args()]
    for root in python_roots():
        args += ["--ro-bind", str(root), str(root)]
    for mount in mounts:
        args += ["--bind" if mount.writable else "--ro-bind", str(mount.host), mount.inside]
    return [*args, "--tmpfs", HOME, "--chdir", BUILD, "--remount-ro", "/"]


@functools.cache
def unavailable_reason() -> str | None:
    """Why the sandbox cannot be made on this machine, or None when it can (tried once)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        program = seccomp_program()
    except SandboxUnavailable as e:
        return e.message
    read, write = os.pipe()
    try:
        os.write(write, program)
        os.close(write)
        write = -1
        probe = subprocess.run(
            [*bwrap_args([], read), "/bin/true"], capture_output=True, pass_fds=(read,),
            check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start ({e})"
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    if probe.returncode != 0:
        why = " ".join(probe.stderr.decode(errors="replace").split())[:200]
        return f"bwrap cannot make the sandbox here ({why or f'exit {probe.returncode}'})"
    return None


def choose(requested: str | None) -> str:
    """The sandbox a run uses: the one asked for (else $REWEIGH_SANDBOX, else bubblewrap);
    bubblewrap that cannot be made is an error, never a silent downgrade."""
    choice = requested or os.environ.get(ENV_CHOICE) or BUBBLEWRAP
    if choice not in CHOICES:
        raise ReweighError(f"--sandbox: {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == BUBBLEWRAP and (reason := unavailable_reason()) is not None:
        raise SandboxUnavailable(f"cannot isolate the build: {reason}", hint=FIX)
    return choice


# --- what held, measured from inside --------------------------------------------------------
def measure(hidden: Iterable[str] = ()) -> dict[str, Any]:
    """The isolation this process actually has, read from the kernel: for the provenance.
    `hidden` are host paths (the store, the home folder) that must not be visible."""
    status = _status()
    net = _interfaces()
    uid_map = _read("/proc/self/uid_map").split()
    return {
        "user_namespace": uid_map[:3] != ["0", "0", "4294967295"] if uid_map else False,
        "pid_namespace": _read("/proc/1/comm").strip() == "bwrap",
        "network": "loopback only" if net == ["lo"] else "host (" + ", ".join(net) + ")",
        "no_new_privs": status.get("NoNewPrivs") == "1",
        "seccomp": {"0": "none", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""),
                                                                     "unknown"),
        "capabilities": "none" if int(status.get("CapEff", "0"), 16) == 0
        else status.get("CapEff", ""),
        "hidden_paths_visible": sorted(p for p in hidden if _exposed(Path(p), python_roots())),
    }


# What each guarantee must measure as, and what it means when it does not.
EXPECTED: dict[str, tuple[Any, str]] = {
    "user_namespace": (True, "no user namespace of its own"),
    "pid_namespace": (True, "other processes are in sight"),
    "network": ("loopback only", "the host's network is in reach"),
    "no_new_privs": (True, "no_new_privs is not set"),
    "seccomp": ("filter", "no system-call filter"),
    "capabilities": ("none", "capabilities remain"),
    "hidden_paths_visible": ([], "host folders that must be hidden are visible"),
}


def failures(measured: dict[str, Any]) -> list[str]:
    """The guarantees that did not hold, each said in words with what was measured. A run
    that joins a Ray cluster (`network_shared` in its record) has the host's network on
    purpose: that one guarantee is given up, and said, not failed."""
    shared = "network_shared" in measured
    return [f"{why} ({key}: {measured.get(key)!r})"
            for key, (want, why) in EXPECTED.items()
            if measured.get(key) != want and not (shared and key == "network")]


def held(measured: dict[str, Any]) -> bool:
    """Whether every guarantee of the sandbox was measured to hold."""
    return not failures(measured)


def _exposed(path: Path, allowed: list[Path]) -> bool:
    """Whether anything of `path` shows but the Python environment bound at its own place
    (a home folder holding the interpreter shows as the folders on the way to it)."""
    if not os.path.lexists(path):
        return False
    if any(path.is_relative_to(root) for root in allowed):
        return True
    try:
        entries = os.listdir(path)
    except OSError:
        return True
    for entry in entries:
        child = path / entry
        if child in allowed:
            continue
        if not any(root.is_relative_to(child) for root in allowed) or _exposed(child, allowed):
            return True
    return False


def _status() -> dict[str, str]:
    fields = {}
    for line in _read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _interfaces() -> list[str]:
    lines = _read("/proc/net/dev").splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines if ":" in line)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
