"""``ncl image``: the agent-runner image the docker runtime starts (DESIGN §8)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from host.cli.app import App, pass_app
from host.cli.output import emit, fields, json_option
from host.cli.terminal import say
from host.runtimes import image


@click.group("image")
def image_cli() -> None:
    """The agent-runner image (NCL_IMAGE)."""


@image_cli.command("build")
@click.option("--base", default=image.DEFAULT_BASE, show_default=True, metavar="IMAGE",
              help="Base image with python3 and venv; ncl-base:bookworm (scripts/build-base-image.sh) works offline.")
@click.option("--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Dockerfile to use instead of the project's.")
@click.option("--tag", default=None, metavar="IMAGE", help="Tag to build (default NCL_IMAGE).")
@json_option
@pass_app
def build(app: App, base: str, dockerfile: Path | None, tag: str | None, as_json: bool) -> None:
    """Build wheels of ncl and its dependencies on this machine, then the image from them with no network.

    Progress goes to stderr; the result (image, id, base, and the versions on its labels) to stdout.
    """
    started = time.monotonic()
    built = image.build(tag or app.settings.image, base, dockerfile, progress=lambda line: say(line, err=True))
    data = built.to_json()
    emit(as_json, data, lambda: fields(
        {**data, "versions": built.versions.describe(), "seconds": round(time.monotonic() - started, 1)},
        [("image", "image"), ("id", "id"), ("base", "base"), ("versions", "versions"), ("seconds", "seconds")]))
