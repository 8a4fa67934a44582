"""scripts/audit's second source: PyPI's project pages, where pip-audit's cannot be reached.

pip-audit asks PyPI for one page per locked version (``/pypi/<name>/<version>/json``) or asks
OSV. Some networks mirror only the project pages (``/pypi/<name>/json``). A project page lists
the known vulnerabilities of the project's latest release, so it checks a package locked at that
release completely, and says nothing about an older one: those are reported as not checked,
never as clean.

    python scripts/audit_pypi.py LOCKFILE [--index https://pypi.org/pypi]

Exit 0: every locked package checked, none with a known vulnerability; 1: a known
vulnerability; 3: none known among those checked, but some could not be checked; 4: none
could be checked (the index is unreachable).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Finding:
    name: str
    locked: str
    latest: str | None = None  # None: the page could not be read
    vulns: list[str] = field(default_factory=list)
    error: str = ""


def pins(text: str) -> list[tuple[str, str]]:
    """``name==version`` of a pip lock file (hash and comment lines skipped)."""
    return [(m[1], m[2]) for line in text.splitlines() if (m := PIN.match(line))]


def check(index: str, name: str, locked: str) -> Finding:
    url = f"{index.rstrip('/')}/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 (https or test)
            page = json.load(response)
        latest = str(page["info"]["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Finding(name, locked, error=f"{type(exc).__name__}: {reason}")
    found = Finding(name, locked, latest)
    if latest == locked:
        found.vulns = [v["id"] for v in page.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return found


def say(msg: str) -> None:
    print(f"audit: {msg}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock")
    parser.add_argument("--index", default="https://pypi.org/pypi")
    args = parser.parse_args()
    with open(args.lock, encoding="utf-8") as fh:
        locked = pins(fh.read())
    with ThreadPoolExecutor(8) as pool:
        findings = list(pool.map(lambda p: check(args.index, *p), locked))
    unread = [f for f in findings if f.latest is None]
    older = [f for f in findings if f.latest is not None and f.latest != f.locked]
    vulnerable = [f for f in findings if f.vulns]
    checked = len(findings) - len(unread) - len(older)
    for f in vulnerable:
        say(f"{f.name} {f.locked}: {', '.join(f.vulns)}")
    if vulnerable:
        say(f"FAILED: {len(vulnerable)} locked package(s) with known vulnerabilities")
        return 1
    if unread and len(unread) == len(findings):
        say(f"SKIPPED: the index's project pages cannot be read either ({unread[0].error})")
        return 4
    say(
        f"{checked} of {len(findings)} locked packages checked against the vulnerabilities "
        "PyPI lists for their release (project pages): none known"
    )
    if older or unread:
        for f in older:
            say(f"not checked: {f.name} {f.locked} (the page covers only {f.latest})")
        for f in unread:
            say(f"not checked: {f.name} {f.locked} ({f.error})")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
