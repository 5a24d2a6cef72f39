"""`beatd diff OLD NEW`: realistic changes, with and without --broker, and its exit statuses."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.backends import open_backend
from beatd.backends.base import StateWrite
from beatd.config import load_config
from beatd.state import EntryState
from tests.test_celery import CELERYCONFIG, _load_module
from tests.test_cli import beatd

OLD = """\
entries:
  nightly: {task: t.report, cron: "30 2 * * *"}
  hourly: {task: t.sync, every: 1h, missed: catch_up}
  legacy-export: {task: t.export, cron: "0 12 * * *"}
"""
# nightly moves to Berlin's time; legacy-export is renamed; a new cron meets the spring gap.
NEW = """\
entries:
  nightly: {task: t.report, cron: "30 2 * * *", timezone: Europe/Berlin}
  hourly: {task: t.sync, every: 1h, missed: catch_up}
  export: {task: t.export, cron: "0 12 * * *"}
  berlin-early: {task: t.early, cron: "30 2 * * *", timezone: Europe/Berlin}
"""
AFTER = "2026-03-28T12:30:00Z"  # Berlin springs forward at 2026-03-29T01:00Z


def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    return str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")


def test_a_renamed_entry_a_changed_timezone_and_a_cron_across_a_dst_day(tmp_path: Path) -> None:
    old, new = files(tmp_path)
    code, out, err = beatd("diff", old, new, "--after", AFTER)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        "+ berlin-early: added",
        "+ export: added",
        "- legacy-export: removed",
        "~ nightly:",
        "    schedule: cron 30 2 * * * tz UTC -> cron 30 2 * * * tz Europe/Berlin",
        "    timezone: UTC -> Europe/Berlin",
        "runs from 2026-03-28T12:30:00Z for 1d:",
        "  + berlin-early: 1 run(s): 2026-03-29T01:00:00Z",
        "  + export: 1 run(s): 2026-03-29T12:00:00Z",
        "  - legacy-export: 1 run(s): 2026-03-29T12:00:00Z",
        "  + nightly: 1 run(s): 2026-03-29T01:00:00Z",
        "  - nightly: 1 run(s): 2026-03-29T02:30:00Z",
        "cannot tell what would publish at once on reload: give --broker to read the horizons",
    ]


def test_the_same_sets_exit_0_and_json_says_so(tmp_path: Path) -> None:
    old, _ = files(tmp_path)
    code, out, _ = beatd("diff", old, old, "--after", AFTER, "--json")
    assert code == 0
    assert json.loads(out) == {
        "same": True,
        "added": [],
        "removed": [],
        "changed": {},
        "window": {"from": "2026-03-28T12:30:00Z", "seconds": 86400.0},
        "runs": {},
        "catch_up": None,
    }


def test_json_lists_fields_and_runs(tmp_path: Path) -> None:
    old, new = files(tmp_path)
    code, out, _ = beatd("diff", old, new, "--after", AFTER, "--window", "13h", "--json")
    data = json.loads(out)
    assert code == 1
    assert data["changed"] == {
        "nightly": {
            "schedule": {
                "old": "cron 30 2 * * * tz UTC",
                "new": "cron 30 2 * * * tz Europe/Berlin",
            },
            "timezone": {"old": "UTC", "new": "Europe/Berlin"},
        }
    }
    assert data["runs"]["berlin-early"] == {
        "appear": ["2026-03-29T01:00:00Z"],
        "disappear": [],
        "truncated": False,
        "compared_until": None,
    }
    assert "export" not in data["runs"]  # its noon is beyond the 13 hours


def test_with_broker_lists_the_catch_up_and_writes_nothing(tmp_path: Path) -> None:
    old, new = files(tmp_path)
    url = f"sqlite:///{tmp_path / 'beatd.db'}"
    now = datetime(2026, 3, 28, 12, 30, tzinfo=UTC)
    entries = load_config([old]).entries
    backend = open_backend(url)
    lease = backend.acquire_lease("node-a", 30, "test")
    assert lease is not None
    three_hours_ago = now.replace(minute=0) - timedelta(hours=3)
    writes = [
        StateWrite(EntryState(name, three_hours_ago, None, entries[name].identity), None)
        for name in ("hourly", "nightly")
    ]
    assert backend.commit(lease, writes, []) == set()
    before = backend.load_states()
    backend.close()

    code, out, _ = beatd("diff", old, new, "--after", AFTER, "--broker", url)
    assert code == 1
    # hourly (catch_up) missed 10:00, 11:00 and 12:00; nightly's zone changed, so its horizon
    # resets to now and nothing is replayed; the new entries start from now.
    assert out.splitlines()[-4:] == [
        "on reload, 3 run(s) would publish at once:",
        "  hourly 2026-03-28T10:00:00Z",
        "  hourly 2026-03-28T11:00:00Z",
        "  hourly 2026-03-28T12:00:00Z",
    ]
    code, out, _ = beatd("diff", old, new, "--after", AFTER, "--broker", url, "--json")
    assert json.loads(out)["catch_up"] == [
        {"entry": "hourly", "slot": f"2026-03-28T{h}:00:00Z"} for h in (10, 11, 12)
    ]
    backend = open_backend(url)
    assert backend.load_states() == before
    backend.close()


def test_bad_input_and_errors_exit_2(tmp_path: Path) -> None:
    old, new = files(tmp_path)
    missing = str(tmp_path / "nope.yaml")
    assert beatd("diff", old, missing) == (2, "", f"{missing}:1:1: no such file or directory\n")
    assert beatd("diff", old, new, "--window", "soon")[::2] == (
        2,
        "beatd: --window: cannot read 'soon' as a duration: use a number of seconds or units "
        "ms, s, m, h, d, w (for example 30s, 5m, 1h30m, 1d)\n",
    )
    absent = tmp_path / "absent.db"
    assert beatd("diff", old, new, "--broker", f"sqlite:///{absent}") == (
        2,
        "",
        f"beatd: --broker: no database at {absent}: check the path (`beatd run` creates it)\n",
    )


def test_runs_past_the_listing_limit_are_not_reported_as_appearing(tmp_path: Path) -> None:
    # every 1s -> every 2s: every new slot is an old one, so none appears. Both sides are cut at
    # 10,000 slots, the old after 2h46m, the new after 5h33m: the new slots in between are not in
    # the old list and must not be reported as runs that appear.
    (tmp_path / "old.yaml").write_text("entries:\n  e: {task: t.a, every: 1s}\n")
    (tmp_path / "new.yaml").write_text("entries:\n  e: {task: t.a, every: 2s}\n")
    old, new = str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")
    code, out, _ = beatd("diff", old, new, "--after", "2026-01-01T00:00:00Z", "--json")
    assert code == 1
    runs = json.loads(out)["runs"]["e"]
    assert runs["appear"] == []
    assert runs["disappear"][:2] == ["2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z"]


def test_an_unexpected_error_exits_2_not_1(tmp_path: Path) -> None:
    # 1 means "the sets differ" to a CI gate; an error of any kind must be 2 (the documented
    # contract). A window running past year 9999 raises OverflowError inside compare().
    old, new = files(tmp_path)
    assert beatd("diff", old, new, "--after", "9999-12-31T00:00:00Z") == (
        2,
        "",
        "beatd: --window: the window from 9999-12-31T00:00:00Z for 1d runs past the end of "
        "year 9999; give an earlier --after or a shorter --window\n",
    )


def test_a_cron_that_never_fires_is_compared_not_an_error(tmp_path: Path) -> None:
    # Every 02:xx on the last Sunday of March lies in Berlin's spring gap: a wildcard job there
    # never runs. Adding it is a difference (1) with no runs, not an error.
    old, _ = files(tmp_path)
    new = tmp_path / "gap.yaml"
    new.write_text(OLD + "  gap: {task: t.a, cron: '*/30 2 * 3 0L', timezone: Europe/Berlin}\n")
    code, out, err = beatd("diff", old, str(new), "--after", AFTER, "--json")
    assert (code, err) == (1, "")
    assert (json.loads(out)["added"], json.loads(out)["runs"]) == (["gap"], {})


README_OLD = """\
entries:
  nightly: {task: reports.nightly, cron: "30 2 * * *"}
  sync: {task: shop.sync, cron: "H/15 * * * *"}
"""
README_NEW = """\
entries:
  nightly: {task: reports.nightly, cron: "30 2 * * *", timezone: Europe/Berlin}
  sync: {task: shop.sync, cron: "H/15 * * * *", start: "2026-03-28T18:00:00Z"}
"""


def test_the_readme_shows_real_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Schedule tools\n", 1)[1]
    block = section.split("```\n", 2)[1]
    (tmp_path / "old.yaml").write_text(README_OLD)
    (tmp_path / "new.yaml").write_text(README_NEW)
    monkeypatch.chdir(tmp_path)
    sessions = [s for s in block.split("$ beatd ") if s]
    assert len(sessions) == 3
    for session in sessions:
        command, _, expected = session.partition("\n")
        code, out, _ = beatd(*shlex.split(command))
        assert code in (0, 1)
        assert out == expected, command


def test_the_readme_shows_the_real_schema() -> None:
    # The second block of the section: saving the schema, then its beginning up to the `…`.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Schedule tools\n", 1)[1].split("```\n")[3]
    saved, shown = block.split("$ beatd schema\n")
    assert saved == "$ beatd schema > schemas/schedule.schema.json\n"
    excerpt, _, rest = shown.partition("…\n")
    code, out, err = beatd("schema")
    assert (code, err, rest) == (0, "", "")
    assert len(excerpt.splitlines()) > 10 and out.startswith(excerpt)
    committed = Path(__file__).resolve().parents[1] / "schemas" / "schedule.schema.json"
    assert out == committed.read_text()


def test_the_text_says_where_the_comparison_was_cut(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text("entries:\n  e: {task: t.a, every: 1s}\n")
    (tmp_path / "new.yaml").write_text("entries:\n  e: {task: t.a, every: 2s}\n")
    old, new = str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")
    code, out, _ = beatd("diff", old, new, "--after", "2026-01-01T00:00:00Z")
    assert code == 1
    assert out.splitlines()[4:6] == [
        "  - e: 5000 run(s): 2026-01-01T00:00:01Z, 2026-01-01T00:00:03Z, 2026-01-01T00:00:05Z, "
        "2026-01-01T00:00:07Z, 2026-01-01T00:00:09Z and 4995 more",
        "  ! e: more than 10,000 runs in the window: compared only up to 2026-01-01T02:46:40Z",
    ]
    code, out, _ = beatd("diff", old, new, "--after", "2026-01-01T00:00:00Z", "--json")
    runs = json.loads(out)["runs"]["e"]
    assert (runs["truncated"], runs["compared_until"]) == (True, "2026-01-01T02:46:40Z")


def test_diff_reads_files_as_the_other_commands_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --max-file-size and --celery-config are the shared flags: the limit refuses OLD, and the
    # Celery config's entries are on both sides, so they neither appear nor disappear.
    old, new = files(tmp_path)
    size = Path(old).stat().st_size
    assert beatd("diff", old, new, "--max-file-size", "10") == (
        2,
        "",
        f"{old}:1:1: file is {size} bytes, more than the limit of 10 bytes; refusing to read it "
        "(raise the limit with --max-file-size or BEATD_MAX_FILE_SIZE)\n",
    )
    module = _load_module(tmp_path, monkeypatch, "celeryconfig_diff", CELERYCONFIG)
    code, out, err = beatd("diff", old, new, "--after", AFTER, "--json", "--celery-config", module)
    assert (code, err) == (1, "")
    data = json.loads(out)
    assert (data["added"], data["removed"]) == (["berlin-early", "export"], ["legacy-export"])
    assert "every-30s" not in data["runs"]
