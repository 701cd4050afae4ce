"""Bad input, property-based (issue 7): ``ScheduledTask`` YAML specs through ``ncl scheduled-task add --file``.
Any document (good and bad targets, schedules, stray keys, YAML tricks, deep nesting) is exit 1 with one
``ncl: `` line on stderr and nothing stored, or one stored task whose schedule and payload are what was given.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from processes import Env
from property_kit import cron_texts, json_values, no_nul, observe, props, strict_json

from host.channels import queues
from schemas import cron

good_schedules = st.sampled_from(["30 17 * * *", "0 9 * * 1-5", "@daily", "0 */2 * * *", "15 3 1 * *"])
schedules = good_schedules | good_schedules | st.sampled_from(["*/5 * * * *", "0 0 31 2 *", "61 * * * *", "every day",
                                                               30, None]) | cron_texts
good_targets = st.one_of(
    st.fixed_dictionaries({"queue": st.fixed_dictionaries(
        {"name": st.sampled_from(["support-jobs", "jobs"]),
         "payload": st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=12)},
                                          optional={"thread_id": st.text(max_size=8), "extra": json_values})})}),
    st.fixed_dictionaries({"container": st.fixed_dictionaries(
        {"image": st.just("alpine:latest"), "command": st.sampled_from(["echo scheduled", ["echo", "a b"]])},
        optional={"timeout_seconds": st.integers(1, 86_400)})}),
    st.fixed_dictionaries({"host": st.fixed_dictionaries(
        {"command": st.sampled_from(["scripts/backup.sh --all", ["echo", "x"]])},
        optional={"cwd": st.sampled_from([".", "..", "/"]), "timeout_seconds": st.integers(1, 86_400)})}),
)
bad_targets = st.one_of(
    st.fixed_dictionaries({"queue": st.fixed_dictionaries(
        {"name": st.sampled_from(["bad name", "", "-x"]) | no_nul,
         "payload": st.fixed_dictionaries({"prompt": json_values}) | json_values},
        optional={"extra": json_values})}),
    st.fixed_dictionaries({"container": st.fixed_dictionaries(
        {"image": st.sampled_from(["", "alpine:latest"]) | no_nul,
         "command": st.sampled_from(["", "echo 'unterminated"]) | st.lists(no_nul, max_size=3) | json_values},
        optional={"timeout_seconds": st.integers(-5, 100_000) | json_values})}),
    st.fixed_dictionaries({"host": st.fixed_dictionaries(
        {"command": st.sampled_from(["", "a 'b"]) | st.lists(no_nul, max_size=3) | json_values},
        optional={"cwd": st.sampled_from(["nope", "/etc/hostname"]) | no_nul | json_values,
                  "timeout_seconds": st.integers(-5, 100_000)})}),
    st.just({}),
    st.just({"queue": {"name": "jobs", "payload": {"prompt": "x"}}, "host": {"command": "echo"}}),
)
heads = st.fixed_dictionaries(
    {"version": st.sampled_from(["v1", "v1", "v1", "v1", "v2", 1]),
     "kind": st.sampled_from(["ScheduledTask", "ScheduledTask", "ScheduledTask", "Task"]), "schedule": schedules},
    optional={"name": no_nul, "description": st.text(max_size=10),
              "active": st.booleans() | st.booleans() | json_values})
spec_docs = st.one_of(
    st.builds(lambda head, target: yaml.safe_dump({**head, **target}), heads, good_targets),
    st.builds(lambda head, target: yaml.safe_dump({**head, **target}), heads, good_targets),
    st.builds(lambda head, target, extra: yaml.safe_dump({**head, **target, **extra}), heads, bad_targets,
              st.dictionaries(st.sampled_from(["spec", "targets", "timezone"]), json_values, max_size=1)),
    st.sampled_from(["", "---", "- a\n- b", "version: v1\nkind: ScheduledTask\nschedule: */5 * * * *\n",
                     "version: v1\nkind: ScheduledTask\nschedule: @daily\nqueue: {name: j, payload: {prompt: p}}\n",
                     "!!python/object/apply:os.system ['true']", "a: [", "\t- x", "version: v1\nversion: v2\n"]),
    st.text(max_size=60),
)


def listed_specs(ncl: Callable[..., Any]) -> list[dict[str, Any]]:
    result = ncl("scheduled-task", "list", "--json")
    assert result.code == 0, result.err
    found: list[dict[str, Any]] = strict_json(result.out)["scheduled_tasks"]
    return found


@props(120)
@given(doc=spec_docs)
def test_scheduled_task_specs_are_one_clear_line_or_a_stored_task(ncl: Callable[..., Any], cli_env: Any,
                                                                   doc: str) -> None:
    path = cli_env.root / "spec.yaml"
    path.write_text(doc)
    before = listed_specs(ncl)
    result = ncl("scheduled-task", "add", "--file", str(path), "--now", "2026-06-11T09:00:00", "--json")
    assert "Traceback" not in result.out + result.err
    observe(f"exit {result.code}")
    after = listed_specs(ncl)
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and result.err.startswith("ncl: "), result
        assert "internal error" not in result.err, result.err
        assert after == before, "a refused spec was stored"
        return
    added = strict_json(result.out)
    assert sorted(t["id"] for t in after) == sorted([*(t["id"] for t in before), added["id"]])
    spec = yaml.safe_load(doc)
    assert added["schedule"] == cron.validate(spec["schedule"])
    kind = added["target"]["kind"]
    assert kind in ("queue", "container", "host") and kind in spec
    if kind == "queue":
        assert added["target"]["payload"] == spec["queue"]["payload"]


@pytest.mark.parametrize("doc", [
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: hi, "
                 "x: .nan}}\n", id="nan-in-payload"),
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: "
                 "[1]}}\n", id="payload-queues-would-refuse"),
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: "
                 "hi}}\n", id="control-good-spec"),
])
def test_scheduled_task_spec_edge_cases(ncl: Callable[..., Any], cli_env: Any, doc: str) -> None:
    path = cli_env.root / "spec.yaml"
    path.write_text(doc)
    result = ncl("scheduled-task", "add", "--file", str(path), "--now", "2026-06-11T09:00:00", "--json")
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and "internal error" not in result.err, result
        assert listed_specs(ncl) == []
        return
    given_payload = yaml.safe_load(doc)["queue"]["payload"]
    assert strict_json(result.out)["target"]["payload"] == given_payload
    queues.prompt_of(given_payload, cli_env.root)  # what is stored can be sent when it fires


def test_a_deeply_nested_spec_is_a_clear_error(tmp_path: Path) -> None:
    # In a child process: a RecursionError in this one can upset CPython 3.11's AST recursion counter, which pytest's
    # own traceback formatting then trips over (SystemError: AST constructor recursion depth mismatch).
    env = Env(tmp_path)
    (tmp_path / "deep.yaml").write_text("[" * 2000 + "]" * 2000 + "\n")
    done = env.ncl("scheduled-task", "add", "--file", "deep.yaml")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
