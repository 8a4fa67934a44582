"""Scheme download and update against a real HTTP server on 127.0.0.1: only signed content
gets in, only changed files are fetched, and every failure leaves the old scheme as it was."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from idcontact.irma.download import DownloadLimits, update_all, update_scheme
from idcontact.irma.schemes import Schemes, load_scheme
from idcontact.irma.xml import SchemeError
from tests.irma.schemetools import (
    CONFIGURATION,
    Served,
    listed,
    publish,
    scheme_server,
    sign,
    write_index,
)

pytestmark = pytest.mark.anyio

PIN = (CONFIGURATION / "irma-demo" / "pk.pem").read_bytes()
OTHER_KEY = (CONFIGURATION / "test" / "pk.pem").read_bytes()
CARD = "RU/Issues/studentCard/description.xml"
STAMP = int((CONFIGURATION / "irma-demo" / "timestamp").read_text())
ESCAPE_LINE = f"index line {len(listed(CONFIGURATION / 'irma-demo')) + 1} is malformed"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with scheme_server(tmp_path / "server") as server:
        yield server


@pytest.fixture
def local(tmp_path: Path) -> Path:
    return tmp_path / "local" / "irma_configuration" / "irma-demo"


@pytest.fixture
async def installed(served: Served, local: Path) -> AsyncIterator[Path]:
    """A first download, done; the server's request log starts empty after it."""
    await update_scheme(served.url, local, public_key=PIN)
    served.behaviour.requests.clear()
    yield local


def tree(root: Path) -> dict[str, str]:
    """Every file and directory below ``root``, hidden ones included, with file hashes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


async def test_a_first_download_loads_and_holds_only_the_signed_files(
    served: Served, local: Path
) -> None:
    result = await update_scheme(served.url, local, public_key=PIN)
    assert result.updated and result.timestamp == STAMP
    assert result.fetched == len(listed(served.scheme)) == len(listed(CONFIGURATION / "irma-demo"))
    assert load_scheme(local).timestamp == STAMP
    schemes = Schemes.load(local.parent)
    assert schemes.public_key("irma-demo.RU", 2) is not None
    # The pinned key, never the server's; no private keys although the server has them.
    requested = served.behaviour.requests
    assert requested[:2] == ["index", "index.sig"]
    assert not {"pk.pem", "sk.pem"} & set(requested)
    assert not any("PrivateKeys" in r for r in requested)
    assert (local / "pk.pem").read_bytes() == PIN
    assert not (local / "sk.pem").exists() and not (local / "RU" / "PrivateKeys").exists()
    assert sorted(p.name for p in local.parent.iterdir()) == ["irma-demo"]  # no leftovers


async def test_an_unchanged_scheme_costs_two_requests(served: Served, installed: Path) -> None:
    before = tree(installed.parent)
    result = await update_scheme(served.url, installed)  # the local pk.pem is the pin
    assert (result.updated, result.fetched, result.timestamp) == (False, 0, STAMP)
    assert served.behaviour.requests == ["index", "index.sig"]
    assert tree(installed.parent) == before


async def test_an_update_fetches_only_the_changed_files(served: Served, installed: Path) -> None:
    card = served.scheme / CARD
    card.write_text(card.read_text().replace("Demo Student Card", "Student Card v2"))
    (served.scheme / "RU" / "PublicKeys" / "0.xml").unlink()  # a withdrawn key
    timestamp = publish(served.scheme)
    result = await update_scheme(served.url, installed)
    assert (result.updated, result.fetched, result.timestamp) == (True, 2, timestamp)
    assert served.behaviour.requests == ["index", "index.sig", "timestamp", CARD]
    scheme = Schemes.load(installed.parent)
    card_type = scheme.credential_type("irma-demo.RU.studentCard")
    assert card_type is not None and card_type.names["en"] == "Student Card v2"
    assert scheme.public_key("irma-demo.RU", 0) is None
    assert not (installed / "RU" / "PublicKeys" / "0.xml").exists()
    assert sorted(p.name for p in installed.parent.iterdir()) == ["irma-demo"]


async def test_a_damaged_local_file_is_fetched_again(served: Served, installed: Path) -> None:
    (installed / CARD).write_text("damaged")
    result = await update_scheme(served.url, installed)
    assert (result.updated, result.fetched) == (True, 1)
    assert served.behaviour.requests == ["index", "index.sig", CARD]
    load_scheme(installed)


async def test_a_redirect_on_the_same_host_is_followed(served: Served, local: Path) -> None:
    moved = served.url.replace("/irma_configuration/", "/moved/")
    assert (await update_scheme(moved, local, public_key=PIN)).updated
    load_scheme(local)


def _tampered(s: Served) -> None:
    card = s.scheme / CARD
    card.write_text(card.read_text().replace("Demo Student Card", "Student Card v2"))
    publish(s.scheme)
    card.write_text(card.read_text().replace("v2", "v3"))  # after signing


def _bad_signature(s: Served) -> None:
    publish(s.scheme)
    index = s.scheme / "index"
    signed = index.read_bytes()
    index.write_bytes(signed.replace(b"irma-demo/RU/logo.png", b"irma-demo/RU/logo.PNG"))
    sign(s.scheme)  # a valid signature, over another index
    index.write_bytes(signed)


def _older(s: Served) -> None:
    publish(s.scheme, timestamp=1774268227)


def _escaping(path: str) -> Callable[[Served], None]:
    def change(s: Served) -> None:
        publish(s.scheme)
        digest = hashlib.sha256(b"x").hexdigest()
        index = s.scheme / "index"
        index.write_text(index.read_text() + f"{digest} {path}\n")
        sign(s.scheme)

    return change


def _oversized(s: Served) -> None:
    (s.scheme / "RU" / "big.bin").write_bytes(b"\0" * ((1 << 20) + 1))
    publish(s.scheme, add=["RU/big.bin"])


def _missing(s: Served) -> None:
    gone = s.scheme / "RU" / "gone.txt"
    gone.write_text("x")
    publish(s.scheme, add=["RU/gone.txt"])
    gone.unlink()  # listed and signed, but not served


def _dies(s: Served) -> None:
    for path in ("RU/logo.png", "MijnOverheid/logo.png", "stemmen/logo.png"):
        (s.scheme / path).write_bytes((s.scheme / path).read_bytes() + b"\0")
    publish(s.scheme)
    s.behaviour.die_at = "RU/logo.png"  # the second of three changed files


def _elsewhere(s: Served) -> None:
    publish(s.scheme)
    s.behaviour.redirect_to = f"http://localhost:{s.port}"


FAILURES = {
    "tampered file": (_tampered, re.escape(f"{CARD} does not match the signed index")),
    "bad index.sig": (_bad_signature, "index.sig does not match the index"),
    "older timestamp": (_older, "timestamp 1774268227 is older than the local copy"),
    "path with ..": (_escaping("irma-demo/../evil"), ESCAPE_LINE),
    "absolute path": (_escaping("/etc/passwd"), ESCAPE_LINE),
    "other scheme": (_escaping("test/description.xml"), ESCAPE_LINE),
    "scheme id only": (_escaping("irma-demo"), ESCAPE_LINE),
    "pk.pem in index": (_escaping("irma-demo/pk.pem"), "the index lists pk.pem"),
    "oversized file": (_oversized, re.escape("RU/big.bin: larger than 1048576 bytes")),
    "missing file": (_missing, re.escape("RU/gone.txt: the server answered 404")),
    "server dies": (_dies, re.escape("RU/logo.png: download failed (RemoteProtocolError)")),
    "other host": (_elsewhere, "index: redirected to another host"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
async def test_a_bad_update_is_refused_and_the_old_scheme_stays(
    served: Served, installed: Path, case: str
) -> None:
    change, message = FAILURES[case]
    change(served)
    before = tree(installed.parent)
    with pytest.raises(SchemeError, match=message):
        await update_scheme(served.url, installed)
    assert tree(installed.parent) == before  # untouched, no temporary directory left
    assert load_scheme(installed).timestamp == STAMP


async def test_a_tampered_file_stops_the_download_where_it_arrives(
    served: Served, installed: Path
) -> None:
    for path in ("MijnOverheid/logo.png", "stemmen/logo.png"):
        (served.scheme / path).write_bytes((served.scheme / path).read_bytes() + b"\0")
    publish(served.scheme)
    (served.scheme / "MijnOverheid" / "logo.png").write_bytes(b"not the signed logo")
    with pytest.raises(SchemeError, match=re.escape("MijnOverheid/logo.png does not match")):
        await update_scheme(served.url, installed)
    assert served.behaviour.requests == ["index", "index.sig", "timestamp", "MijnOverheid/logo.png"]


async def test_a_wrong_pinned_key_is_refused(served: Served, installed: Path) -> None:
    publish(served.scheme)
    before = tree(installed.parent)
    with pytest.raises(SchemeError, match=re.escape("index.sig does not match the index")):
        await update_scheme(served.url, installed, public_key=OTHER_KEY)
    assert served.behaviour.requests == ["index", "index.sig"]  # nothing more was fetched
    assert tree(installed.parent) == before


async def test_a_slow_server_times_out(served: Served, installed: Path) -> None:
    publish(served.scheme)
    served.behaviour.slow.add("timestamp")
    before = tree(installed.parent)
    with pytest.raises(SchemeError, match="timestamp: timed out"):
        await update_scheme(served.url, installed, limits=DownloadLimits(timeout=0.2))
    assert tree(installed.parent) == before


async def test_the_total_size_is_capped(served: Served, local: Path) -> None:
    with pytest.raises(SchemeError, match="the scheme is larger than 20000 bytes"):
        await update_scheme(
            served.url, local, public_key=PIN, limits=DownloadLimits(max_total_bytes=20_000)
        )
    assert not local.parent.exists()


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["no key", "wrong key"])
async def test_a_first_download_needs_the_right_pinned_key(
    served: Served, local: Path, key: bytes | None
) -> None:
    with pytest.raises(SchemeError, match=r"pk\.pem must be given|index\.sig does not match"):
        await update_scheme(served.url, local, public_key=key)
    assert not local.parent.exists()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/irma-demo",
        "file:///etc/irma-demo",
        "http://user:secret@127.0.0.1/irma-demo",
        "http://127.0.0.1/irma-demo?token=secret",
    ],
)
async def test_only_plain_http_urls_are_used(local: Path, url: str) -> None:
    with pytest.raises(SchemeError, match="the scheme URL must") as caught:
        await update_scheme(url, local, public_key=PIN)
    assert "secret" not in str(caught.value)


def test_the_index_the_server_publishes_is_the_one_the_loader_reads(tmp_path: Path) -> None:
    """The helpers publish what the loader accepts (a guard for the tests above)."""
    scheme = tmp_path / "irma-demo"
    shutil.copytree(CONFIGURATION / "irma-demo", scheme)
    write_index(scheme, listed(scheme))
    assert (scheme / "index").read_bytes() == (CONFIGURATION / "irma-demo" / "index").read_bytes()
    load_scheme(scheme)


async def test_update_all_reports_changes_and_logs_failures_without_raising(
    served: Served, installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = installed.parent
    urls = {"irma-demo": served.url, "test": f"http://127.0.0.1:{served.port}/nothing"}
    assert await update_all(root, urls) is False  # irma-demo is current; test fails, logged
    assert "scheme test not updated" in caplog.text
    (served.scheme / "RU/PublicKeys/0.xml").unlink()
    publish(served.scheme)
    assert await update_all(root, urls) is True
    assert not (installed / "RU/PublicKeys/0.xml").exists()
    assert await update_all(root, urls) is False
