"""Verified downloads of checkpoint files: resumable HTTP (urllib), Google Drive through gdown, sha256 lock file.

A download goes to ``<file>.part`` and is renamed onto ``<file>`` only after its size and sha256 have been checked,
so a file at the final path is always complete. An interrupted transfer keeps its ``.part`` and the next attempt
resumes it with an HTTP ``Range`` request (a server that answers 200 instead of 206 gets a fresh download). A file
whose checksum is wrong is deleted. When every URL fails the error is one line naming the URL and the exact path
where the file can be placed by hand.

Mirrors: ``$DIRACTRAP_MIRRORS`` (base URLs separated by spaces or commas) and the workflow's ``downloads.mirrors``
list name servers tried, in order, before a file's official URLs, as ``<base>/<file name>`` -- for the Google
Drive file too. A cluster whose compute nodes cannot reach the internet hosts the checkpoints on an internal
server; ``$DIRACTRAP_MIRRORS_ONLY=1`` (``downloads.official: false``) then skips the official URLs altogether.
A file from a mirror goes through the same size and sha256 checks as any other.

Checksums that are not known in advance are recorded in a lock file (JSON, beside the checkpoints:
``<checkpoint dir>/checkpoints.lock``) and every later use is verified against it (trust on first use). Only a file
that has been loaded as the expected architecture is recorded (:func:`diractrap.models.registry.fetch_checkpoint`
does that), with its origin: a completed download, or a file placed by hand. The lock lives with the files it
vouches for because the package directory may be read-only and a shared checkpoint directory should carry one
record for all its users; a hash pinned in the registry or passed as ``sha256=`` takes precedence over the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..data import atomic_path

__all__ = ["DownloadError", "ChecksumError", "download", "sha256sum", "verify_file", "ChecksumLock", "LOCK_NAME",
           "mirror_urls",
           "MIRRORS_ENV", "MIRRORS_ONLY_ENV"]

LOCK_NAME = "checkpoints.lock"
MIRRORS_ENV = "DIRACTRAP_MIRRORS"  # base URLs tried before the official ones (spaces or commas between them)
MIRRORS_ONLY_ENV = "DIRACTRAP_MIRRORS_ONLY"  # "1": never try the official URLs (air-gapped compute nodes)
_CHUNK = 1 << 20  # bytes per read
_GDRIVE = "gdrive:"  # URL scheme of a Google Drive file id, fetched through gdown


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched; the message names the URL and where to place the file by hand."""


class ChecksumError(DownloadError):
    """A downloaded or present file does not have the expected size or sha256."""


class _Truncated(OSError):
    """The server closed the connection before the announced length: resumable."""


# ---------------------------------------------------------------------------------------------------------------
# Hashing (memoised per file identity, so loading right after verifying does not read a large file twice)
# ---------------------------------------------------------------------------------------------------------------

_DIGESTS: dict[tuple, str] = {}


def sha256sum(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; cached on (path, inode, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def verify_file(path, sha256: str | None = None, size: int | None = None, *, what: str | None = None,
                hint: str = "") -> str:
    """The sha256 of ``path`` after checking it against the expected ``sha256`` and ``size`` (None: not checked).

    The one verifier of every file the project trusts by its hash (downloads, checkpoints, the demo weights). A
    mismatch raises :class:`ChecksumError` "<what> has <size or sha256> instead of <expected>; <hint>", where
    ``what`` names the file (default: its path) and ``hint`` says what to do. A wrong size is reported without
    hashing the file.
    """
    path = Path(path)
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        mismatch = f"{got_size} bytes instead of {size}"
    else:
        digest = sha256sum(path)
        if sha256 is None or digest == sha256.lower():
            return digest
        mismatch = f"sha256 {digest} instead of {sha256.lower()}"
    raise ChecksumError(f"{what or path} has {mismatch}" + (f"; {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------------------------
# The lock file: {filename: {sha256, size, url, recorded}} beside the checkpoints
# ---------------------------------------------------------------------------------------------------------------


class ChecksumLock:
    """The sha256 record of a checkpoint directory (``<root>/checkpoints.lock``, JSON)."""

    def __init__(self, root):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME

    def entries(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path} is not valid JSON ({err}); fix or delete it") from err

    def get(self, filename: str) -> dict | None:
        return self.entries().get(filename)

    def record(self, filename: str, *, sha256: str, size: int, url: str | None = None,
               origin: str = "download") -> None:
        """Add or replace one entry (read-modify-write under an exclusive lock, written atomically).

        ``origin``: "download" (fetched from ``url``) or "placed by hand" (found at the path, never downloaded).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root / f".{LOCK_NAME}.flock"):
            entries = self.entries()
            entries[filename] = {"sha256": sha256, "size": size, "url": url, "origin": origin,
                                 "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write(entries)

    def forget(self, filename: str) -> bool:
        """Remove one entry; True if there was one. The lock file goes when its last entry does."""
        if not self.path.is_file():
            return False
        with _exclusive(self.root / f".{LOCK_NAME}.flock"):
            entries = self.entries()
            if entries.pop(filename, None) is None:
                return False
            self._write(entries)
            return True

    def _write(self, entries: dict) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _exclusive(lockfile: Path):
    """An inter-process exclusive lock (POSIX flock) so parallel jobs do not write the same .part file.

    The lock file is removed on release, so no empty ``.flock`` file stays behind. A process that was waiting on
    the removed file finds, once it holds the lock, that the path no longer names the file it locked, and locks
    the new one instead (the usual unlink-on-release protocol).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no inter-process locking
        yield
        return
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lockfile, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lockfile))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder before us removed this file: lock the current one
    try:
        yield
    finally:
        lockfile.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


# ---------------------------------------------------------------------------------------------------------------
# Mirrors: <base>/<file name> on servers listed by the user, tried before the official URLs
# ---------------------------------------------------------------------------------------------------------------


def _env_mirrors() -> list[str]:
    return [m for m in os.environ.get(MIRRORS_ENV, "").replace(",", " ").split() if m]


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use 1 or 0")


def mirror_urls(filename: str, official=(), *, mirrors=None, use_official: bool | None = None) -> list[str]:
    """The URLs to try for ``filename``: each mirror's ``<base>/<filename>``, then the ``official`` ones.

    ``mirrors``: base URLs (``http(s)://host/dir``) from the caller (the workflow's ``downloads.mirrors``), tried
    before those of ``$DIRACTRAP_MIRRORS``; duplicates are dropped, order kept. ``use_official``: False skips the
    official URLs (None: unless ``$DIRACTRAP_MIRRORS_ONLY=1``). Mirrors apply to every official scheme, the
    Google Drive file (``gdrive:<id>``) included: a mirror serves the file under its registry name.
    """
    bases = [str(m) for m in (mirrors or [])] + _env_mirrors()
    for base in bases:
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"checkpoint mirror {base!r} is not an http(s) URL; give base URLs such as "
                             f"https://host/checkpoints (in ${MIRRORS_ENV} or downloads.mirrors)")
    if use_official is None:
        only = _env_flag(MIRRORS_ONLY_ENV)
        use_official = not only if only is not None else True
    official = [official] if isinstance(official, str) else list(official)
    if not use_official and not bases:
        raise ValueError(f"official URLs are switched off (${MIRRORS_ONLY_ENV} or downloads.official: false) but "
                         f"no mirror is given for {filename}: set ${MIRRORS_ENV} or downloads.mirrors")
    from_mirrors = [f"{b.rstrip('/')}/{urllib.parse.quote(filename)}" for b in bases]
    urls = from_mirrors + official if use_official else from_mirrors
    return list(dict.fromkeys(urls))


# ---------------------------------------------------------------------------------------------------------------
# Download: .part file, resume, verification, atomic rename
# ---------------------------------------------------------------------------------------------------------------


def download(urls, dest, *, sha256: str | None = None, size: int | None = None, progress: bool = True,
             timeout: float = 60.0, retries: int = 2) -> str:
    """Fetch ``dest`` from the first URL that works; return its sha256.

    ``urls``: one URL or several mirrors (``http(s)://...`` or ``gdrive:<file id>``). ``sha256`` / ``size``: the
    expected values when known (a mismatch deletes the download and raises :class:`ChecksumError`). A connection
    cut mid-transfer is resumed up to ``retries`` times; the ``.part`` file stays for a later call otherwise.
    """
    dest = Path(dest).absolute()  # error messages give the exact place for a file copied by hand
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise DownloadError(f"no URL is known for {dest.name}; place the file by hand at {dest}")
    part = dest.with_name(dest.name + ".part")
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # removed again if nothing comes
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[DownloadError] = []
    with _exclusive(dest.with_name(f".{dest.name}.flock")):
        if dest.is_file():  # another process finished it while we waited for the lock
            return _verify(dest, sha256, size, url=urls[0], dest=dest, delete=False)
        for url in urls:
            try:
                if url.startswith(_GDRIVE):
                    _fetch_gdrive(url[len(_GDRIVE):], part, dest, progress=progress)
                else:
                    _fetch_http_resuming(url, part, dest, progress=progress, timeout=timeout, retries=retries)
                digest = _verify(part, sha256, size, url=url, dest=dest, delete=True)
            except DownloadError as err:
                failures.append(err)
                continue
            except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
                failures.append(DownloadError(f"could not download {url} ({_reason(err)}); "
                                              f"place the file by hand at {dest}"))
                continue
            os.replace(part, dest)
            return digest
    for d in made:  # deepest first: a failed download leaves no new empty directory (a kept .part stops this)
        with contextlib.suppress(OSError):
            d.rmdir()
    if len(failures) == 1:
        raise failures[0]
    kind = ChecksumError if all(isinstance(f, ChecksumError) for f in failures) else DownloadError
    raise kind(" | ".join(str(f) for f in failures))


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"offline or unreachable: {err.reason}"
    return f"{type(err).__name__}: {err}"


def _verify(path: Path, sha256: str | None, size: int | None, *, url: str, dest: Path, delete: bool) -> str:
    """:func:`verify_file` for a download (``delete``: the ``.part`` file, removed on a mismatch) or a file found
    at ``dest``."""
    if not delete:
        return verify_file(path, sha256, size, hint=f"delete it to download it again from {url}, or place the right "
                                                   "file there by hand")
    try:
        return verify_file(path, sha256, size, what=f"the file from {url}",
                           hint=f"the download was removed. Check the URL, or place the right file by hand at {dest}")
    except ChecksumError:
        path.unlink(missing_ok=True)
        raise


def _fetch_http_resuming(url: str, part: Path, dest: Path, *, progress: bool, timeout: float, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            return _fetch_http(url, part, progress=progress, timeout=timeout, label=dest.name)
        except (_Truncated, ConnectionError, TimeoutError, http.client.IncompleteRead) as err:
            if attempt == retries:
                raise DownloadError(f"could not download {url} (connection lost: {err}; the partial file "
                                    f"{part.name} is kept and resumed next time); place the file by hand at "
                                    f"{dest}") from err


def _fetch_http(url: str, part: Path, *, progress: bool, timeout: float, label: str) -> None:
    """One HTTP GET into ``part``, continuing it with a Range request when it already holds bytes."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "diractrap (checkpoint download)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the .part is not a prefix of this file: start again
            part.unlink()
            return _fetch_http(url, part, progress=progress, timeout=timeout, label=label)
        raise
    with response:
        if response.status == 206 and (not offset or _range_start(response) != offset):
            if not offset:
                raise DownloadError(f"{url} answered a whole-file request with a partial response (206)")
            response.close()
            part.unlink()  # the server sent another range than asked: start again without one
            return _fetch_http(url, part, progress=progress, timeout=timeout, label=label)
        if response.status == 206:
            mode = "ab"
            total = _range_total(response)
        else:  # 200: the server ignored the range (or there was none): the whole file from byte 0
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=label, disable=not progress, leave=False) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Truncated(f"received {got} of {total} bytes")


def _range_start(response) -> int | None:
    """First byte of a 206 answer, from ``Content-Range: bytes a-b/total``."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(response) -> int | None:
    value = response.headers.get("Content-Range", "")
    total = value.rsplit("/", 1)[-1] if "/" in value else "*"
    return int(total) if total.isdigit() else None


def _fetch_gdrive(file_id: str, part: Path, dest: Path, *, progress: bool) -> None:
    """A Google Drive file through gdown (it handles the confirmation page of large files); not testable offline."""
    try:
        import gdown
    except ImportError as err:  # pragma: no cover - gdown is a dependency
        raise DownloadError(f"gdown is needed for Google Drive file {file_id}: pip install gdown") from err
    url = f"https://drive.google.com/uc?id={file_id}"
    try:
        out = gdown.download(id=file_id, output=str(part), quiet=not progress, resume=True)
    except Exception as err:  # gdown raises its own exception types (FileURLRetrievalError...) and OSErrors
        raise DownloadError(f"could not download {url} through gdown ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); place the file by "
                            f"hand at {dest}") from err
    if out is None or not part.is_file():
        raise DownloadError(f"could not download {url} through gdown; place the file by hand at {dest}")
