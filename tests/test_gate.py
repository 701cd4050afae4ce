"""Gate scripts (DESIGN §6.8) against real bash processes."""

from __future__ import annotations

import inspect
import os
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from kit import exits_within

from agent_runner.gate import GateResult, run_gate

NY = "America/New_York"


def gate(script: str, tmp_path: Path, **kwargs: Any) -> GateResult:
    return run_gate(script, task_id="task-1", tz=kwargs.pop("tz", "UTC"), home=str(tmp_path), **kwargs)


needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd_open is Linux-only")


def test_log_lines_then_false_skips(tmp_path: Path) -> None:
    result = gate("echo 'log line'; echo '{\"wakeAgent\":false}'", tmp_path)
    assert (result.outcome, result.wake, result.ack_outcome) == ("skip", False, "skipped")


def test_true_wakes_with_data(tmp_path: Path) -> None:
    result = gate("echo checking; echo '{\"wakeAgent\":true,\"data\":{\"n\":3}}'; echo", tmp_path)
    assert result == GateResult("wake", data={"n": 3})
    assert result.wake and result.ack_outcome == "ran"


def test_nonzero_exit_is_an_error_even_after_valid_json(tmp_path: Path) -> None:
    result = gate("echo '{\"wakeAgent\":true}'; exit 1", tmp_path)
    assert (result.outcome, result.reason, result.ack_outcome) == ("error", "exit code 1", "gate_error")


def test_error_reason_carries_the_stderr_tail(tmp_path: Path) -> None:
    result = gate("echo 'first\nsecond' >&2; exit 3", tmp_path)
    assert result.reason == "exit code 3; stderr: first second"


def test_killed_by_a_signal_is_an_error(tmp_path: Path) -> None:
    assert gate("kill -9 $$", tmp_path).reason == "killed by signal 9"


@needs_pidfd
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 41 & echo $! > {shlex.quote(str(pids))}; echo $$ >> {shlex.quote(str(pids))}; sleep 40"
    started = time.monotonic()
    result = gate(script, tmp_path, timeout_s=1.0)
    assert time.monotonic() - started < 2.5
    assert (result.outcome, result.reason, result.ack_outcome) == ("timeout", "timed out after 1 s", "gate_error")
    for pid in map(int, pids.read_text().split()):
        assert exits_within(pid, 2.0)


def test_default_limits_are_30_s_and_1_mib() -> None:
    params = inspect.signature(run_gate).parameters
    assert params["timeout_s"].default == 30.0
    assert params["max_output"].default == 1 << 20


@needs_pidfd
def test_background_child_neither_hangs_the_call_nor_survives_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    started = time.monotonic()
    # The child inherits stdout: a reader that waits for EOF would hang until the timeout.
    result = gate(f"sleep 100 & echo $! > {shlex.quote(str(pid_file))}; echo '{{\"wakeAgent\":true}}'", tmp_path,
                  timeout_s=10.0)
    assert time.monotonic() - started < 2.5
    assert result.outcome == "wake"
    assert exits_within(int(pid_file.read_text()), 2.0)


def test_output_over_the_cap_is_bad_output(tmp_path: Path) -> None:
    result = gate("head -c 2000000 /dev/zero | tr '\\0' x; echo; echo '{\"wakeAgent\":true}'", tmp_path)
    assert (result.outcome, result.reason, result.ack_outcome) == ("bad_output", "output over 1 MiB", "gate_error")


def test_endless_output_is_cut_off_at_the_cap_not_the_deadline(tmp_path: Path) -> None:
    started = time.monotonic()
    result = gate("yes", tmp_path, timeout_s=10.0)
    assert time.monotonic() - started < 5
    assert result.reason == "output over 1 MiB"


def test_cap_is_exact_and_counts_stderr(tmp_path: Path) -> None:
    script = "echo noise >&2; echo '{\"wakeAgent\":true}'"  # 6 + 19 bytes
    assert gate(script, tmp_path, max_output=25).outcome == "wake"
    capped = gate(script, tmp_path, max_output=24)
    # Whether "noise" is in the stderr tail depends on which pipe was read first.
    assert capped.outcome == "bad_output" and (capped.reason or "").startswith("output over 24 bytes")


@pytest.mark.parametrize(("last_line", "reason"), [
    ('{"wakeAgent":"yes"}', "wakeAgent must be a boolean"),
    ('{"wakeAgent":1}', "wakeAgent must be a boolean"),
    ('{"data":{}}', "wakeAgent must be a boolean"),
    ("[true]", "last line is not a JSON object"),
    ("done", "last line is not JSON"),
])
def test_malformed_verdicts_are_bad_output(tmp_path: Path, last_line: str, reason: str) -> None:
    result = gate(f"echo '{{\"wakeAgent\":true}}'; echo {shlex.quote(last_line)}", tmp_path)
    assert (result.outcome, result.reason, result.ack_outcome) == ("bad_output", reason, "gate_error")


@pytest.mark.parametrize("script", ["true", "echo; echo '   '"])
def test_no_output_is_bad_output(tmp_path: Path, script: str) -> None:
    assert gate(script, tmp_path) == GateResult("bad_output", reason="no output")


def test_caller_secrets_do_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    result = gate('printf \'{"wakeAgent":true,"data":"%s"}\\n\' "$ANTHROPIC_API_KEY"', tmp_path)
    assert result == GateResult("wake", data="")


def test_environment_is_exactly_path_home_tz_and_task_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_SECRET", "x")
    out = tmp_path / "env"
    result = run_gate(f"env > {shlex.quote(str(out))}; echo '{{\"wakeAgent\":false}}'", task_id="t-42", tz=NY,
                      home=str(tmp_path), path="/usr/bin:/bin")
    assert result.outcome == "skip"
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    # PWD, SHLVL and _ are exported by bash itself, not inherited from us.
    assert set(env) - {"PWD", "SHLVL", "_"} == {"PATH", "HOME", "TZ", "NCL_TASK_ID"}
    assert (env["PATH"], env["HOME"], env["TZ"], env["NCL_TASK_ID"]) == ("/usr/bin:/bin", str(tmp_path), NY, "t-42")


def test_tz_is_honored(tmp_path: Path) -> None:
    # Pinned instants (Jan 1970, Jul 2024) prove the zone's DST rules load, not just its name.
    script = 'printf \'{"wakeAgent":true,"data":"%s %s %s"}\\n\' "$(date -d @0 +%Z)" "$(date -d @1720000000 +%Z)" ' \
             '"$(date +%Z)"'
    winter, summer, now = gate(script, tmp_path, tz=NY).data.split()
    assert (winter, summer) == ("EST", "EDT")
    assert now in {"EST", "EDT"}


def test_runs_in_cwd_with_stdin_closed(tmp_path: Path) -> None:
    script = 'read -r line; printf \'{"wakeAgent":true,"data":["%s","%s"]}\\n\' "$PWD" "$line"'
    assert gate(script, tmp_path, cwd=str(tmp_path)).data == [str(tmp_path), ""]


def test_missing_cwd_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = gate("echo '{\"wakeAgent\":true}'", tmp_path, cwd=str(tmp_path / "nope"))
    assert result.outcome == "error" and (result.reason or "").startswith("could not start bash")
