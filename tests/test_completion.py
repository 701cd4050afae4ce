"""``ncl completion bash|zsh|fish`` (issue 15.7): the script it prints, sourced in a real bash, completes at TAB
through a real ``ncl`` process, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from processes import Env, ncl_command


def completed(env: Env, line: str) -> list[str]:
    """What bash offers at TAB after ``line`` (completing its last word, '' after a trailing space), with the
    script ``ncl completion bash`` printed sourced as ~/.bashrc would."""
    words = line.split(" ")
    bin_dir = str(Path(ncl_command()[0]).parent)
    script = (f'eval "$(ncl completion bash)"\n'
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              '_ncl_completion ncl\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], cwd=env.root, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**env.vars, "PATH": bin_dir + os.pathsep + env.vars.get("PATH", "")})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [word for word in done.stdout.splitlines() if word]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    if len(ncl_command()) != 1:
        pytest.skip("no ncl console script next to this Python: the completion script calls 'ncl' back")
    return Env(tmp_path)


def test_bash_completes_a_command_its_subcommands_and_their_options(env: Env) -> None:
    assert completed(env, "ncl ta") == ["tasks"]
    assert completed(env, "ncl s") == ["scheduled-task", "sessions", "status"]
    assert "run-now" in completed(env, "ncl tasks ")
    assert completed(env, "ncl tasks list --a") == ["--all"]
    assert completed(env, "ncl completion ") == ["bash", "zsh", "fish"]


def test_completing_runs_no_command_and_writes_nothing(env: Env) -> None:
    assert completed(env, "ncl groups create demo --ch") == ["--channel"]
    assert not env.data_dir.exists()


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F _ncl_completion ncl"),
                                               ("zsh", "#compdef ncl"),
                                               ("fish", "complete --no-files --command ncl")])
def test_each_shell_gets_its_script_calling_ncl_back(env: Env, shell: str, marker: str) -> None:
    script = env.ok("completion", shell)
    assert marker in script and f"_NCL_COMPLETE={shell}_complete" in script


def test_an_unknown_shell_is_refused_in_one_line(env: Env) -> None:
    done = env.ncl("completion", "tcsh")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in done.stderr
