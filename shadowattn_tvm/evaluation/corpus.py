"""Real text available offline: Jane Austen (Debian r-cran-janeaustenr) and the Python docs
(Debian python3.11-doc). Packages are fetched with `apt-get download` (never installed),
unpacked into the cache, and parsed: the novels live in R's serialised .rdb/.rdx (the PyPI
`rdata` package reads them; each .rdb entry is a 4-byte length then zlib data).
"""
from __future__ import annotations

import glob
import gzip
import shutil
import subprocess
import warnings
import zlib
from pathlib import Path

from ..settings import cache_dir, cache_lock

AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")


def _debian_package(name: str) -> Path:
    root = cache_dir() / "debian" / name
    if root.exists():
        return root
    with cache_lock(f"debian-{name}"):
        return root if root.exists() else _fetch_package(name, root)


def _fetch_package(name: str, root: Path) -> Path:
    work = root.with_suffix(".part")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = subprocess.run(["apt-get", "download", name], cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        result = subprocess.run(["apt-get", "download", name], cwd=work, capture_output=True, text=True)
    debs = list(work.glob("*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {name} failed: {result.stderr.strip()[-300:]}")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "root")], check=True)
    work.rename(root)
    return root


def austen(novel: str = "prideprejudice") -> str:
    """One of Jane Austen's six novels as plain text (lines joined by newlines)."""
    if novel not in AUSTEN_NOVELS:
        raise ValueError(f"unknown novel {novel!r}; known: {', '.join(AUSTEN_NOVELS)}")
    import rdata

    data = _debian_package("r-cran-janeaustenr") / "root/usr/lib/R/site-library/janeaustenr/data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
        offset, length = (int(x) for x in index["variables"][novel])
        with open(data / "Rdata.rdb", "rb") as f:
            f.seek(offset)
            chunk = f.read(length)
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
    return "\n".join(str(line) for line in lines)


def python_docs(max_chars: int = 2_000_000) -> str:
    """English prose and code from the Python 3.11 documentation sources."""
    root = _debian_package("python3.11-doc") / "root/usr/share/doc/python3.11/html/_sources"
    parts, total = [], 0
    for path in sorted(glob.glob(str(root / "**/*.rst.txt"), recursive=True)):
        text = Path(path).read_text(errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def load_text(spec: str) -> str:
    """A file path, or `austen:<novel>` / `pydocs` for the built-in corpora.

    A file must be UTF-8 text (a leading BOM is dropped, CRLF and CR line ends become LF); one with
    NUL bytes or invalid UTF-8 is a ValueError naming the byte offset, never read as replacement
    characters.
    """
    if spec.startswith("austen"):
        return austen(spec.split(":", 1)[1] if ":" in spec else "prideprejudice")
    if spec == "pydocs":
        return python_docs()
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no text file {spec!r} (or use austen:<novel> / pydocs)")
    if path.is_dir():
        raise ValueError(f"text file {spec} is a directory: pass a text file inside it (or austen:<novel> / pydocs)")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"text file {spec} is binary (a NUL byte at byte {nul}): pass a UTF-8 text file (convert "
                         f"UTF-16 text with `iconv -f utf-16 -t utf-8`)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text file {spec} is not UTF-8 ({err.reason} at byte {err.start}): convert it, e.g. "
                         f"`iconv -f latin1 -t utf-8 {spec} > out.txt`, and pass the result") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
