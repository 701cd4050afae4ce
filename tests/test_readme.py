"""The README runs (issue 15.7): every ```sh block is typed, command by command and verbatim, into one bash in a
fresh directory, as a new user follows it, with the project's ``ncl`` on PATH. Each command must exit 0; its
placeholders (SESSION_ID, TASK_ID, sched-…) are filled from what an earlier command printed; a ``--json`` command
must print JSON holding every key its comment names. The few blocks that cannot run here are listed in NOT_RUN,
each with its reason, and checked as far as they can be (the scripts exist, the commands parse).

Every markdown link of the README and docs/ stays inside the repository and points at a file that exists."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from processes import ncl_command

from host.files.lock import running_pid

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMAND_TIMEOUT_S = 120

# A placeholder -> the command that prints it and the pattern of the value in that command's output.
PLACEHOLDERS = {
    "SESSION_ID": ("ncl sessions create", r"sess-\d+-[0-9a-z]{6}"),
    "TASK_ID": ("ncl tasks add", r"task-\d+-[0-9a-z]{6}"),
    "sched-…": ("ncl scheduled-task add", r"sched-[0-9a-z-]+"),
}
# Blocks not run here (by their first line), and why; their scripts must exist and their ncl commands parse.
NOT_RUN = {
    "scripts/run.sh": "sets up .venv and runs until the chat ends: tests/test_run_script.py runs it in a copy",
    "scripts/test.sh": "sets up .venv and runs this whole suite, this test included",
    "ncl image build": "needs a Docker engine and minutes (the base image may be pulled): tests/docker/conftest.py "
                       "builds with it",
}
# Interactive commands: what is typed into them (nothing: Ctrl-D at once) and how their first line starts.
INTERACTIVE = {"ncl chat support": "chatting with support"}
COMMENT = re.compile(r"\s{2,}#\s?(.*)$|^\s*#\s?(.*)$")


@dataclass
class Command:
    text: str  # as in the README, comment and continuation lines included
    comment: str = ""  # its trailing comment and the comment-only lines under it

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)


@dataclass
class Block:
    line: int  # where it starts in README.md
    commands: list[Command] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.commands[0].text.splitlines()[0]


def complete(text: str) -> bool:
    """Whether ``text`` is whole commands: no continuation, no open here-document or quote (bash's parser)."""
    if text.endswith("\\"):
        return False
    if (heredoc := re.search(r"<<-?\s*'?(\w+)'?", text)) and not re.search(
            rf"^{heredoc[1]}$", text[heredoc.end():], re.MULTILINE):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True, check=False).returncode == 0


def blocks(markdown: str) -> list[Block]:
    """The ```sh blocks of ``markdown``, split into commands."""
    found = []
    for match in re.finditer(r"^```sh\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL):
        block = Block(markdown[:match.start()].count("\n") + 1)
        pending: list[str] = []
        for line in match[1].splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                if line.strip() and block.commands:  # a comment under a command goes on with its comment
                    block.commands[-1].comment += " " + line.strip().lstrip("#").strip()
                continue
            pending.append(line)
            if complete("\n".join(pending)):
                text = "\n".join(pending)
                comment = next((m[1] or m[2] for line in pending if (m := COMMENT.search(line))), "")
                block.commands.append(Command(text, comment))
                pending = []
        assert not pending, f"README.md:{block.line}: a command is not finished: {pending}"
        found.append(block)
    return found


class Shell:
    """One bash, as a user's terminal: each command typed into it in turn, its output kept in files, its status
    read back; background jobs live on across commands, as in a terminal."""

    def __init__(self, cwd: Path, out_dir: Path, env: dict[str, str]) -> None:
        self.out_dir = out_dir
        self.count = 0
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at EOF: the pipe is the pump's alone
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, text: str) -> tuple[int, str, str]:
        """Run ``text`` with nothing on its stdin (Ctrl-D at once): its exit status, stdout and stderr."""
        self.count += 1
        out, err = self.out_dir / f"{self.count}.out", self.out_dir / f"{self.count}.err"
        mark = f"__readme_done_{uuid.uuid4().hex}__"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{{ {text}\n}} >{shlex.quote(str(out))} 2>{shlex.quote(str(err))} </dev/null\n"
                              f"echo {mark} $?\n")
        self.proc.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=COMMAND_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"still running after {COMMAND_TIMEOUT_S} s: {text}")
            assert line is not None, f"the shell ended during: {text}"
            if line.startswith(mark):
                return int(line.split()[1]), out.read_text(), err.read_text()
            raise AssertionError(f"the shell printed {line!r}")  # every command's output goes to its files

    def close(self) -> None:
        """End the shell and whatever it left running (a host the README did not stop, if it failed before)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from keys(inner)


def printed_json(out: str) -> list[Any]:
    """A --json command's output: one document, or one a line (``ncl logs --json``)."""
    try:
        return [json.loads(out)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def fill(command: Command, values: dict[str, str]) -> str:
    """The command with each placeholder replaced by its value (in its comment too, where it may stay unfilled)."""
    text = command.text
    for placeholder in PLACEHOLDERS:
        pattern = rf"(?<![\w-]){re.escape(placeholder)}(?!\w)"
        if re.search(pattern, " ".join(command.words)):
            assert placeholder in values, f"{placeholder} is used before any command printed it: {text}"
        if placeholder in values:
            text = re.sub(pattern, values[placeholder], text)
    return text


def check(command: Command, code: int, out: str, err: str) -> None:
    assert code == 0, f"exit {code}: {command.text}\nstdout: {out}\nstderr: {err}"
    for start, first_line in INTERACTIVE.items():
        if command.text.split("#")[0].strip() == start:
            assert out.startswith(first_line), out
    if "--json" in command.words:
        documents = printed_json(out)
        found = {key for document in documents for key in keys(document)}
        named = set(re.findall(r'"(\w+)"', command.comment))
        assert named <= found, f"{command.text}: the comment names {sorted(named - found)}, not in: {out}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def user_env() -> dict[str, str]:
    """A new user's shell: nothing of this machine's ncl settings, runners as local processes (tests/docker covers
    the docker runtime), times in UTC, a free webhook port (the README's curl reads NCL_HTTP_PORT), the project's
    ``ncl`` on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_", "PYTEST_")) and k != "TZ"}
    bin_dir = Path(ncl_command()[0]).parent
    env.update({"TZ": "UTC", "NCL_RUNTIME": "local", "NCL_HTTP_PORT": str(free_port()),
                "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"})
    return env


def check_not_run(block: Block) -> None:
    """What can be checked of a block that is not run: its scripts exist, its ncl commands parse (``--help``
    after them exits 0 only if every option before it is known)."""
    for command in block.commands:
        for part in " ".join(command.words).split("&&"):
            words = part.split()
            if words[0].startswith("scripts/"):
                assert os.access(ROOT / words[0], os.X_OK), f"README.md:{block.line}: no script {words[0]}"
            else:
                assert words[0] == "ncl", f"README.md:{block.line}: {part}"
                done = subprocess.run([*ncl_command(), *words[1:], "--help"], capture_output=True, text=True,
                                      timeout=60, check=False)
                assert done.returncode == 0, f"README.md:{block.line}: {part}: {done.stderr}"


@pytest.mark.slow
def test_every_shell_block_of_the_readme_runs_verbatim(tmp_path: Path) -> None:
    if len(ncl_command()) != 1:
        pytest.skip("no ncl console script next to this Python: the README runs 'ncl'")
    work, out_dir = tmp_path / "fresh", tmp_path / "outputs"
    work.mkdir()
    out_dir.mkdir()
    found = blocks(README.read_text())
    skipped = [block for block in found if any(block.first.startswith(start) for start in NOT_RUN)]
    assert sorted({start for block in skipped for start in NOT_RUN if block.first.startswith(start)}) == sorted(
        NOT_RUN), "each block listed in NOT_RUN is in the README"
    for block in skipped:
        check_not_run(block)
    values: dict[str, str] = {}
    shell = Shell(work, out_dir, user_env())
    try:
        for block in found:
            if block in skipped:
                continue
            for command in block.commands:
                code, out, err = shell.run(fill(command, values))
                check(command, code, out, err)
                for placeholder, (prefix, pattern) in PLACEHOLDERS.items():
                    if command.text.startswith(prefix) and (value := re.search(pattern, out)):
                        values[placeholder] = value[0]
    finally:
        shell.close()
    assert set(values) == set(PLACEHOLDERS), "every placeholder was printed by a command"
    assert running_pid(work / "data") is None, "the README stops the host it starts"


def links(markdown: str) -> Iterator[str]:
    """Every link target of ``markdown``: [text](target) and [label]: target, code spans and blocks left out."""
    text = re.sub(r"^```.*?^```$", "", markdown, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    yield from re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    yield from re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.MULTILINE)


DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*.md"))]


@pytest.mark.parametrize("doc", sorted(set(DOCS)), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_stays_in_the_repository_and_finds_its_file(doc: Path) -> None:
    for target in links(doc.read_text()):
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE), f"{doc.name}: a link leaves: {target}"
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} is outside the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text()), f"{doc.name}: {target}: no such heading"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of ``markdown``: lower case, spaces to '-', punctuation dropped."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", re.sub(r"^```.*?^```$", "", markdown,
                                                            flags=re.MULTILINE | re.DOTALL), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_link_check_sees_links_that_leave() -> None:
    """The counter-check: the DESIGN link the README had is found, and would leave the repository."""
    found = list(links("The contract is [`DESIGN.md`](../shared/DESIGN.md); see [x][1].\n\n[1]: https://x.org\n"
                       "`[not](a-link)`\n```sh\n[no](link)\n```\n"))
    assert found == ["../shared/DESIGN.md", "https://x.org"]
    assert not (README.parent / "../shared/DESIGN.md").resolve().is_relative_to(ROOT)


def test_the_splitter_keeps_continuations_quotes_and_here_documents_whole() -> None:
    [block] = blocks("```sh\nncl a \\\n  --b  # says {\"x\"}\n#   \"y\"\nncl q --json '{\"a\": [1,\n  2]}'\n"
                     "cat > f <<'EOF'\nk: v  # kept\nEOF\n```\n")
    assert [command.text for command in block.commands] == [
        "ncl a \\\n  --b  # says {\"x\"}", "ncl q --json '{\"a\": [1,\n  2]}'", "cat > f <<'EOF'\nk: v  # kept\nEOF"]
    assert block.commands[0].comment == 'says {"x"} "y"'
