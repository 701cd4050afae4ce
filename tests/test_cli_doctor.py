"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): ``ncl doctor``. Its JSON shape, a rejected TZ
named and failed, schema versions in its table, and a session file newer than this release flagged.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl

from schemas.ddl import latest_version


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


def test_doctor_fails_and_names_a_rejected_tz(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Not/AZone")
    result = ncl("doctor", "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False
    [timezone] = [c for c in report["checks"] if c["name"] == "timezone"]
    assert timezone["ok"] is False and "Not/AZone" in timezone["detail"]
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
    assert schema["ok"] is False and str(inbound) in schema["detail"]
