"""The agent's tools (DESIGN §7), declared in :mod:`agent_runner.tool_specs` and run here: served over MCP and
called by slash commands alike.

Scheduling tools validate fully here (cron, minimum interval, time), answer with the outcome, and stage a
``system`` request that reaches the host with the turn's answer; the host validates it again before applying it.
Messages (send_message, send_file) go out at once: that is what they are for.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agent_runner import group_tools
from agent_runner.config import RunnerConfig
from agent_runner.store import DbError, Store
from agent_runner.tool_error import ToolError
from schemas import ids, interval, recurring, series_end
from schemas.times import TimeFormatError, from_text, parse_user_time, to_text

if TYPE_CHECKING:
    from schemas import requests

# The tools' argument models, the requests and their checks are pydantic, whose import and model building were half
# of a runner's start-up: they load with the first tool call (``call``, ``check_prompt``, ``_request``), not at the
# start.

YEAR = timedelta(days=366)
CURRENT_TURN = "current_turn"  # the session_state key the runner stores ``Tools.turn`` under, for the MCP server
CONTROLLED = {"pause_task": "paused", "resume_task": "pending", "cancel_task": "cancelled"}


@dataclass
class Tools:
    config: RunnerConfig
    store: Store
    now: Callable[[], datetime]
    turn: dict[str, Any] = field(default_factory=dict)  # {"in_reply_to", "routing"} of the message being handled
    pause: Callable[[float], None] = time.sleep  # between looks for the host's answer (agent_runner.group_tools)

    # --- scheduling -------------------------------------------------------------------------------------------

    def checked_when(self, text: str | None) -> str | None:
        """A time as the user gave it, stored (None: none given); ToolError if it is no time."""
        if not text:
            return None
        try:
            return to_text(parse_user_time(text, self.config.zone))
        except TimeFormatError as exc:
            raise ToolError(str(exc)) from None

    def checked_recurrence(self, expr: str | None, interval_ms: Any = None) -> str | None:
        """The recurrence given (or interval_ms as one), valid and no more often than the minimum interval."""
        if interval_ms is not None and expr is not None:
            raise ToolError("give recurrence or interval_ms, not both (interval_ms 3600000 = recurrence 'every 1h')")
        try:
            if interval_ms is not None:
                expr = interval.from_ms(interval_ms)
            if not expr:
                return None
            valid = recurring.validate(expr)
        except recurring.CronError as exc:
            raise ToolError(str(exc)) from None
        clash = recurring.min_gap_violation(valid, self.config.zone, self.now(), self.config.task_min_interval_s, YEAR)
        if clash:
            gap = int((clash[1] - clash[0]).total_seconds())
            raise ToolError(f"recurrence {valid!r} would run {gap} s apart; the minimum interval between runs is "
                            f"{int(self.config.task_min_interval_s)} s")
        return valid

    def _next_runs(self, first: str | None, expr: str | None, count: int = 3,
                   ends: series_end.Ends | None = None) -> str:
        """What will run, as the user will see it: a time already passed means "now" (it runs at once, and a
        recurring task goes on from the next slot: the misfire rule, which counts the slots since as missed, spent
        of its count), never a list of past times; none past the series' end."""
        zone, now = self.config.zone, self.now()
        passed = first is not None and from_text(first) < now
        times = [now if passed else from_text(first)] if first else []
        missed, latest = 0, None
        if passed and expr and first:  # (as the host's misfire rule counts them: within the series' end)
            missed, latest = recurring.count_between(expr, from_text(first), now, zone)
            latest = latest or from_text(first)
            if ends:
                latest, missed = ends.cap(expr, from_text(first), latest, missed, zone)
        if expr:
            start = latest or (from_text(first) if first else now)  # (the slot run now, if it has passed)
            for slot in recurring.firings(expr, start, zone):
                if len(times) >= count:
                    break
                times.append(slot)
        if ends is not None:
            left = None if ends.count is None else max(ends.count - missed, 0)
            times = [t for t in times if ends.until is None or t <= ends.until][:left]
        shown = ", ".join(t.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z") for t in times) or "now"
        notes = [self.config.tz] * bool(times) + ["the time given has passed"] * passed + [
            f"{missed} slot{'s' * (missed != 1)} since then counted as missed"] * bool(missed)
        return f"{shown} ({'; '.join(notes)})" if notes else shown

    @staticmethod
    def check_prompt(prompt: Any) -> None:
        """ToolError unless ``prompt`` is a task's prompt (text, not empty, within its bounds)."""
        from schemas.validation import check_prompt

        try:
            check_prompt(prompt)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

    def _request(self, request: requests.ScheduleTask | requests.UpdateTask | requests.ControlTask) -> None:
        from schemas.rows import MAX_REQUEST_CHARS

        payload = json.loads(request.to_json())
        if (size := len(json.dumps(payload))) > MAX_REQUEST_CHARS:  # as it is stored: the host would refuse it
            raise ToolError(f"the request is {size} characters long, over the {MAX_REQUEST_CHARS} a request may be: "
                            "shorten the prompt or the script")
        # Staged: the host sees it when the turn finishes, so a turn killed after this call and retried asks once.
        self.store.stage(payload, self.now(), self.turn.get("in_reply_to"))

    def _ends(self, until: str | None, count: Any, first: str | None) -> series_end.Ends:
        """The series' end as asked (``""`` clears one: left out here), checked against now and its next run."""
        try:
            ends = series_end.Ends(from_text(when) if (when := self.checked_when(until)) else None,
                                   series_end.check_count(count) if count not in (None, "") else None)
            if ends.until is not None:
                series_end.check_until(ends.until, self.now(), from_text(first) if first else None)
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        return ends

    def _ends_said(self, ends: series_end.Ends) -> str:
        said = [f"{ends.count} run{'s' * (ends.count != 1)} in all"] if ends.count else []
        if ends.until:
            said.append("none after " + ends.until.astimezone(self.config.zone).strftime("%a %Y-%m-%d %H:%M:%S %Z"))
        return f"; ends: {', '.join(said)}" if said else ""

    def schedule_task(self, prompt: str, processAfter: str | None = None, recurrence: str | None = None,
                      script: str | None = None, contextMode: str = "group", until: str | None = None,
                      count: Any = None, interval_ms: Any = None) -> str:
        self.check_prompt(prompt)
        if contextMode not in ("group", "isolated"):
            raise ToolError("contextMode must be 'group' or 'isolated'")
        expr = self.checked_recurrence(recurrence, interval_ms)
        after = self.checked_when(processAfter)
        if (until or count is not None) and not expr:
            raise ToolError("until and count end a recurring task; give recurrence too (a one-shot runs once)")
        if same := self._same_as(prompt, expr, script or None, after):
            state = ("it is paused: resume_task resumes it" if _state(same) == "paused"
                     else (upcoming := self._upcoming(same)) and f"next run: {upcoming}")
            return (f"Task already scheduled (id: {same['id']}): a live task of this conversation has the same prompt,"
                    f" {'recurrence' if expr else 'time'} and script; nothing new was scheduled"
                    + (f" ({state})" if state else ""))
        if expr and after and from_text(after) < self.now() - timedelta(seconds=self.config.misfire_grace_s):
            raise ToolError(f"the first run at {after} is more than {self.config.misfire_grace_s:g} s ago: a recurring "
                            "task would count every slot since as missed; give a later time, or none for the first "
                            "slot after now")
        # With no time given, the host works the first slot out from when this was asked (the request's time), as here.
        first = after or (to_text(recurring.next_after(expr, self.now(), self.config.zone)) if expr else None)
        ends = self._ends(until, count, first)
        task_id = ids.new_id("task", self.now())
        answer = (f"Task scheduled (id: {task_id}, next runs: {self._next_runs(first, expr, ends=ends)}"
                  f"{self._ends_said(ends)})")  # may fail: first
        from schemas import requests

        self._request(requests.ScheduleTask(action="schedule_task", taskId=task_id, prompt=prompt,
                                            processAfter=after, recurrence=expr, script=script or None,
                                            contextMode=contextMode,  # type: ignore[arg-type]
                                            until=to_text(ends.until) if ends.until else None, count=ends.count))
        return answer

    def _same_as(self, prompt: str, expr: str | None, script: str | None, after: str | None) -> dict[str, Any] | None:
        """A live series (or one requested this turn) this schedule would repeat (issue 16.5): the same prompt,
        recurrence and script; a one-off only if also at the same time (the same reminder at another hour is new)."""
        for series in self._series():
            if _state(series) not in ("pending", "processing", "paused", "requested"):
                continue
            if requested := series.get("requested"):
                have = (requested["prompt"], requested.get("recurrence"), requested.get("script"),
                        requested.get("processAfter"))
            else:
                live, content = series["live"], json.loads(series["live"].content)
                have = (content.get("prompt"), live.recurrence, content.get("script") or None, live.process_after)
            if have[:3] == (prompt, expr, script) and (expr or have[3] == after):
                return series
        return None

    def update_task(self, taskId: str, prompt: str | None = None, processAfter: str | None = None,
                    recurrence: str | None = None, script: str | None = None, until: str | None = None,
                    count: Any = None, interval_ms: Any = None) -> str:
        series = self._known(taskId)
        if prompt is not None:
            self.check_prompt(prompt)
        expr = "" if recurrence == "" and interval_ms is None else self.checked_recurrence(recurrence, interval_ms)
        after = self.checked_when(processAfter)
        if prompt is None and after is None and expr is None and script is None and until is None and count is None:
            raise ToolError("nothing to update: give prompt, processAfter, recurrence, script, until or count")
        live = series.get("live")
        if (until is not None or count is not None) and not (expr or (expr is None and live and live.recurrence)):
            raise ToolError(f"task {taskId} runs once: until and count end a recurring task")
        waiting = live.process_after if live is not None and live.status != "processing" else None
        ends = self._ends(until, count, after or waiting)
        cleared = {key: "" for key, value in (("until", until), ("count", count)) if value == ""}
        from schemas import requests

        self._request(requests.UpdateTask(action="update_task", taskId=taskId, prompt=prompt, processAfter=after,
                                          recurrence=expr, script=script,
                                          until=to_text(ends.until) if ends.until else cleared.get("until"),
                                          count=ends.count or ("" if "count" in cleared else None)))
        shown = f" (next runs: {self._next_runs(after, expr, ends=ends)})" if after or expr else ""
        return f"Task {taskId} updated{shown}" + self._ends_said(ends)

    def _control(self, action: str, task_id: str, said: str = "") -> str:
        from schemas import requests

        self._request(requests.ControlTask(action=action, taskId=task_id))  # type: ignore[arg-type]
        return f"Task {task_id}: {action.removesuffix('_task')} requested" + (f"; {said}" if said else "")

    def pause_task(self, taskId: str) -> str:
        series = self._known(taskId)
        if _state(series) == "paused":
            raise ToolError(f"task {taskId} is already paused (resume_task resumes it)")
        upcoming = self._upcoming(series)
        return self._control("pause_task", taskId, upcoming and f"its next run waits: {upcoming}")

    def resume_task(self, taskId: str) -> str:
        series = self._known(taskId)
        state, upcoming = _state(series), self._upcoming(series)
        if state != "paused":
            doing = {"processing": "running now", "requested": "requested and not yet applied",
                     "pending": "waiting for its next run" + (upcoming and f": {upcoming}")}.get(state, state)
            raise ToolError(f"task {taskId} is not paused: it is {doing}")
        return self._control("resume_task", taskId, upcoming and f"next run: {upcoming}")

    def cancel_task(self, taskId: str) -> str:
        self._known(taskId)
        return self._control("cancel_task", taskId)

    def _upcoming(self, series: dict[str, Any]) -> str:
        """The series' next run, with seconds and zone; empty when it has no time of its own waiting."""
        live = series.get("live")
        if live is None or live.process_after is None or live.status == "processing":  # its time is the one running
            return ""
        return self._next_runs(live.process_after, live.recurrence, count=1)

    def _known(self, task_id: str) -> dict[str, Any]:
        found = next((s for s in self._series() if s["id"] == task_id or task_id in s["occurrences"]), None)
        if found is None:
            raise ToolError(f"no task {task_id!r} in this conversation (see list_tasks)")
        return found

    def _series(self) -> list[dict[str, Any]]:
        """Series in the inbox, then schedule requests the host has not applied yet."""
        found: dict[str, dict[str, Any]] = {}
        rows, unapplied = self.store.tasks_and_requests()
        for row in rows:
            series = found.setdefault(row.series, {"id": row.series, "occurrences": [], "live": None})
            series["occurrences"].append(row.id)
            if row.status in ("pending", "processing", "paused") and (row.recurrence or not series["live"]):
                series["live"] = row
        series_done = {s for s, v in found.items() if v["live"] is None}
        for request in unapplied:
            if group_tools.answered_by_host(request):  # another group's or a host task (answered by the host)
                continue
            action, ref = request.get("action"), request.get("taskId")
            if action == "schedule_task":
                found[request["taskId"]] = {"id": request["taskId"], "occurrences": [], "requested": request,
                                            "live": None}
            elif action in CONTROLLED and (target := next(
                    (v for v in found.values() if ref == v["id"] or ref in v["occurrences"]), None)):
                target["controlled"] = CONTROLLED[action]  # the state it will be in once the host applies it
        return [v for k, v in found.items() if k not in series_done or "requested" in v]

    def list_tasks(self, status: str | None = None) -> str:
        lines = []
        for series in self._series():
            live, requested = series.get("live"), series.get("requested")
            if requested:
                state, prompt = "requested (not yet applied)", requested["prompt"]
                next_runs = self._next_runs(requested.get("processAfter"), requested.get("recurrence"))
                expr = requested.get("recurrence")
            elif live is not None:
                state, prompt, expr = live.status, json.loads(live.content)["prompt"], live.recurrence
                next_runs = self._next_runs(live.process_after, expr) if state == "pending" else "-"
            else:
                continue
            if status and not state.startswith(status):
                continue
            lines.append(f"{series['id']} [{state}] {expr or 'once'} next: {next_runs} :: {prompt[:80]}")
        return "\n".join(lines) or "No tasks."

    # --- messages ---------------------------------------------------------------------------------------------

    def _routing(self, to: str | None) -> dict[str, Any]:
        if not to:
            return dict(self.turn.get("routing") or {})
        routing = self.store.destination(to)
        if routing is None:
            raise ToolError(f"unknown destination {to!r}")
        return routing

    def send_message(self, text: str, to: str | None = None) -> str:
        if not isinstance(text, str) or not text:
            raise ToolError("text must be a non-empty string")
        message_id = self.store.write("chat", {"text": text, "files": []}, self.now(),
                                      self.turn.get("in_reply_to"), self._routing(to))
        return f"Message sent (id: {message_id})"

    def send_file(self, path: str, to: str | None = None) -> str:
        workspace = self.config.session_dir.resolve()
        source = (workspace / path).resolve()  # resolve() follows symlinks, so a link out of the workspace fails too
        if not source.is_relative_to(workspace) or source.is_relative_to(workspace / "outbox"):
            raise ToolError(f"refused: {path} is outside the workspace")
        if not source.is_file():
            raise ToolError(f"no such file: {path}")
        routing = self._routing(to)  # an unknown destination is refused before anything is copied
        message_id = ids.new_id("msg", self.now())
        target = self.config.session_dir / "outbox" / message_id
        target.mkdir(parents=True)
        shutil.copyfile(source, target / source.name)
        self.store.write("chat", {"text": "", "files": [source.name]}, self.now(), self.turn.get("in_reply_to"),
                         routing, message_id=message_id)
        return f"File sent (id: {message_id}, {source.name})"

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run the tool ``name`` (declared in ``tool_specs.TOOLS``, run by its method) with ``arguments``."""
        from pydantic import ValidationError

        from agent_runner.tool_specs import TOOLS
        from schemas.validation import one_line

        if name not in TOOLS:
            raise ToolError(f"unknown tool {name!r}; tools: {', '.join(TOOLS)}")
        if problem := TOOLS[name].misfit(arguments):  # in the names the caller typed, not a Python signature's
            raise ToolError(problem)
        try:
            if group_tools.answered_by_host(arguments):  # another group's tasks, or host tasks (issue 16.3)
                result: str = group_tools.call(self, name, arguments)
            else:
                result = getattr(self, name)(**group_tools.own(arguments))
        except ToolError:
            raise
        except ValidationError as exc:  # pydantic's report spans lines and names a model, not the argument
            raise ToolError(f"bad arguments for {name}: {one_line(exc)}") from None
        except (TypeError, AttributeError, ValueError, OverflowError, RuntimeError, OSError, DbError) as exc:
            # Bad argument types, names the OS refuses, symlink loops: the caller's mistake, said as such.
            raise ToolError(f"bad arguments for {name}: {str(exc).splitlines()[0]}") from None
        return result



def _state(series: dict[str, Any]) -> str:
    """A series' state as the agent last asked it to be: a control request not yet applied counts as done."""
    live = series.get("live")
    return str(series.get("controlled") or (live.status if live is not None else "requested"))
