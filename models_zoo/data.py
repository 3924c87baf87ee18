"""Loaders for the real evaluation data of shared/DATA.md, for slow tests and benchmarks.

Nothing here is committed data: each loader fetches from a package registry into the cache on first
use (``$SPA_COMPILER_CACHE`` or ``~/.cache/spa-compiler``, under ``data/``) and reads the cache
after.
Fetches are idempotent and atomic: they work in a temporary folder beside the cache entry, move the
finished file into place with one rename, and hold a lock so concurrent callers fetch once.

- `jane_austen_books`: Jane Austen's six novels (Debian ``r-cran-janeaustenr``, fetched with
  ``apt-get download`` + ``dpkg -x``; never ``apt-get install``, which pulls in R), parsed with
  PyPI ``rdata``.
- `movie_snippets`: 10,605 movie-review snippets with mean human sentiment ratings in [-4, 4]
  (``additional_resources/hutto_ICWSM_2014.tar.gz`` of the vaderSentiment 3.3.2 sdist, fetched with
  ``pip download --no-deps --no-binary :all:``); label = rating > 0.
- `fashion_mnist`: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (/usr/share/datasets/fashion-mnist/).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from spa_compiler.errors import MissingRequirementError, UsageError

INSTALL_HINT = "run scripts/install_real.sh (PYTHON=<your python> scripts/install_real.sh)"

JANEAUSTENR_DEB = "r-cran-janeaustenr"
JANEAUSTENR_SYSTEM_DIR = pathlib.Path("/usr/lib/R/site-library/janeaustenr/data")
#: R object names of the six novels, as `jane_austen_books` keys them, with their titles
AUSTEN_TITLES = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}

VADER_SDIST = "vaderSentiment==3.3.2"
_VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MOVIE_SNIPPETS_COUNT = 10605

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}


class DataUnavailableError(MissingRequirementError):
    """A data set cannot be loaded: a package or a tool to fetch it is missing."""


# --------------------------------------------------------------------------- cache plumbing
def _cache_dir() -> pathlib.Path:
    """``$SPA_COMPILER_CACHE`` or ``~/.cache/spa-compiler``."""
    env = os.environ.get("SPA_COMPILER_CACHE")
    return (
        pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "spa-compiler"
    )


def data_dir() -> pathlib.Path:
    """``<cache>/data``: where the fetched data sets live."""
    return _cache_dir() / "data"


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Exclusive advisory lock ``<cache>/data/.lock-<name>`` (no-op without fcntl)."""
    d = data_dir()
    d.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(d / f".lock-{name}", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _tmpdir(name: str) -> Iterator[pathlib.Path]:
    d = data_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=d))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str], cwd: pathlib.Path, what: str, hint: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise DataUnavailableError(f"{what}: {cmd[0]} is not available here", hint=hint) from e
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DataUnavailableError(
            f"{what}: `{' '.join(cmd)}` failed ({proc.returncode}): {tail}", hint=hint
        )


# --------------------------------------------------------------------------- Jane Austen
def _parse_janeaustenr(data: pathlib.Path) -> dict[str, str]:
    """Parse janeaustenr's lazy-load data (Rdata.rdx: gzip; Rdata.rdb: 4-byte length + zlib)."""
    try:
        import rdata
    except ImportError as e:
        raise DataUnavailableError(
            "jane_austen_books needs the Python package rdata",
            hint=f"pip install rdata ({INSTALL_HINT})",
        ) from e

    def parse(raw: bytes) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS"
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress((data / "Rdata.rdx").read_bytes()))
    rdb = (data / "Rdata.rdb").read_bytes()
    books = {}
    for key, (offset, length) in index["variables"].items():
        lines = parse(zlib.decompress(rdb[int(offset) + 4 : int(offset) + int(length)]))
        books[str(key)] = "\n".join("" if s is None else str(s) for s in lines)
    return books


def jane_austen_books() -> dict[str, str]:
    """Jane Austen's six novels: R object name (see `AUSTEN_TITLES`) -> full text, lines joined by
    newlines (about 4.0 M characters in all).

    First use: ``apt-get download r-cran-janeaustenr`` and ``dpkg -x`` into a temporary folder of
    the cache, parse, and keep ``<cache>/data/janeaustenr/books.json``. If R's janeaustenr is
    installed system-wide, its files are read instead of downloading.

    Raises:
        DataUnavailableError: apt-get/dpkg or rdata missing, or the download failed.
    """
    final = data_dir() / "janeaustenr" / "books.json"
    if not final.is_file():
        with _lock("janeaustenr"):
            if not final.is_file():
                _fetch_janeaustenr(final)
    books = json.loads(final.read_text(encoding="utf-8"))
    return {k: books[k] for k in sorted(books)}


def _fetch_janeaustenr(final: pathlib.Path) -> None:
    with _tmpdir("janeaustenr") as tmp:
        if (JANEAUSTENR_SYSTEM_DIR / "Rdata.rdb").is_file():
            data = JANEAUSTENR_SYSTEM_DIR
        else:
            hint = (
                f"run `apt-get update` (as root) so that `apt-get download {JANEAUSTENR_DEB}` "
                "finds it; never `apt-get install` it (it pulls in R)"
            )
            _run(
                ["apt-get", "download", JANEAUSTENR_DEB], tmp, "fetching Jane Austen's novels", hint
            )
            debs = sorted(tmp.glob(f"{JANEAUSTENR_DEB}_*.deb"))
            if not debs:
                raise DataUnavailableError(
                    f"apt-get download {JANEAUSTENR_DEB} left no .deb file", hint=hint
                )
            root = tmp / "root"
            _run(["dpkg", "-x", str(debs[-1]), str(root)], tmp, "unpacking janeaustenr",
                 "install dpkg (Debian/Ubuntu only)")  # fmt: skip
            data = root / JANEAUSTENR_SYSTEM_DIR.relative_to("/")
        books = _parse_janeaustenr(data)
        if len(books) != 6:
            raise DataUnavailableError(f"janeaustenr holds {len(books)} books, expected 6")
        out = tmp / "books.json"
        out.write_text(json.dumps(books, ensure_ascii=False), encoding="utf-8")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, final)


# --------------------------------------------------------------------------- movie snippets
def movie_snippet_ratings() -> list[tuple[str, float]]:
    """The 10,605 movie-review snippets of Hutto & Gilbert (ICWSM 2014) with their mean human
    sentiment rating in [-4, 4], in file order.

    First use: ``pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`` (with this
    interpreter's pip) into a temporary folder of the cache; the snippets file is taken from the
    sdist's additional_resources/hutto_ICWSM_2014.tar.gz and kept as
    ``<cache>/data/vader/movieReviewSnippets_GroundTruth.txt``.

    Raises:
        DataUnavailableError: pip is missing or the download failed.
    """
    final = data_dir() / "vader" / pathlib.PurePosixPath(_VADER_MEMBER).name
    if not final.is_file():
        with _lock("vader"):
            if not final.is_file():
                _fetch_vader(final)
    out = []
    with open(final, encoding="utf-8", newline=None) as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            _id, rating, text = line.split("\t", 2)
            out.append((text.strip(), float(rating)))
    return out


def movie_snippets() -> list[tuple[str, int]]:
    """The 10,605 movie-review snippets as (text, label), label 1 when the mean rating is > 0."""
    return [(text, int(r > 0)) for text, r in movie_snippet_ratings()]


def _fetch_vader(final: pathlib.Path) -> None:
    hint = (
        f"needs pip and PyPI: {sys.executable} -m pip download --no-deps --no-binary :all: "
        f"{VADER_SDIST}"
    )
    with _tmpdir("vader") as tmp:
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", str(tmp), VADER_SDIST],
            tmp, "fetching the vaderSentiment sdist", hint,
        )  # fmt: skip
        sdists = sorted(tmp.glob("vader[Ss]entiment-3.3.2*.tar.gz"))
        if not sdists:
            raise DataUnavailableError(f"pip download {VADER_SDIST} left no sdist", hint=hint)
        with tarfile.open(sdists[0], "r:gz") as sdist:
            inner = next(
                (m for m in sdist.getmembers()
                 if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")), None,
            )  # fmt: skip
            if inner is None:
                raise DataUnavailableError(
                    "the vaderSentiment sdist has no hutto_ICWSM_2014.tar.gz"
                )
            blob = sdist.extractfile(inner).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as res:
            text = res.extractfile(_VADER_MEMBER).read()  # type: ignore[union-attr]
        out = tmp / "snippets.txt"
        out.write_bytes(text)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, final)


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: pathlib.Path, magic: int, ndim: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataUnavailableError(
            f"{path} is not an IDX file (magic {got:#x}, expected {magic:#x})"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(
    split: str = "test", *, root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ("train": 60,000, "test": 10,000) as (images uint8 [N, 28, 28],
    labels int64 [N] in 0..9, see `FASHION_MNIST_CLASSES`).

    Reads the IDX files of the Debian package dataset-fashion-mnist (`root` defaults to
    /usr/share/datasets/fashion-mnist, or ``$FASHION_MNIST_DIR``). The arrays are read-only views.

    Raises:
        UsageError: unknown split.
        DataUnavailableError: the package is not installed.
    """
    if split not in _FASHION_FILES:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}", hint="use 'train' or 'test'")
    base = pathlib.Path(root or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    images_file, labels_file, count = _FASHION_FILES[split]
    if not (base / images_file).is_file() or not (base / labels_file).is_file():
        raise DataUnavailableError(
            f"Fashion-MNIST is not installed ({base / images_file} is missing)",
            hint=f"apt-get install dataset-fashion-mnist (as root), or {INSTALL_HINT}",
        )
    images = _read_idx(base / images_file, 0x00000803, 3)
    labels = _read_idx(base / labels_file, 0x00000801, 1).astype(np.int64)
    if images.shape != (count, 28, 28) or labels.shape != (count,):
        raise DataUnavailableError(
            f"Fashion-MNIST {split}: unexpected shapes {images.shape}, {labels.shape}"
        )
    return images, labels


def fashion_mnist_available(root: str | os.PathLike[str] | None = None) -> bool:
    """Whether the Fashion-MNIST IDX files are installed."""
    base = pathlib.Path(root or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    return all((base / f).is_file() for names in _FASHION_FILES.values() for f in names[:2])
