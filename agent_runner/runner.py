"""The poll loop (DESIGN §7): fetch due rows, claim, gate, one prompt per batch, reply, ack; exit when idle."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agent_runner import prompt, slash
from agent_runner.config import RunnerConfig
from agent_runner.gate import run_gate
from agent_runner.providers import History, Provider, ProviderError, Turn
from agent_runner.store import OperationalError, Reply, Store, StoreError
from agent_runner.tools import CURRENT_TURN, Tools
from agent_runner.wake import Poll, Wake
from schemas import detached
from schemas.clock import Clock
from schemas.rows import MODEL_WAIT, InMessage, ModelWait
from schemas.times import to_text

log = logging.getLogger(__name__)
BEAT_EVERY = timedelta(seconds=1)  # while working
IDLE_BEAT_EVERY = timedelta(seconds=5)  # while idle: the longest an idle runner sleeps (ncl status: alive within 10 s)
CONVERSATION = "conversation"


def _turn(row: InMessage) -> dict[str, Any]:
    """What the tools need of the message being answered (``Tools.turn``)."""
    return {"in_reply_to": row.id, "routing": row.routing()}


def _content(row: InMessage) -> dict[str, Any]:
    data = json.loads(row.content)
    return data if isinstance(data, dict) else {}


@dataclass
class Runner:
    config: RunnerConfig
    provider: Provider
    clock: Clock
    rules: str = ""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    wake: Wake | None = None  # how it waits while idle; by default it polls every NCL_POLL_INTERVAL_S

    def __post_init__(self) -> None:
        self.waits: Wake = self.wake or Poll(self.clock, self.config.poll_interval_s)
        self.store = Store(self.config)
        self.tools = Tools(self.config, self.store, self.clock.now)
        self._last_beat: datetime | None = None
        self._gated: dict[str, datetime] = {}  # a task whose gate woke the agent -> when its gate began (``_answer``)

    def beat(self, now: datetime) -> None:
        if self._last_beat is None or now - self._last_beat >= BEAT_EVERY:
            self.store.beat()
            self._last_beat = now

    async def step(self) -> bool:
        """Handle one batch of due rows; False when there was nothing to do."""
        now = self.clock.now()
        self.beat(now)
        rows = self.store.fetch(now)
        triggered = [r for r in rows if r.trigger == 1]
        if not triggered:
            return False
        self.store.claim(triggered, now)
        try:
            await self._take_turn(rows, triggered, now)
        except OperationalError as exc:
            # Its rows stay claimed by this generation, which the host leaves alone while the runner lives and which
            # it never fetches again: stranded until its idle timeout, postponed by every message (crash review, a
            # full disk). Ending lets the host release them at once, to the next runner.
            raise StoreError(f"a turn's rows could not be recorded ({exc}): ending, for the host to release "
                             "them") from None
        return True

    async def _take_turn(self, rows: list[InMessage], triggered: list[InMessage], now: datetime) -> None:
        """The turn of the claimed rows ``triggered`` (``rows``: the due ones, their context among them)."""
        items: list[prompt.Item] = []
        for row in triggered:
            item = await self._prepare(row, now)
            if item is not None:
                items.append(item)
        if items:
            context = [prompt.Item(r) for r in rows if r.trigger == 0]
            self.store.claim([i.row for i in context], now)
            # Chat and group tasks share one prompt; a queue job is a unit of work with an answer of its own;
            # an isolated task neither reads nor extends the conversation.
            isolated = [i for i in items if _content(i.row).get("context_mode") == "isolated"]
            jobs = [i for i in items if i.row.kind == "queue" and i not in isolated]
            shared = [i for i in items if i not in isolated and i not in jobs]
            for batch in ([*context, *shared], *([i] for i in jobs), *([i] for i in isolated)):
                if any(i.row.trigger == 1 for i in batch):
                    await self._answer(batch, isolated=batch[-1] in isolated)

    async def _prepare(self, row: InMessage, now: datetime) -> prompt.Item | None:
        """Gate a task, or answer a slash command; the item still to go to the model, if any."""
        content = _content(row)
        if row.kind == "task" and content.get("script"):
            # on_start: listed for a local host, which kills the script's own session when it kills us (DESIGN §8).
            began = self.clock.now()
            gate = await asyncio.to_thread(run_gate, content["script"], task_id=row.id, tz=self.config.tz,
                                           home=str(self.config.session_dir), cwd=str(self.config.session_dir),
                                           on_start=lambda pid: detached.note(self.config.session_dir, [pid]))
            self.beat(self.clock.now())
            if not gate.wake:
                self.store.finish([row.id], "completed", self.clock.now(), gate.ack_outcome, gate.reason, began)
                return None
            self._gated[row.id] = began  # its run began with its gate, skipped or not
            return prompt.Item(row, gate.data)
        if row.kind == "chat" and slash.is_command(str(content.get("text", ""))):
            self.tools.turn = _turn(row)  # the tools run here, not in the MCP server: nothing to store for it
            answer = slash.run(str(content["text"]), self.tools)
            status, outcome, reason = ("failed", "failed", answer.text) if answer.failed else ("completed", "ran", None)
            self.store.finish([row.id], status, self.clock.now(), outcome, reason, now,
                              reply=self._reply(row, answer.text), state=(CONVERSATION, None) if answer.clear else None)
            return None
        return prompt.Item(row)

    def _set_turn(self, row: InMessage) -> None:
        self.tools.turn = _turn(row)
        # The MCP server runs in its own process: it reads the turn it serves from session_state.
        self.store.set_state(CURRENT_TURN, json.dumps(self.tools.turn), self.clock.now())

    def _model_wait(self, ids: list[str], problem: str, seconds: float) -> None:
        """Say in session_state that this batch waits to retry the model API, and until when (the chat shows it)."""
        now = self.clock.now()
        wait = ModelWait(tuple(ids), problem[:500], to_text(now + timedelta(seconds=seconds)))
        self.store.set_state(MODEL_WAIT, wait.text(), now)

    @staticmethod
    def _reply(row: InMessage, text: str) -> Reply:
        return Reply({"text": text, "files": []}, row.id, row.routing())

    async def _answer(self, batch: list[prompt.Item], isolated: bool) -> None:
        now = self.clock.now()
        started = min((self._gated.pop(i.row.id) for i in batch if i.row.id in self._gated), default=now)
        last = [i for i in batch if i.row.trigger == 1][-1].row
        ids = [i.row.id for i in batch]
        self._set_turn(last)
        history = None if isolated else self._history()
        turn = Turn(prompt.render(batch, now, self.config.zone), [i.row for i in batch], self.tools,
                    self.rules, history, self.config.model, beat=lambda: self.beat(self.clock.now()),
                    waiting=lambda problem, seconds: self._model_wait(ids, problem, seconds))
        try:
            reply = await self.provider.respond(turn)
        except ProviderError as exc:
            log.warning("provider failed: %s", exc, extra={"action": "provider_failed"})
            self.store.finish(ids, "failed", self.clock.now(), "failed", str(exc), started,
                              reply=self._reply(last, f"Sorry, I could not answer: {exc}"))
            return
        keep = not isolated and reply.history is not None
        self.store.finish(ids, "completed", self.clock.now(), "ran", None, started,
                          reply=self._reply(last, reply.text) if reply.text else None,
                          state=(CONVERSATION, json.dumps(reply.history)) if keep else None, tokens=reply.tokens)

    def _history(self) -> History:
        raw = self.store.state(CONVERSATION)
        try:
            history = json.loads(raw) if raw else []
        except ValueError:
            history = []
        return history if isinstance(history, list) else []

    def stop(self) -> None:
        self.stopping.set()
        self.waits.wake()

    async def run(self, once: bool = False) -> None:
        """Work until idle for NCL_IDLE_TIMEOUT_S (or, with ``once``, until nothing is due). While idle it sleeps
        until the host writes the inbox, the next row falls due or the next heartbeat, whichever comes first."""
        released = self.store.release_stale_claims()
        if released:
            log.info("released %d stale claims", released, extra={"action": "claims_released"})
        idle_since = self.clock.now()
        idle_timeout = timedelta(seconds=self.config.idle_timeout_s)
        try:
            while not self.stopping.is_set():
                try:
                    if await self.step():
                        idle_since = self.clock.now()
                        continue
                    now = self.clock.now()
                    due = self.store.next_due(now)
                except OperationalError as exc:
                    # A hot journal the host has not rolled back yet ("readonly database"), or a long lock:
                    # both pass once the host writes again, so wait and poll, never exit over it.
                    log.warning("session files busy: %s", exc, extra={"action": "store_busy"})
                    now, due = self.clock.now(), self.clock.now() + timedelta(seconds=self.config.poll_interval_s)
                if once or now - idle_since >= idle_timeout:
                    return
                until = min(idle_since + idle_timeout, now + IDLE_BEAT_EVERY, *([due] if due else []))
                await self.waits.wait((until - now).total_seconds())
        finally:
            self.waits.close()
            await self.provider.close()
