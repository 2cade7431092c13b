"""SA-1B download: the user's links file, resumable HTTP Range downloads with a progress bar, completeness checks."""

from __future__ import annotations

import logging
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)
SPLITS = Path(__file__).resolve().parent / "splits"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file that could not be downloaded completely."""


def read_links(path: str | os.PathLike) -> dict[str, str]:
    """The SA-1B links file (tab-separated `file_name<TAB>cdn_link`, with a header line) -> {file_name: url}."""
    links = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.strip().split("\t")
        if not line.strip() or parts[0] == "file_name":
            continue
        if len(parts) != 2 or not parts[1].startswith(("http://", "https://")):
            raise ValueError(f"{path}:{n}: expected 'file_name<TAB>url', got {line[:80]!r}")
        links[parts[0]] = parts[1]
    if not links:
        raise ValueError(f"{path} holds no links; download the links file from the SA-1B page")
    return links


def read_split(name_or_path: str) -> list[str]:
    """A split list (data/splits/NAME.txt, or a path): one tar name per line, '#' comments."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SPLITS / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in SPLITS.glob("*.txt"))
        raise FileNotFoundError(f"no split {name_or_path!r}; known: {known}, or pass a file path")
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def check_tar(path: str | os.PathLike) -> int:
    """Number of regular members of a complete tar; raises DownloadError for a truncated or unreadable one."""
    size = os.path.getsize(path)
    n = 0
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.offset_data + m.size > size:
                    raise DownloadError(f"{path} is truncated inside member {m.name}")
                n += m.isreg()
    except tarfile.TarError as e:
        raise DownloadError(f"{path} is not a complete tar: {e}") from e
    return n


def _total(resp, offset: int) -> int | None:
    cr = resp.headers.get("Content-Range")
    if cr and (m := re.match(r"bytes \d+-\d+/(\d+)", cr)):
        return int(m[1])
    cl = resp.headers.get("Content-Length")
    return None if cl is None else int(cl) + (offset if resp.status == 206 else 0)


def download(url: str, dest: str | os.PathLike, retries: int = 5, progress: bool = True, timeout: float = 60) -> Path:
    """Downloads `url` to `dest`, resuming a `dest.part` left by an earlier attempt (HTTP Range).

    The file is renamed to `dest` only when its size equals the server's total and, for `.tar`, every member is
    complete. A server that ignores Range (200 instead of 206) restarts the file from zero.

    Raises:
        DownloadError: still incomplete after `retries` attempts, or the server refuses (expired link: HTTP 403).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if offset and resp.status != 206:
                    offset = 0  # no Range support: start again
                total = _total(resp, offset)
                with (
                    open(part, "ab" if offset else "wb") as f,
                    tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                    ) as bar,
                ):
                    while block := resp.read(CHUNK):
                        f.write(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # range past the end: the part file is already complete
                total = offset
            elif e.code in (401, 403, 404, 410):
                raise DownloadError(f"{dest.name}: HTTP {e.code}; links expire, get a fresh links file") from e
            else:
                log.warning("%s: HTTP %s (attempt %d/%d)", dest.name, e.code, attempt, retries)
                continue
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            log.warning("%s: %s (attempt %d/%d), resuming", dest.name, e, attempt, retries)
            time.sleep(min(2.0**attempt, 30) if attempt < retries else 0)
            continue
        size = part.stat().st_size
        if total is not None and size != total:
            log.warning("%s: %d of %d bytes (attempt %d/%d), resuming", dest.name, size, total, attempt, retries)
            continue
        if dest.suffix == ".tar":
            check_tar(part)
        os.replace(part, dest)
        return dest
    raise DownloadError(f"{dest.name}: incomplete after {retries} attempts; run again to resume from {part}")


def download_split(
    links_file: str | os.PathLike, names: list[str], out_dir: str | os.PathLike, progress: bool = True
) -> list[Path]:
    """Downloads the named tars into `out_dir`, skipping those already complete."""
    links = read_links(links_file)
    unknown = [n for n in names if n not in links]
    if unknown:
        raise ValueError(f"{len(unknown)} files are not in {links_file}, e.g. {unknown[:3]}")
    done = []
    for name in names:
        dest = Path(out_dir) / name
        if dest.is_file():
            try:
                check_tar(dest)
                done.append(dest)
                continue
            except DownloadError as e:
                log.warning("%s; downloading it again", e)
                dest.rename(dest.with_name(dest.name + ".part"))
        done.append(download(links[name], dest, progress=progress))
    return done
