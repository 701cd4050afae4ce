"""``python -m agent_runner --session-dir DIR [--once]``: the runner, in a container or as a local process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

from agent_runner.config import RunnerConfig
from agent_runner.providers import MockProvider, Provider
from agent_runner.runner import Runner
from agent_runner.store import StoreError
from agent_runner.wake import InboxWatch, Poll
from schemas import clock
from schemas.proctree import OWN, become_subreaper

PR_SET_PDEATHSIG = 1


def make_provider(config: RunnerConfig) -> Provider:
    if config.provider == "anthropic":
        from agent_runner.anthropic_provider import AnthropicProvider

        return AnthropicProvider(config)
    return MockProvider()


async def _main(config: RunnerConfig, once: bool) -> None:
    wake = InboxWatch.or_poll(config.inbound, Poll(clock, config.poll_interval_s))
    runner = Runner(config, make_provider(config), clock, rules=config.rules, wake=wake)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    await runner.run(once=once)


def _die_with_parent(host_pid: str | None) -> None:
    """Linux: a runner whose host is killed (even by SIGKILL) is killed too, so a restarted host never finds a
    predecessor's runner still serving the session beside its own. Harmless as a container's first process. A host
    killed before this (a runner's imports take ~0.3 s) left it orphaned already: then it ends here (``host_pid``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if host_pid and os.getppid() != int(host_pid):
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent_runner", description=__doc__)
    parser.add_argument("--session-dir", type=Path, default=Path("/workspace"), help="the session folder")
    parser.add_argument("--once", action="store_true", help="process what is due now, then exit")
    args = parser.parse_args(argv)
    config = RunnerConfig.from_env(args.session_dir)
    if not config.outlives_host:
        _die_with_parent(config.host_pid)
    logging.basicConfig(level=config.log_level, stream=sys.stderr, format="runner: %(levelname)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per model request is noise here
    # What gate scripts and MCP servers orphan comes to us, not to pid 1: the gate kills it when it ends, and
    # whatever is left when we end dies with us (schemas.proctree).
    become_subreaper()
    try:
        asyncio.run(_main(config, args.once))
    except StoreError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 1
    finally:
        OWN.sweep(everything=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
