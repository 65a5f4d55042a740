"""What the Robots pages read and do, on both databases: robot and run rows, the start-run form's checks,
promote / roll back / cancel through the same service functions as the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controltower.config import Settings
from controltower.core import lifecycle
from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.core.db import Database
from controltower.rpa import robots, schedules, ui_data, ui_ops, vault, workitems
from controltower.rpa.archive import pack
from controltower.rpa.schedule_schemas import ScheduleCreate
from controltower.rpa.templates import create
from controltower.rpa.workitems_schemas import ItemCreate, QueueCreate
from controltower.server import build_context
from controltower.web.session import WebUser

HANA = WebUser(id=7, name="hana", role=Role.operator)


@pytest.fixture
def ctx(db: Database, db_url: str, tmp_path: Path) -> Iterator[Context]:
    context = build_context(Settings(data_dir=tmp_path / "data", database_url=db_url))
    yield context
    context.db.dispose()


def _push_two(ctx: Context, root: Path) -> None:
    create(root, "files", "ui-bot")
    for _ in range(2):
        data = pack(root, artifacts="output")
        vetted = robots.vet_package(data, 10 * 1024 * 1024)
        with ctx.db.session() as session:
            robots.store_version(session, ctx.blobs, data, vetted, "admin (user:1)")
        suite = root / "tasks.robot"
        suite.write_text(suite.read_text() + "\n")


def test_rows_show_versions_last_run_and_filter_runs(ctx: Context, tmp_path: Path) -> None:
    assert ui_data.robot_rows(ctx) == []
    _push_two(ctx, tmp_path / "bot")
    ui_ops.promote(ctx, HANA, "ui-bot", 1)
    first = ui_ops.start_run(ctx, HANA, {"robot": "ui-bot", "labels": "finance, desktop",
                                         "variables": "WHO=ui\n\nWHERE=a=b", "input": '{"n": 1}'})
    second = ui_ops.start_run(ctx, HANA, {"robot": "ui-bot", "version": 2, "task": "Process files"})
    ui_ops.cancel(ctx, second)

    [row] = ui_data.robot_rows(ctx)
    assert (row["latest"], row["production"], row["last_status"], row["last_run_id"]) == (2, 1, "cancelled", second)
    assert [r["id"] for r in ui_data.run_rows(ctx, None, "queued")] == [first]
    assert [r["id"] for r in ui_data.run_rows(ctx, "ui-bot", None)] == [second, first]
    assert ui_data.run_rows(ctx, "ghost", None) == []

    view = ui_data.robot_view(ctx, "ui-bot")
    assert view is not None and view["production"] == 1
    assert [(v["number"], v["production"], v["tasks"]) for v in view["versions"]] == [
        (2, False, ["Process files"]), (1, True, ["Process files"])]
    assert (view["history"][0]["action"], view["history"][0]["actor"]) == ("promote", "hana (user:7)")
    assert ui_data.robot_view(ctx, "ghost") is None

    found = ui_data.run_view(ctx, first, 0)
    assert found is not None
    run, agent, lines, seq = found
    assert (run.version, run.labels, run.variables, run.input) == (1, ["desktop", "finance"],
                                                                   {"WHO": "ui", "WHERE": "a=b"}, {"n": 1})
    assert (run.created_by, agent, lines, seq) == ("hana (user:7)", "", [], 0)
    assert ui_data.run_view(ctx, 999_999, 0) is None
    diff = ui_data.version_diff(ctx, "ui-bot", 1, 2)
    assert diff.changed == ["tasks.robot"] and diff.added == diff.removed == []


@pytest.mark.parametrize(("form", "field", "reason"), [
    ({"input": "{oops"}, "input", "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ({"variables": "WHO"}, "variables", "line 1: expected NAME=value, got 'WHO'"),
    ({"variables": "1x=2"}, "variables", "'1x' is not a variable name (letters, digits, _)"),
    ({"task": "Nope"}, "task", "robot 'ui-bot' has no task 'Nope'; tasks: Process files"),
    ({"agent_id": 424242}, "agent_id", "no agent with id 424242"),
    ({"version": 9}, "version", "robot 'ui-bot' has no version 9"),
    ({"secrets": ["erp"]}, "secrets", "no secret named 'erp' in the vault (add with `ctower vault set NAME`)"),
])
def test_start_form_names_the_wrong_field(ctx: Context, tmp_path: Path, form: dict[str, object], field: str,
                                          reason: str) -> None:
    _push_two(ctx, tmp_path / "bot")
    with pytest.raises(ui_ops.FormError) as err:
        ui_ops.start_run(ctx, HANA, {"robot": "ui-bot", **form})
    assert (err.value.field, err.value.reason) == (field, reason)
    assert ui_data.run_rows(ctx, None, None) == []  # nothing half-written


def test_rollback_goes_back_and_refuses_without_an_earlier_version(ctx: Context, tmp_path: Path) -> None:
    _push_two(ctx, tmp_path / "bot")
    ui_ops.promote(ctx, HANA, "ui-bot", 2)
    with pytest.raises(robots.RollbackImpossible):
        ui_ops.rollback(ctx, HANA, "ui-bot")
    ui_ops.promote(ctx, HANA, "ui-bot", 1)
    assert ui_ops.rollback(ctx, HANA, "ui-bot") == 2
    view = ui_data.robot_view(ctx, "ui-bot")
    assert view is not None and view["production"] == 2


def test_queue_view_counts_items_and_retry_refuses_an_item_in_progress(ctx: Context, tmp_path: Path) -> None:
    _push_two(ctx, tmp_path / "bot")
    assert ui_data.queues(ctx) == [] and ui_data.queue_view(ctx, "inv", None) is None
    with ctx.db.session() as session:
        queue = workitems.create_queue(session, QueueCreate(name="inv", robot="ui-bot", labels=["nowhere"]), "t")
        [item] = workitems.push(ctx, session, queue, [ItemCreate(payload={"invoice": "INV-1"})])
        item_id = item.id
    [public] = ui_data.queues(ctx)
    assert public.counts["in_progress"] == 1 and public.counts["dead"] == 0
    view = ui_data.queue_view(ctx, "inv", "in_progress")
    assert view is not None
    assert [(i["id"], i["status"], i["payload"]) for i in view["items"]] == [(item_id, "in_progress",
                                                                            '{"invoice": "INV-1"}')]
    assert ui_data.queue_view(ctx, "inv", "dead")["items"] == []  # type: ignore[index]
    with pytest.raises(lifecycle.IllegalTransition):
        ui_ops.retry_item(ctx, "inv", item_id)


def test_schedule_rows_pause_and_the_vault_rows_hold_no_value(ctx: Context, tmp_path: Path) -> None:
    _push_two(ctx, tmp_path / "bot")
    with ctx.db.session() as session:
        vault.set_secret(session, ctx.settings, "erp_password", "hunter2-value", "ERP login", "t")
        schedule_id = schedules.create_schedule(session, ScheduleCreate(robot="ui-bot", cron="0 6 * * *",
                                                                        labels=["finance"]), "t").id
    [row] = ui_data.schedule_rows(ctx)
    assert (row["id"], row["cron"], row["timezone"], row["target"], row["paused"]) == (
        schedule_id, "0 6 * * *", "UTC", "finance", False)
    assert row["next"].endswith(":00") and row["next"][:4].isdigit()
    ui_ops.set_paused(ctx, schedule_id, True)
    assert ui_data.schedule_rows(ctx)[0]["next"] == "paused"
    secrets = ui_data.secret_rows(ctx)
    assert [(s["name"], s["description"]) for s in secrets] == [("erp_password", "ERP login")]
    assert "hunter2-value" not in repr(secrets)
    run_id = ui_ops.start_run(ctx, HANA, {"robot": "ui-bot", "secrets": ["erp_password"]})
    found = ui_data.run_view(ctx, run_id, 0)
    assert found is not None and found[0].secrets == ["erp_password"]
