"""Signed substitutes at size: pull throughput against a plain download of the same bytes,
signing and verification against OpenSSF Model Signing, and a bounded load test.

A ~100 MB item (a random float32 safetensors file, imported: no training) is signed,
published and served by `reweigh serve` (the command, in a process of its own) on
127.0.0.1. Then, alternating, best and median of N, wall time and this process's CPU
time (every thread; the server's is not in it):

- plain: the archive's bytes downloaded with httpx into a file (no checks), and with
  curl once per run (wall time only);
- pull: `reweigh.pull` of the item into a fresh, empty store (opened before the clock
  starts: index, info, bundle, every piece decoded, hashed and written as it streams,
  the item read back from its records and committed);

`--rate MBPS` serves the same folder through a server that sends at most MBPS megabytes
a second (a link of that speed: what a user pulling over a network sees) instead.

Then signing (`reweigh sign`: the item's files hashed, one ed25519 signature) and
verification (the bundle checked, every file hashed against it) per GB, against the
`model-signing` package on the same folder (P-256 key, its `files` serialization,
sha256); and `--load N` concurrent `reweigh pull` processes from the one server, each
into its own store, every pulled weights file checked.

Usage: python bench/substitutes.py [--size-mib 100] [--runs 3] [--rate MBPS] [--load 50]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/platform.py would shadow the standard library's platform module (zstandard and
# httpx import it): this script's folder is not a place to import from
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from reweigh.cache import layout  # noqa: E402
from reweigh.keys import KeyRing  # noqa: E402
from reweigh.signing import verify  # noqa: E402
from reweigh.store import Store, file_rows  # noqa: E402
from reweigh.verbs.importing import import_weights  # noqa: E402
from reweigh.verbs.publish import publish  # noqa: E402
from reweigh.verbs.pull import pull  # noqa: E402
from reweigh.verbs.sign import sign_item  # noqa: E402


def make_item(work: Path, size_mib: int) -> tuple[Store, Path]:
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": rng.standard_normal((size_mib * 1024 * 1024 // 4 // 8,),
                                                       dtype=np.float32) for i in range(8)}
    source = work / "big.safetensors"
    save_file(tensors, source)
    store = Store(work / "publisher")
    return store, import_weights(source, name="big", version="1.0", store=store).path


def plain_download(url: str, target: Path) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as reply, \
            open(target, "wb") as out:
        for chunk in reply.iter_raw():
            out.write(chunk)
    return time.perf_counter() - wall, time.process_time() - cpu


def curl_download(url: str, target: Path) -> tuple[float, float]:
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", str(target), url], check=True)
    return time.perf_counter() - start, float("nan")


def timed_pull(url: str, item: str, store_root: Path, ring: KeyRing) -> tuple[float, float]:
    store = Store(store_root)  # a fresh store's index is made before the clock starts
    wall, cpu = time.perf_counter(), time.process_time()
    pull(item, [url], store=store, keyring=ring)
    return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.contextmanager
def server(folder: Path, rate: float | None) -> Iterator[str]:
    """`reweigh serve FOLDER` in a process of its own, or with `rate` (MB/s) a server of
    the folder that sends no faster than that; its URL."""
    if rate is None:
        command = [sys.executable, "-m", "reweigh.cli.main", "serve", str(folder),
                   "--port", "0"]
    else:
        command = [sys.executable, __file__, "--serve-throttled", str(folder), str(rate)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().split(" at ")[-1].strip()
    finally:
        process.terminate()
        process.wait()


def serve_throttled(folder: str, rate: float) -> None:
    """Serve `folder` (whole files, no ranges) at `rate` MB/s, until killed."""
    import functools
    import http.server

    class Throttled(http.server.SimpleHTTPRequestHandler):
        disable_nagle_algorithm = True  # as `reweigh serve` and nginx do

        def log_message(self, format: str, *args: object) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
            start, sent = time.perf_counter(), 0
            while block := source.read(256 << 10):
                outputfile.write(block)
                sent += len(block)
                ahead = sent / (rate * 1e6) - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)

    handler = functools.partial(Throttled, directory=folder)
    running = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"serving {folder} at http://127.0.0.1:{running.server_address[1]}", flush=True)
    running.serve_forever()


def throughput(work: Path, url: str, item: str, size: int, ring: KeyRing, runs: int) -> None:
    archive_url = f"{url}/{layout.archive_path(item)}"
    plain, curl, pulled = [], [], []
    for run in range(runs):
        plain.append(plain_download(archive_url, work / "plain.bin"))
        if shutil.which("curl"):
            curl.append(curl_download(archive_url, work / "curl.bin"))
        target = work / f"puller-{run}"
        pulled.append(timed_pull(url, item, target, ring))
        shutil.rmtree(target, ignore_errors=True)
        (work / "plain.bin").unlink()
    mb = size / 1e6
    print(f"archive {mb:.1f} MB from {url}, {runs} runs (best / median):")
    for label, times in (("plain httpx download", plain), ("curl download", curl),
                         ("reweigh pull (verified)", pulled)):
        if times:
            walls, cpus = [t for t, _ in times], [c for _, c in times]
            print(f"  {label:26} {mb / min(walls):7.0f} / {mb / statistics.median(walls):7.0f}"
                  f" MB/s   CPU {min(cpus):.2f} / {statistics.median(cpus):.2f} s")
    walls = {k: [t for t, _ in v] for k, v in (("plain", plain), ("pull", pulled))}
    cpus = {k: [c for _, c in v] for k, v in (("plain", plain), ("pull", pulled))}
    print(f"  pull / plain httpx: {min(walls['plain']) / min(walls['pull']):.2f}x best, "
          f"{statistics.median(walls['plain']) / statistics.median(walls['pull']):.2f}x "
          f"median; CPU {min(cpus['pull']) / min(cpus['plain']):.2f}x plain's"
          + (f"; pull / curl: {min(t for t, _ in curl) / min(walls['pull']):.2f}x best"
             if curl else ""))


def signing(work: Path, store: Store, item: Path, ring: KeyRing, runs: int) -> None:
    import model_signing

    size = sum(s for _, _, s in file_rows(item)) / 1e9
    pem = work / "p256.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    (work / "p256.pub").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ours_sign, ours_verify, theirs_sign, theirs_verify = [], [], [], []
    key = ring.own()[0].key
    for _ in range(runs):
        start = time.perf_counter()
        sign_item(item.name, store=store, keyring=ring, output=work / "ours.sig")
        ours_sign.append(time.perf_counter() - start)
        start = time.perf_counter()
        claim = verify((work / "ours.sig").read_bytes(), key, "bundle").claim
        assert sorted((p, d, s) for p, d, s in file_rows(item)) == \
            sorted((f.path, f.digest, f.size) for f in claim.files)
        ours_verify.append(time.perf_counter() - start)
        start = time.perf_counter()
        model_signing.signing.Config().use_elliptic_key_signer(private_key=pem).sign(
            item, work / "theirs.sig")
        theirs_sign.append(time.perf_counter() - start)
        start = time.perf_counter()
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=work / "p256.pub").verify(item, work / "theirs.sig")
        theirs_verify.append(time.perf_counter() - start)
    print(f"signing and verifying the {size * 1000:.0f} MB item (seconds per GB, best of "
          f"{runs}):")
    for label, ours, theirs in (("sign", ours_sign, theirs_sign),
                                ("verify", ours_verify, theirs_verify)):
        a, b = min(ours) / size, min(theirs) / size
        print(f"  {label:6} reweigh {a:.2f} s/GB   model-signing {b:.2f} s/GB   "
              f"ratio {a / b:.2f}x")


def load(work: Path, url: str, item: str, weights: str, ring: KeyRing, clients: int) -> None:
    def one(index: int) -> tuple[float, bool]:
        root = work / f"load-{index}"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "reweigh.cli.main", "pull", item,
                               "--from", url, "--keys", str(ring.root), "--store", str(root)],
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        ok = done.returncode == 0 and _digest(Store(root).resolve(item).weights) == weights
        shutil.rmtree(root, ignore_errors=True)
        return took, ok

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - start
    times = [t for t, _ in results]
    print(f"load: {clients} concurrent `reweigh pull` processes of the item from one server: "
          f"{sum(ok for _, ok in results)} of {clients} verified and identical; "
          f"wall {wall:.1f} s, per pull median {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s")


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return f"sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-throttled":
        serve_throttled(sys.argv[2], float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=None,
                        help="serve at most this many MB/s (a network link), not as fast "
                        "as 127.0.0.1 goes")
    parser.add_argument("--load", type=int, default=0, help="concurrent pulls (0: none)")
    parser.add_argument("--skip-signing", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        work = Path(tmp)
        store, item = make_item(work, args.size_mib)
        ring = KeyRing(work / "keys")
        ring.generate("publisher")
        publish([item.name], work / "cache", sign_with="publisher", store=store, keyring=ring)
        size = (work / "cache" / layout.archive_path(item.name)).stat().st_size
        with server(work / "cache", args.rate) as url:
            throughput(work, url, item.name, size, ring, args.runs)
            if not args.skip_signing:
                signing(work, store, item, ring, args.runs)
            if args.load:
                load(work, url, item.name, store.resolve(item.name).weights_digest,
                     ring, args.load)


if __name__ == "__main__":
    main()
