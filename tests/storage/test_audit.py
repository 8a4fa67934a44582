"""The audit log: a hash chain per tenant, and residents only as keyed pseudonyms."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from idcontact.cli import DEMO_CONFIG, main
from idcontact.storage.audit import Verdict, seal, verify
from tests.conftest import CANARY_BSN, AppFactory, Instance
from tests.flows.test_core_flows import JSON, issue


async def run_conversation(instance: Instance, bsn: str = CANARY_BSN) -> str:
    token = issue(instance, {"fullname": "Ada", "bsn": bsn})
    body = {"purpose": "report_move", "auth_result": token, "comm_method": "demo"}
    response = await instance.client.post("/start", json=body, headers=JSON)
    assert response.status_code == 200, response.text
    conversation_id = str(response.json()["client_url"].rsplit("/", 1)[1])
    assert instance.services.conversations is not None
    await instance.services.conversations.attributes(conversation_id, actor="agent:7")
    await instance.services.conversations.end(conversation_id, actor="agent:7")
    return conversation_id


async def chain(instance: Instance, tenant: str = "default") -> Verdict:
    """Seal what is new (as the service does every second), then verify."""
    assert instance.services.db is not None

    def work(conn: Any) -> Verdict:
        seal(conn, tenant)
        return verify(conn, tenant)

    result: Verdict = await instance.services.db.run(work, write=True)
    return result


async def execute(instance: Instance, sql: str, **params: Any) -> list[Any]:
    assert instance.services.engine is not None
    async with instance.services.engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return list(result.all()) if result.returns_rows else []


@pytest.mark.anyio
async def test_the_chain_holds_and_shows_tampering(make_app: AppFactory, database: str) -> None:
    inst: Instance = await make_app(database=database)
    await run_conversation(inst)
    await run_conversation(inst, "123456782")
    verdict = await chain(inst)
    assert verdict.checked >= 8 and verdict.broken_at is None and verdict.unsealed == 0
    rows = await execute(inst, "SELECT id FROM audit_events ORDER BY seq")
    middle = rows[len(rows) // 2].id
    # A curious insider edits who looked at the data...
    await execute(inst, "UPDATE audit_events SET actor = 'nobody' WHERE id = :i", i=middle)
    assert (await chain(inst)).broken_at == middle
    # ...or removes the event: the next one no longer fits.
    await execute(inst, "DELETE FROM audit_events WHERE id = :i", i=middle)
    assert (await chain(inst)).broken_at == rows[len(rows) // 2 + 1].id


@pytest.mark.anyio
async def test_a_missing_start_of_the_chain_shows(make_app: AppFactory, database: str) -> None:
    inst: Instance = await make_app(database=database)
    await run_conversation(inst)
    await chain(inst)
    first = (await execute(inst, "SELECT id FROM audit_events ORDER BY seq LIMIT 1"))[0].id
    # Without a retirement record, a missing start of the chain is tampering.
    await execute(inst, "DELETE FROM audit_events WHERE id = :i", i=first)
    assert (await chain(inst)).broken_at is not None


@pytest.mark.anyio
async def test_retention_keeps_the_rest_verifiable(make_app: AppFactory, database: str) -> None:
    import time

    from idcontact.storage.audit import retire

    fresh: Instance = await make_app(database=database)
    await run_conversation(fresh)
    await chain(fresh)
    cutoff = time.time() + 1
    await run_conversation(fresh, "123456782")  # events that stay (newer than the cut-off)
    assert fresh.services.db is not None
    await execute(fresh, "UPDATE audit_events SET at = at - 3600 WHERE seq IS NOT NULL")
    gone = await fresh.services.db.run(
        lambda conn: retire(conn, "default", before=cutoff - 1800, at=cutoff), write=True
    )
    assert gone > 0
    verdict = await chain(fresh)
    assert verdict.broken_at is None and verdict.checked > 0  # verifiable from the cut
    # Deleting one more than retention did shows.
    oldest = (await execute(fresh, "SELECT id FROM audit_events ORDER BY seq LIMIT 1"))[0].id
    await execute(fresh, "DELETE FROM audit_events WHERE id = :i", i=oldest)
    assert (await chain(fresh)).broken_at is not None


@pytest.mark.anyio
async def test_events_are_appended_without_a_lock_and_sealed_in_order(tmp_path: Path) -> None:
    from idcontact.storage.audit import audit
    from idcontact.storage.db import Database, upgrade

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}")
    await upgrade(db.engine)
    try:
        for n in range(3):
            await db.run(
                lambda conn, n=n: audit(
                    conn, float(n), "agent:1", "attributes.view", "c", tenant="t"
                ),
                write=True,
            )
        before = await db.run(lambda conn: verify(conn, "t"))
        assert (before.checked, before.unsealed) == (0, 3)
        assert await db.run(lambda conn: seal(conn, "t"), write=True) == 3
        assert await db.run(lambda conn: seal(conn, "t"), write=True) == 0  # idempotent
        after = await db.run(lambda conn: verify(conn, "t"))
        assert (after.checked, after.broken_at, after.unsealed) == (3, None, 0)
        other = await db.run(lambda conn: verify(conn, "u"))  # chains are per tenant
        assert other.checked == 0
    finally:
        await db.dispose()


@pytest.mark.anyio
async def test_residents_appear_only_as_a_pseudonym(make_app: AppFactory) -> None:
    inst: Instance = await make_app()
    first = await run_conversation(inst)
    second = await run_conversation(inst)
    other = await run_conversation(inst, "123456782")
    rows = await execute(
        inst,
        "SELECT conversation_id, detail FROM audit_events "
        "WHERE action = 'conversation.authenticated'",
    )
    subjects = {r.conversation_id: r.detail for r in rows}
    assert CANARY_BSN not in " ".join(subjects.values())
    import json

    pseudonyms = {cid: json.loads(d)["subject"] for cid, d in subjects.items()}
    assert pseudonyms[first] == pseudonyms[second] != pseudonyms[other]


@pytest.mark.usefixtures("clean_env")
def test_cli_verify_export_and_subject(tmp_path: Path) -> None:
    import asyncio

    from sqlalchemy import insert

    from idcontact.storage.audit import SEAL_BATCH, event_row
    from idcontact.storage.db import audit_events

    data = tmp_path / "data"

    async def seed() -> None:
        from idcontact.app import create_app, services_of
        from idcontact.settings import load_settings

        settings = load_settings(DEMO_CONFIG, {"data_dir": data, "public_url": "http://testserver"})
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            import httpx

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client:
                inst = Instance(app, client, services_of(app), settings)
                await run_conversation(inst)
                await run_conversation(inst, "123456782")
                # More than a sealing unit takes, all unsealed: verify seals them all first.
                backlog = [
                    event_row(float(n), "agent:7", "attributes.view", "c", tenant="default")
                    for n in range(2 * SEAL_BATCH + 3)
                ]
                assert inst.services.db is not None
                await inst.services.db.run(
                    lambda conn: conn.execute(insert(audit_events), backlog), write=True
                )

    asyncio.run(seed())
    runner = CliRunner()
    verified = runner.invoke(main, ["audit", "verify", "--data-dir", str(data)])
    assert verified.exit_code == 0, verified.output
    checked = int(verified.stdout.split("intact: ")[1].split()[0])
    assert checked > 2 * SEAL_BATCH + 3
    assert runner.invoke(main, ["audit", "verify", "--data-dir", str(data)]).stdout == (
        verified.stdout  # nothing was left unsealed for a second run to find
    )

    exported = runner.invoke(main, ["audit", "export", "--data-dir", str(data)])
    table = list(csv.reader(io.StringIO(exported.stdout)))
    assert table[0][:3] == ["id", "time_utc", "actor"]
    assert any(row[2] == "agent:7" and row[3] == "attributes.view" for row in table[1:])
    assert CANARY_BSN not in exported.stdout

    # "Who saw my data?": the BSN comes in on stdin, never on the command line.
    answer = runner.invoke(
        main, ["audit", "subject", "--data-dir", str(data)], input=f"{CANARY_BSN}\n"
    )
    assert answer.exit_code == 0, answer.output
    views = [line for line in answer.stdout.splitlines() if "attributes.view" in line]
    assert len(views) == 1 and "agent:7" in views[0]  # only this resident's conversation
    assert CANARY_BSN not in answer.stdout


@pytest.mark.anyio
async def test_a_backlog_is_sealed_in_batches_found_by_the_unsealed_index(
    make_app: AppFactory, database: str
) -> None:
    from sqlalchemy import insert

    from idcontact.storage.audit import _UNSEALED, SEAL_BATCH, event_row
    from idcontact.storage.db import audit_events

    inst: Instance = await make_app(database=database)
    db = inst.services.db
    assert db is not None
    tenant = f"batches-{database}"
    total = 2 * SEAL_BATCH + 7
    rows = [
        event_row(float(n), "agent:1", "attributes.view", f"c{n}", {"n": n}, tenant=tenant)
        for n in range(total)
    ]
    await db.run(lambda conn: conn.execute(insert(audit_events), rows), write=True)
    sealed = [await db.run(lambda conn: seal(conn, tenant), write=True) for _ in range(4)]
    assert sealed == [SEAL_BATCH, SEAL_BATCH, 7, 0]
    verdict = await db.run(lambda conn: verify(conn, tenant))
    assert (verdict.checked, verdict.broken_at, verdict.unsealed) == (total, None, 0)

    # The sealer's question is answered from the events not sealed yet, not by walking the
    # log from its oldest event (which PostgreSQL did before migration 0011).
    def plan(conn: Any) -> str:
        query = _UNSEALED.stmt.params(tenant=tenant, limit=SEAL_BATCH).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
        return "\n".join(str(r[-1]) for r in conn.execute(text(prefix + str(query))))

    await db.run(lambda conn: conn.execute(text("ANALYZE audit_events")), write=True)
    found = await db.run(plan)
    if database == "postgres":
        assert "ix_audit_events_unsealed" in found, found
    else:  # rows without a seq, in rowid (= id) order: no scan of the log, no sort
        assert "USING INDEX ix_audit_events_tenant_seq (tenant=? AND seq=?)" in found, found
        assert "SCAN" not in found and "B-TREE" not in found, found


@pytest.mark.anyio
async def test_the_sealer_works_through_a_backlog_with_pauses_between_batches(
    tmp_path: Path,
) -> None:
    import asyncio
    import time

    from sqlalchemy import insert

    from idcontact.app import _seal
    from idcontact.storage.audit import SEAL_BATCH, event_row
    from idcontact.storage.db import Database, audit_events, upgrade

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}")
    await upgrade(db.engine)
    rows = [
        event_row(float(n), "agent:1", "attributes.view", "c", tenant="t")
        for n in range(2 * SEAL_BATCH + 5)
    ]
    await db.run(lambda conn: conn.execute(insert(audit_events), rows), write=True)
    units: list[tuple[float, float]] = []
    run = db.run

    async def timed(work: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return await run(work, **kwargs)
        finally:
            units.append((began, time.monotonic()))

    db.run = timed  # type: ignore[method-assign]
    sealer = asyncio.create_task(_seal(db, ["t"]))
    try:
        deadline = time.monotonic() + 20
        while (await run(lambda conn: verify(conn, "t"))).unsealed:
            assert time.monotonic() < deadline, "the backlog was not sealed"
            await asyncio.sleep(0.02)
    finally:
        sealer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sealer
        await db.dispose()
    # Three units: two full batches and the rest, one after the other without waiting for the
    # next round (a second), each full one followed by a pause three times as long as it took.
    (a0, a1), (b0, b1), (c0, _) = units[:3]
    assert b0 - a1 >= 3 * (a1 - a0) and c0 - b1 >= 3 * (b1 - b0)
    assert c0 - a0 < 1.0
