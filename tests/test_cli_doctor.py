"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): ``ncl doctor``. Its JSON shape, a rejected TZ
named and failed, schema versions in its table, and a session file newer than this release flagged.

Issue 15.2: three levels. Runners with no isolation, a missing engine or image under ``auto`` and a data dir others
can read are warnings (exit 0, WARN in the table); a missing engine under ``docker``, a rejected TZ and a broken
session file are failures (exit 1); the local runtime needs neither engine nor image. (A zone other than the running
host's: tests/test_zone_change.py.)
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl

from host.cli import checks
from host.runtimes.image import EngineDown
from schemas.ddl import latest_version


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No docker engine answers, whatever this machine has."""

    def down(timeout: float) -> None:
        raise EngineDown("connection refused")

    monkeypatch.setattr(checks, "connect_engine", down)


def levels(ncl: Ncl) -> tuple[int, dict[str, str]]:
    result = ncl("doctor", "--json")
    return result.code, {c["name"]: c["level"] for c in result.json()["checks"]}


def test_doctor_json_shape(ncl: Ncl) -> None:
    result = ncl("doctor", "--json")
    report = result.json()
    assert set(report) == {"ok", "checks"}
    versions = {"image_versions", "host_versions"}  # the image check's own keys (issue 13)
    assert all(set(check) == {"name", "ok", "level", "detail"} | (versions if check["name"] == "image" else set())
               for check in report["checks"])
    assert all(check["ok"] is (check["level"] != "fail") for check in report["checks"])
    names = [c["name"] for c in report["checks"]]
    assert {"timezone", "data_dir", "docker_engine", "image", "api_key", "schema"} <= set(names)
    assert report["ok"] is all(c["ok"] for c in report["checks"])
    assert result.code == (0 if report["ok"] else 1)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["timezone"]["ok"] is True and "UTC" in by_name["timezone"]["detail"]
    assert by_name["data_dir"]["ok"] is True
    assert by_name["api_key"]["ok"] is True  # the default provider is the offline mock


def test_doctor_wants_the_key_a_groups_own_provider_needs(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    """(It looked at NCL_PROVIDER only: a group of --provider anthropic under the mock default passed with no key,
    and its turns then failed.)"""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert ncl("groups", "create", "real", "--channel", "cli", "--provider", "anthropic").code == 0
    [check] = [c for c in ncl("doctor", "--json").json()["checks"] if c["name"] == "api_key"]
    assert check["ok"] is False
    assert check["detail"] == "ANTHROPIC_API_KEY not set; provider mock (groups real: anthropic)"


def test_doctor_warns_of_an_ncl_variable_in_dotenv_that_ncl_does_not_read(ncl: Ncl, cli_env: Any) -> None:
    """A misspelt setting was ignored with no word: its default was used (operations review)."""
    env_file = cli_env.root / ".env"
    env_file.write_text("NCL_MAX_RUNERS=2\nNCL_MAX_RUNNERS=3\nNCL_SWAEP_INTERVAL_S=60\nOTHER_TOOL=1\n")
    result = ncl("doctor", "--json")
    [check] = [c for c in result.json()["checks"] if c["name"] == "env_file"]
    assert check["level"] == "warn" and check["ok"] is True
    said = f"{env_file}: ncl reads no NCL_MAX_RUNERS, NCL_SWAEP_INTERVAL_S (misspelt? see .env.example)"
    assert check["detail"] == said
    env_file.write_text("NCL_MAX_RUNNERS=3\nTZ=UTC\n")
    [check] = [c for c in ncl("doctor", "--json").json()["checks"] if c["name"] == "env_file"]
    assert check["level"] == "ok"


def test_every_variable_of_env_example_is_one_ncl_reads() -> None:
    """(What the doctor's check takes as known: .env.example documents every setting.)"""
    from dotenv import dotenv_values

    from host.settings import variables

    example = Path(__file__).resolve().parent.parent / ".env.example"
    named = {line.lstrip("# ").split("=")[0] for line in example.read_text().splitlines()}  # set or commented out
    assert {key for key in dotenv_values(example) if key.startswith("NCL_")} <= variables()
    assert {name for name in named if name.startswith("NCL_")} <= variables(), named - variables()


def test_doctor_fails_and_names_a_rejected_tz(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Not/AZone")
    result = ncl("doctor", "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False
    [timezone] = [c for c in report["checks"] if c["name"] == "timezone"]
    assert timezone["ok"] is False and timezone["level"] == "fail" and "Not/AZone" in timezone["detail"]
    assert "Traceback" not in result.err


def test_doctor_table_and_schema_versions(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    table = ncl("doctor").out
    assert "timezone" in table and "schema" in table
    report = ncl("doctor", "--json").json()
    [schema] = [c for c in report["checks"] if c["name"] == "schema"]
    assert schema["ok"] is True
    assert f"inbound v{latest_version('inbound')}" in schema["detail"]


def test_doctor_flags_a_session_file_newer_than_this_release(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    inbound = Path(demo_session["path"]) / "inbound.db"
    with closing(sqlite3.connect(inbound)) as conn:
        conn.execute(f"PRAGMA user_version={latest_version('inbound') + 1}")
    result = ncl("doctor", "--json")
    assert result.code == 1
    [schema] = [c for c in result.json()["checks"] if c["name"] == "schema"]
    assert schema["ok"] is False and schema["level"] == "fail" and str(inbound) in schema["detail"]


def test_a_missing_session_file_fails(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    outbound = Path(demo_session["path"]) / "outbound.db"
    outbound.unlink()
    result = ncl("doctor", "--json")
    assert result.code == 1
    [schema] = [c for c in result.json()["checks"] if c["name"] == "schema"]
    assert schema["level"] == "fail" and f"{outbound}: missing" in schema["detail"]


@pytest.mark.usefixtures("no_engine")
def test_auto_without_an_engine_warns_twice_and_exits_0(ncl: Ncl) -> None:
    code, level = levels(ncl)
    assert (level["docker_engine"], level["image"], level["runtime"]) == ("warn", "warn", "warn")
    assert code == 0 and "fail" not in level.values()
    table = ncl("doctor")
    assert table.code == 0
    [runtime] = [line for line in table.out.splitlines() if line.split()[1] == "runtime"]
    assert runtime.startswith("WARN") and "NO isolation" in runtime


@pytest.mark.usefixtures("no_engine")
def test_docker_without_an_engine_fails(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_RUNTIME", "docker")
    code, level = levels(ncl)
    assert (code, level["docker_engine"], level["image"], level["runtime"]) == (1, "fail", "fail", "ok")
    table = ncl("doctor")
    assert table.code == 1
    assert [line.split()[:2] for line in table.out.splitlines()
            if line.startswith("FAIL")] == [["FAIL", "docker_engine"], ["FAIL", "image"]]


@pytest.mark.usefixtures("no_engine")
def test_local_needs_no_engine_but_warns_of_no_isolation(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_RUNTIME", "local")
    code, level = levels(ncl)
    assert (code, level["docker_engine"], level["image"], level["runtime"]) == (0, "ok", "ok", "warn")
    [image] = [c for c in ncl("doctor", "--json").json()["checks"] if c["name"] == "image"]
    assert "not used: NCL_RUNTIME=local" in image["detail"]


@pytest.mark.usefixtures("no_engine")
def test_a_data_dir_others_can_read_is_a_warning(ncl: Ncl, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NCL_RUNTIME", "local")
    (tmp_path / "data").mkdir(mode=0o755)
    (tmp_path / "data").chmod(0o755)  # whatever the umask
    result = ncl("doctor", "--json")
    [data_dir] = [c for c in result.json()["checks"] if c["name"] == "data_dir"]
    assert data_dir["level"] == "warn" and "mode 0755" in data_dir["detail"] and "chmod 700" in data_dir["detail"]
    assert result.code == 0


def alerts_check(ncl: Ncl) -> tuple[str, str]:
    [found] = [c for c in ncl("doctor", "--json").json()["checks"] if c["name"] == "alerts"]
    return found["level"], found["detail"]


def test_alerts_nowhere_is_a_warning(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NCL_ALERT_CHANNEL", raising=False)
    assert alerts_check(ncl) == ("warn", "none configured; trouble is only in the log and the session "
                                         "(set NCL_ALERT_CHANNEL, see .env.example)")


def test_alerts_to_a_webhook_are_shown_without_its_path_or_query(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_ALERT_CHANNEL", "webhook:https://hooks.example:8443/T0/B1/s3cret?key=k3y")
    level, detail = alerts_check(ncl)
    assert (level, detail) == ("ok", "alerts go to webhook:https://hooks.example:8443/…")
    table = ncl("doctor").out
    assert "alerts go to webhook:https://hooks.example:8443/…" in table
    assert "s3cret" not in table and "k3y" not in table


def test_alerts_to_a_session_of_a_group_that_does_not_exist_are_a_warning(
        ncl: Ncl, monkeypatch: pytest.MonkeyPatch, demo_session: dict[str, Any]) -> None:
    monkeypatch.setenv("NCL_ALERT_CHANNEL", "session:demo")
    assert alerts_check(ncl) == ("ok", "alerts go to session:demo")
    monkeypatch.setenv("NCL_ALERT_CHANNEL", "session:ops")
    assert alerts_check(ncl) == ("warn", "session:ops names no group: its alerts go nowhere ('ncl groups list')")


def test_alerts_to_a_session_before_any_group_exists_are_a_warning(ncl: Ncl,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_ALERT_CHANNEL", "session:demo")
    assert alerts_check(ncl) == ("warn", "session:demo names no group: its alerts go nowhere ('ncl groups list')")
