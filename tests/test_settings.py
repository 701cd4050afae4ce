"""Settings (DESIGN §3, §12.12): process env over ``.env`` over defaults; TZ resolved in one order."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from host import settings
from host.settings import SettingsError


@pytest.fixture
def tz_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="host.settings")
    return caplog


def rejected(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(source, value) of every ``tz_rejected`` warning logged."""
    return [
        (r.source, r.value)  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "action", None) == "tz_rejected" and r.levelno == logging.WARNING
    ]


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_process_env_wins_over_dotenv(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", TZ="Asia/Tokyo")
    loaded = settings.load(environ={"TZ": "America/New_York"}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source) == ("America/New_York", "env")
    assert loaded.tz.zone.key == "America/New_York"


def test_dotenv_wins_over_the_system_zone(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", TZ="Asia/Tokyo")
    loaded = settings.load(environ={}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source) == ("Asia/Tokyo", ".env")


def test_system_zone_when_no_tz_is_set(tmp_path: Path) -> None:
    loaded = settings.load(environ={}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source, loaded.tz.rejected) == ("Europe/Paris", "system", ())


def test_fallback_is_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tz_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(settings, "system_zone", lambda root=Path("/"): None)
    loaded = settings.load(environ={}, cwd=tmp_path)
    assert (loaded.tz.name, loaded.tz.source, loaded.tz.rejected) == ("UTC", "fallback", ())
    assert rejected(tz_log) == []


@pytest.mark.parametrize("bad", ["IST-2", "Not/AZone", ""])
def test_invalid_env_tz_falls_through_to_dotenv_with_a_warning(
    tmp_path: Path, bad: str, tz_log: pytest.LogCaptureFixture
) -> None:
    write_env(tmp_path / ".env", TZ="Asia/Tokyo")
    loaded = settings.load(environ={"TZ": bad}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source) == ("Asia/Tokyo", ".env")
    assert loaded.tz.rejected == (("env", bad),)
    assert rejected(tz_log) == [("env", bad)]


@pytest.mark.parametrize("bad", ["IST-2", "Not/AZone", ""])
def test_invalid_dotenv_tz_falls_through_to_the_system_zone(
    tmp_path: Path, bad: str, tz_log: pytest.LogCaptureFixture
) -> None:
    write_env(tmp_path / ".env", TZ=bad)
    loaded = settings.load(environ={}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source) == ("Europe/Paris", "system")
    assert rejected(tz_log) == [(".env", bad)]


def test_every_invalid_candidate_falls_through_to_utc(
    tmp_path: Path, tz_log: pytest.LogCaptureFixture
) -> None:
    write_env(tmp_path / ".env", TZ="Not/AZone")
    loaded = settings.load(environ={"TZ": "IST-2"}, cwd=tmp_path, system_tz="Mars/Olympus")
    assert (loaded.tz.name, loaded.tz.source) == ("UTC", "fallback")
    assert loaded.tz.rejected == (("env", "IST-2"), (".env", "Not/AZone"), ("system", "Mars/Olympus"))
    assert rejected(tz_log) == [("env", "IST-2"), (".env", "Not/AZone"), ("system", "Mars/Olympus")]


def test_a_valid_tz_logs_no_warning(tmp_path: Path, tz_log: pytest.LogCaptureFixture) -> None:
    settings.load(environ={"TZ": "UTC"}, cwd=tmp_path, system_tz="Europe/Paris")
    assert rejected(tz_log) == []


def test_ncl_env_file_replaces_dot_env(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", TZ="Asia/Tokyo", NCL_MAX_RUNNERS="3")
    other = write_env(tmp_path / "elsewhere.env", TZ="Europe/Berlin", NCL_SWEEP_INTERVAL_S="7")
    loaded = settings.load(environ={"NCL_ENV_FILE": str(other)}, cwd=tmp_path, system_tz="Europe/Paris")
    assert (loaded.tz.name, loaded.tz.source) == ("Europe/Berlin", ".env")
    assert loaded.sweep_interval_s == 7
    assert loaded.max_runners == 5  # ./.env was not read at all


def test_process_env_wins_over_dotenv_for_every_setting(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", NCL_MAX_RUNNERS="3", NCL_RUNTIME="docker", ANTHROPIC_API_KEY="from-file")
    loaded = settings.load(environ={"NCL_MAX_RUNNERS": "9"}, cwd=tmp_path, system_tz="UTC")
    assert loaded.max_runners == 9
    assert loaded.runtime == "docker"
    assert loaded.anthropic_api_key == "from-file"


def test_a_repr_shows_the_settings_but_not_the_secrets(tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_API_KEY": "sk-one", "NCL_MATRIX_PASSWORD": "pw-two", "NCL_MATRIX_ACCESS_TOKEN": "tok-three"}
    loaded = settings.load(environ={**secrets, "NCL_MAX_RUNNERS": "7"}, cwd=tmp_path, system_tz="UTC")
    assert (loaded.anthropic_api_key, loaded.matrix_password, loaded.matrix_access_token) == tuple(secrets.values())
    shown = repr(loaded)
    assert "max_runners=7" in shown and "tz=ResolvedZone(name='UTC'" in shown
    assert not any(secret in shown for secret in secrets.values())
    assert "anthropic_api_key" not in shown and "matrix_password" not in shown


def test_settings_are_immutable_and_replace_makes_a_copy(tmp_path: Path) -> None:
    loaded = settings.load(environ={}, cwd=tmp_path, system_tz="UTC")
    with pytest.raises(AttributeError):
        loaded.max_runners = 9  # type: ignore[misc]
    changed = loaded.replace(max_runners=9)
    assert (loaded.max_runners, changed.max_runners, changed.data_dir) == (5, 9, loaded.data_dir)


def test_defaults(tmp_path: Path) -> None:
    loaded = settings.load(environ={}, cwd=tmp_path, system_tz="UTC")
    assert loaded.data_dir == tmp_path / "data"
    assert loaded.central_db == tmp_path / "data" / "central.db"
    assert loaded.sessions_dir == tmp_path / "data" / "v2-sessions"
    assert loaded.groups_dir == tmp_path / "data" / "groups"
    assert (loaded.sweep_interval_s, loaded.misfire_grace_s, loaded.task_min_interval_s) == (60, 3600, 300)
    assert (loaded.idle_timeout_s, loaded.max_runners, loaded.scheduled_task_min_gap_s) == (1800, 5, 900)
    assert (loaded.runtime, loaded.provider, loaded.image) == ("auto", "mock", "ncl-agent:latest")
    assert loaded.anthropic_api_key is None
    assert loaded.allow_agent_host_tasks is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NCL_MAX_RUNNERS", "0"),
        ("NCL_MAX_RUNNERS", "many"),
        ("NCL_RUNTIME", "podman"),
        ("NCL_SWEEP_INTERVAL_S", "-1"),
        ("NCL_PROVIDER", "openai"),
        ("NCL_HTTP_PORT", "70000"),
        ("NCL_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_ncl_value_is_a_one_line_settings_error_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.load(environ={variable: value}, cwd=tmp_path, system_tz="UTC")
    message = str(info.value)
    assert variable in message and "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value", "field", "read"),
    [
        ("NCL_MAX_RUNNERS", " 7 ", "max_runners", 7),
        ("NCL_MAX_RUNNERS", "3.00", "max_runners", 3),
        ("NCL_MAX_RUNNERS", "1_000", "max_runners", 1000),
        ("NCL_CONTAINER_CPUS", "0.5", "container_cpus", 0.5),
        ("NCL_SWEEP_INTERVAL_S", "1e1", "sweep_interval_s", 10.0),
        ("NCL_DATA_DIR", "/srv/ncl", "data_dir", Path("/srv/ncl")),
        ("NCL_LOG_FORMAT", "json", "log_format", "json"),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "1", "allow_agent_host_tasks", True),
        ("NCL_ALLOW_AGENT_HOST_TASKS", " True ", "allow_agent_host_tasks", True),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "yes", "allow_agent_host_tasks", True),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "ON", "allow_agent_host_tasks", True),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "0", "allow_agent_host_tasks", False),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "false", "allow_agent_host_tasks", False),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "off", "allow_agent_host_tasks", False),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "", "allow_agent_host_tasks", False),  # NAME= in .env: off
    ],
)
def test_values_are_read_as_their_type(tmp_path: Path, variable: str, value: str, field: str, read: object) -> None:
    assert getattr(settings.load(environ={variable: value}, cwd=tmp_path, system_tz="UTC"), field) == read


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("NCL_MAX_RUNNERS", "3.5", "valid integer"),
        ("NCL_MAX_RUNNERS", "", "valid integer"),
        ("NCL_MAX_RUNNERS", "\u0663", "valid integer"),  # an Arabic-Indic 3: int() would take it
        ("NCL_SWEEP_INTERVAL_S", "nan", "greater than 0"),
        ("NCL_CONTAINER_CPUS", "inf", "less than or equal to 1024"),
        ("NCL_CONTAINER_PIDS", "15", "greater than or equal to 16"),
        ("NCL_IMAGE", "", "at least 1 character"),
        ("NCL_RUNTIME", "Docker", "'auto', 'docker' or 'local'"),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "2", "Input should be 1, true, yes or on; or 0, false, no, off or empty"),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "y", "Input should be 1, true, yes or on"),
        ("NCL_ALLOW_AGENT_HOST_TASKS", "enabled", "Input should be 1, true, yes or on"),
    ],
)
def test_refused_values_say_why(tmp_path: Path, variable: str, value: str, said: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.load(environ={variable: value}, cwd=tmp_path, system_tz="UTC")
    assert str(info.value).startswith(f"invalid setting {variable}={value!r}: ") and said in str(info.value)


DURATIONS = [env.name for _, kind, env in settings._variables(settings.Settings)
             if kind is float and env.name.endswith("_S")]


@pytest.mark.parametrize("variable", DURATIONS)
@pytest.mark.parametrize("value", ["inf", "1e300", "31536001"])
def test_a_duration_past_a_year_is_refused_naming_its_setting(tmp_path: Path, variable: str, value: str) -> None:
    """An infinite or huge duration was taken, then overflowed the timers made of it: the host, its sweep or every
    runner failed with an OverflowError naming no setting (operations review)."""
    assert len(DURATIONS) >= 9
    with pytest.raises(SettingsError) as info:
        settings.load(environ={variable: value}, cwd=tmp_path, system_tz="UTC")
    said = str(info.value)
    assert said.startswith(f"invalid setting {variable}={value!r}: ") and "less than or equal" in said
    assert getattr(settings.load(environ={variable: "31536000"}, cwd=tmp_path, system_tz="UTC"),
                   variable.removeprefix("NCL_").lower()) == 31536000.0


def test_invalid_value_in_dotenv_is_named_too(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", NCL_MAX_RUNNERS="zero")
    with pytest.raises(SettingsError, match="NCL_MAX_RUNNERS"):
        settings.load(environ={}, cwd=tmp_path, system_tz="UTC")


def test_relative_data_dir_resolves_against_cwd(tmp_path: Path) -> None:
    loaded = settings.load(environ={"NCL_DATA_DIR": "rel/d"}, cwd=tmp_path, system_tz="UTC")
    assert loaded.data_dir == tmp_path / "rel" / "d"
    assert loaded.central_db == tmp_path / "rel" / "d" / "central.db"


def test_relative_data_dir_from_dotenv_resolves_against_cwd(tmp_path: Path) -> None:
    write_env(tmp_path / ".env", NCL_DATA_DIR="store")
    assert settings.load(environ={}, cwd=tmp_path, system_tz="UTC").data_dir == tmp_path / "store"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs"
    loaded = settings.load(environ={"NCL_DATA_DIR": str(target)}, cwd=tmp_path / "elsewhere", system_tz="UTC")
    assert loaded.data_dir == target


def test_a_data_dir_under_the_home_folder_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_env(tmp_path / ".env", NCL_DATA_DIR="~/ncl")  # as a shell would, not a folder named ~ in the cwd
    assert settings.load(environ={}, cwd=tmp_path, system_tz="UTC").data_dir == tmp_path / "home" / "ncl"


def test_system_zone_reads_etc_timezone_then_the_localtime_link(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    assert settings.system_zone(tmp_path) is None
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/America/Chicago")
    assert settings.system_zone(tmp_path) == "America/Chicago"
    (etc / "timezone").write_text("Europe/Lisbon\n")
    assert settings.system_zone(tmp_path) == "Europe/Lisbon"


def test_only_documented_names_are_settings(tmp_path: Path) -> None:
    loaded = settings.load(environ={"runtime": "docker", "data_dir": "/etc"}, cwd=tmp_path, system_tz="UTC")
    assert loaded.runtime == "auto"
    assert loaded.data_dir == tmp_path / "data"


def test_missing_ncl_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="NCL_ENV_FILE"):
        settings.load(environ={"NCL_ENV_FILE": str(tmp_path / "missing.env")}, cwd=tmp_path, system_tz="UTC")
