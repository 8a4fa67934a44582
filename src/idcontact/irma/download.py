"""Downloading and updating one IRMA scheme directory from its URL, as the Yivi server does.

A scheme at URL ``U`` publishes ``U/index``, ``U/index.sig`` and every file its index lists:
the index line ``<sha256> irma-demo/RU/description.xml`` is served at
``U/RU/description.xml``. ``U/timestamp`` (listed in the index too) is the Unix time of the
version. The scheme's ``pk.pem`` is deliberately never fetched: whoever controls ``U`` could
otherwise sign anything. The key is pinned by the caller on a first download, and on an update
the local copy's key is used.

Order of trust: ``index.sig`` is checked over the downloaded ``index`` before anything else is
fetched; a ``timestamp`` older than the local one is refused (a replayed old, validly signed
version could revive withdrawn issuer keys); every file is checked against its signed hash as
it arrives. The new version is built in a hidden sibling directory, loaded with
:func:`load_scheme`, and only then renamed into place, so a failed download leaves the old
scheme as it was. Files the index does not list (``sk.pem``, ``PrivateKeys/``) are not carried
over: a verifier needs none, and a stale key file would make the scheme refuse to load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import anyio
import httpx

from idcontact.irma.schemes import MAX_INDEX_BYTES, load_scheme, signed_index
from idcontact.irma.xml import SchemeError

logger = logging.getLogger(__name__)

MAX_SIGNATURE_BYTES = 1024
"""An ECDSA P-256 signature in DER is at most 72 bytes."""
RESERVED = frozenset({"index", "index.sig", "pk.pem", "sk.pem"})
"""Files the download writes itself (or never writes); an index must not list them."""


@dataclass(frozen=True)
class DownloadLimits:
    """What one download may cost; a hostile or broken server hits these, not our disk."""

    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 64 << 20
    timeout: float = 20.0
    """Seconds per request (connect, and between bytes)."""
    deadline: float = 300.0
    """Seconds for the whole download."""
    max_redirects: int = 3


@dataclass(frozen=True)
class SchemeUpdate:
    updated: bool
    """Whether the scheme directory was replaced."""
    fetched: int
    """Files of the index downloaded (``index`` and ``index.sig`` not counted)."""
    timestamp: int
    """The scheme version now on disk (Unix time from its ``timestamp``)."""


async def update_scheme(
    url: str,
    directory: Path,
    *,
    public_key: bytes | None = None,
    client: httpx.AsyncClient | None = None,
    limits: DownloadLimits | None = None,
) -> SchemeUpdate:
    """Download the scheme at ``url`` into ``directory`` (named after the scheme id), or bring
    an existing copy up to date, fetching only files whose content differs.

    ``public_key``: the scheme's pinned ``pk.pem``; required when ``directory`` holds no scheme
    yet. Given on an update, it replaces the local key (a deliberate re-pin). Raises
    :class:`SchemeError`, naming the file and the reason, and then ``directory`` is unchanged.
    """
    limits = limits or DownloadLimits()
    name = directory.name
    base = _base_url(name, url)
    local = await anyio.to_thread.run_sync(_read_local, directory)
    key = public_key if public_key is not None else local.key
    if key is None:
        raise SchemeError(f"scheme {name}: no local copy, so its pk.pem must be given (pinned)")
    own_client = client is None
    if client is None:
        client = httpx.AsyncClient(timeout=limits.timeout, follow_redirects=False)
    fetcher = _Fetcher(name, base, client, limits)
    try:
        with anyio.fail_after(limits.deadline):
            plan = await _download(fetcher, directory, local, key)
    except TimeoutError:
        raise SchemeError(f"scheme {name}: download took longer than {limits.deadline} s") from None
    finally:
        if own_client:
            await client.aclose()
    if plan.files is None:
        return SchemeUpdate(updated=False, fetched=0, timestamp=plan.timestamp)
    # Outside the deadline: a swap that a timeout interrupted would be reported as failed.
    await anyio.to_thread.run_sync(_install, directory, plan.files)
    logger.info("scheme %s updated to %d (%d files fetched)", name, plan.timestamp, plan.fetched)
    return SchemeUpdate(updated=True, fetched=plan.fetched, timestamp=plan.timestamp)


@dataclass(frozen=True)
class _Plan:
    timestamp: int
    fetched: int = 0
    files: dict[str, bytes] | None = None
    """The new directory's content; ``None`` when the local copy is current."""


async def _download(fetcher: _Fetcher, directory: Path, local: _Local, key: bytes) -> _Plan:
    name = directory.name
    index = await fetcher.get("index", MAX_INDEX_BYTES)
    signature = await fetcher.get("index.sig", MAX_SIGNATURE_BYTES)
    entries = signed_index(name, index, signature, key)  # before anything else is fetched
    for path in entries:
        if path in RESERVED:
            raise SchemeError(f"scheme {name}: the index lists {path}, which is never downloaded")
    if "timestamp" not in entries:
        raise SchemeError(f"scheme {name}: the index lists no timestamp")
    keep = await anyio.to_thread.run_sync(_unchanged, directory, entries, fetcher.limits)
    fetched: dict[str, bytes] = {}
    if "timestamp" in keep:
        timestamp = _timestamp(name, keep["timestamp"])
    else:
        fetched["timestamp"] = await fetcher.file("timestamp", entries["timestamp"])
        timestamp = _timestamp(name, fetched["timestamp"])
    if local.timestamp is not None and timestamp < local.timestamp:
        raise SchemeError(
            f"scheme {name}: timestamp {timestamp} is older than the local copy's "
            f"{local.timestamp} (a rollback)"
        )
    current = (
        len(keep) == len(entries)
        and (local.index, local.signature, local.key) == (index, signature, key)
        and await anyio.to_thread.run_sync(_loads, directory)
    )
    if current:
        return _Plan(timestamp)
    for path in sorted(entries):
        if path not in keep and path not in fetched:
            fetched[path] = await fetcher.file(path, entries[path])
    files = {**keep, **fetched, "index": index, "index.sig": signature, "pk.pem": key}
    return _Plan(timestamp, len(fetched), files)


class _Fetcher:
    """GETs below the scheme URL with the limits applied; every failure is a SchemeError."""

    def __init__(
        self, name: str, base: httpx.URL, client: httpx.AsyncClient, limits: DownloadLimits
    ) -> None:
        self.name = name
        self.base = base
        self.client = client
        self.limits = limits
        self.total = 0

    async def file(self, path: str, digest: str) -> bytes:
        """A file of the index, checked against its signed hash."""
        data = await self.get(path, self.limits.max_file_bytes)
        if hashlib.sha256(data).hexdigest() != digest:
            raise SchemeError(f"scheme {self.name}: {path} does not match the signed index")
        return data

    async def get(self, path: str, cap: int) -> bytes:
        where = f"scheme {self.name}: {path}"
        url = self.base.copy_with(
            raw_path=self.base.raw_path
            + "/".join(quote(p, safe="") for p in path.split("/")).encode()
        )
        try:
            for _ in range(self.limits.max_redirects + 1):
                async with self.client.stream(
                    "GET", url, follow_redirects=False, timeout=self.limits.timeout
                ) as response:
                    if response.is_redirect and response.next_request is not None:
                        url = response.next_request.url
                        if not _same_site(self.base, url):
                            raise SchemeError(f"{where}: redirected to another host")
                        continue
                    if response.status_code != 200:
                        raise SchemeError(f"{where}: the server answered {response.status_code}")
                    return await self._body(where, response, cap)
        except httpx.TimeoutException:
            raise SchemeError(f"{where}: timed out") from None
        except httpx.HTTPError as exc:
            raise SchemeError(f"{where}: download failed ({type(exc).__name__})") from None
        raise SchemeError(f"{where}: more than {self.limits.max_redirects} redirects")

    async def _body(self, where: str, response: httpx.Response, cap: int) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise SchemeError(f"{where}: larger than {cap} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            self.total += len(chunk)
            if len(body) > cap:
                raise SchemeError(f"{where}: larger than {cap} bytes")
            if self.total > self.limits.max_total_bytes:
                raise SchemeError(
                    f"{where}: the scheme is larger than {self.limits.max_total_bytes} bytes"
                )
        return bytes(body)


def _base_url(name: str, url: str) -> httpx.URL:
    """The scheme URL with a trailing slash; http(s), no credentials, query or fragment."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise SchemeError(f"scheme {name}: the scheme URL is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SchemeError(f"scheme {name}: the scheme URL must be http(s)://host/…")
    if parsed.userinfo or parsed.query or parsed.fragment:
        raise SchemeError(f"scheme {name}: the scheme URL must not carry credentials or a query")
    if name in ("", ".", "..") or name.startswith("."):
        raise SchemeError(f"scheme {name}: not a scheme directory name")
    path = parsed.raw_path if parsed.raw_path.endswith(b"/") else parsed.raw_path + b"/"
    return parsed.copy_with(raw_path=path)


def _same_site(base: httpx.URL, target: httpx.URL) -> bool:
    """A redirect may stay on the host, or move it from http to https; nothing else."""
    if target.host != base.host:
        return False
    if target.scheme == base.scheme:
        return target.port == base.port
    return base.scheme == "http" and target.scheme == "https"


def _timestamp(name: str, data: bytes) -> int:
    text = data.decode("ascii", "replace").strip()
    if not text.isdigit():
        raise SchemeError(f"scheme {name}: timestamp is not a Unix time")
    return int(text)


@dataclass(frozen=True)
class _Local:
    """What the current copy holds, if any; read once, before the download."""

    key: bytes | None = None
    index: bytes | None = None
    signature: bytes | None = None
    timestamp: int | None = None


def _read_local(directory: Path) -> _Local:
    if directory.exists() and not directory.is_dir():
        raise SchemeError(f"scheme {directory.name}: {directory} is not a directory")

    def read(file: str) -> bytes | None:
        try:
            return (directory / file).read_bytes()
        except OSError:
            return None

    stamp = read("timestamp")
    text = stamp.decode("ascii", "replace").strip() if stamp is not None else ""
    return _Local(
        key=read("pk.pem"),
        index=read("index"),
        signature=read("index.sig"),
        timestamp=int(text) if text.isdigit() else None,
    )


def _unchanged(
    directory: Path, entries: dict[str, str], limits: DownloadLimits
) -> dict[str, bytes]:
    """The local files whose content already has the signed hash; the rest is downloaded."""
    keep: dict[str, bytes] = {}
    for path, digest in entries.items():
        file = directory / path
        try:
            if not file.is_file() or file.stat().st_size > limits.max_file_bytes:
                continue
            data = file.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == digest:
            keep[path] = data
    return keep


def _loads(directory: Path) -> bool:
    try:
        load_scheme(directory)
    except SchemeError:
        return False
    return True


def _install(directory: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a hidden sibling, load it, and swap it in by renaming.

    The staged copy sits one level down (``.<id>.download-*/<id>``) so that
    :meth:`Schemes.load` never mistakes a leftover for a scheme, and so that it carries the
    scheme's own name, which :func:`load_scheme` checks.
    """
    name = directory.name
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=parent))
    except OSError as exc:
        raise SchemeError(f"scheme {name}: cannot create a directory ({exc.strerror})") from None
    try:
        staged = work / name
        for path, data in files.items():
            _write(staged / PurePosixPath(path), data)
        load_scheme(staged)  # never swap in what we could not load
        _swap(staged, directory, work)
    except OSError as exc:
        raise SchemeError(f"scheme {name}: cannot write the new copy ({exc.strerror})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the scheme


def _swap(staged: Path, directory: Path, work: Path) -> None:
    """Two renames within one file system: the old copy stays whole until the new one takes
    its place, and comes back if that fails."""
    if directory.exists() or directory.is_symlink():
        previous = work / "previous"
        os.rename(directory, previous)
        try:
            os.rename(staged, directory)
        except OSError:
            os.rename(previous, directory)
            raise
    else:
        os.rename(staged, directory)
    descriptor = os.open(directory.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def update_all(root: Path, urls: Mapping[str, str]) -> bool:
    """Bring every scheme of ``urls`` (id → URL) under ``root`` up to date; whether any
    changed. A failure leaves that scheme as it was and is logged, never raised: the server
    goes on with what it verified before (a rollback attempt, say, is refused here)."""
    changed = False
    for scheme, url in sorted(urls.items()):
        try:
            changed |= (await update_scheme(url, root / scheme)).updated
        except SchemeError as exc:
            logger.warning("scheme %s not updated: %s", scheme, exc)
    return changed
