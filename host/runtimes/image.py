"""``ncl image build`` (DESIGN §8, §12.12): wheels of the project and of every dependency are built on the host,
where pip has its cache and index, into a fresh build context; the Dockerfile installs them with no network,
and the engine builds with ``network_mode="none"``. So ``--base ncl-base:bookworm`` builds fully offline.

The image is labelled with ncl's version and the inbound and outbound schema versions (``ncl.version``,
``ncl.schema.inbound``, ``ncl.schema.outbound``); a host starts runners only from an image whose schema labels are
its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from host.errors import NclError
from schemas.ddl import latest_version

DEFAULT_BASE = "python:3.11-slim-bookworm"
PACKAGES = ("host", "agent_runner", "schemas")
Progress = Callable[[str], None]


class ImageError(NclError):
    """The image could not be built; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Versions:
    """What an image was built for (its labels) or what this host is: the ncl version and the schema versions of
    the inbound.db a runner reads and the outbound.db it writes. None: the image carries no such label."""

    ncl: str | None
    inbound: int | None
    outbound: int | None

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Versions:
        def number(key: str) -> int | None:
            text = labels.get(key, "")
            return int(text) if text.isdigit() else None

        return cls(labels.get("ncl.version"), number("ncl.schema.inbound"), number("ncl.schema.outbound"))

    def labels(self) -> dict[str, str]:
        return {"ncl.version": str(self.ncl), "ncl.schema.inbound": str(self.inbound),
                "ncl.schema.outbound": str(self.outbound)}

    def describe(self) -> str:
        if (self.ncl, self.inbound, self.outbound) == (None, None, None):
            return "unknown versions (no ncl labels)"
        return f"ncl {self.ncl or '?'}, schemas inbound v{self.inbound or '?'}/outbound v{self.outbound or '?'}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Built:
    image: str
    id: str
    base: str
    versions: Versions  # what its labels say

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def host_versions() -> Versions:
    """This host's versions: the labels ``ncl image build`` puts on an image, and what a runner image must match."""
    try:
        version = metadata.version("ncl-agent-host")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    return Versions(version, latest_version("inbound"), latest_version("outbound"))


def mismatch(tag: str, found: Versions) -> str | None:
    """Why runners must not start from ``tag`` built for ``found`` (None: its schema versions are this host's).
    An image without the labels (built by something else) never matches."""
    host = host_versions()
    if (found.inbound, found.outbound) == (host.inbound, host.outbound):
        return None
    return f"{tag} was built for {found.describe()} but this host is {host.describe()}; " \
        "rebuild it with 'ncl image build'"


class ImageRefused(NclError):
    """Runners cannot start from the image: the engine lacks it, or it was built for other schema versions."""


def source_root() -> Path:
    """The checkout this ncl runs from (an editable install), else the current directory."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "pyproject.toml").is_file() and (candidate / "host").is_dir():
            return candidate
    raise ImageError("no ncl source checkout found (run 'ncl image build' from the repository)")


def source_digest(root: Path, dockerfile: Path, base: str) -> str:
    """A hash of everything an image is built from, stored as its ``ncl.source`` label: an image whose label
    matches the checkout is current (the docker tests reuse it instead of rebuilding)."""
    digest = hashlib.sha256(f"{base}\0".encode())
    files = sorted(path for package in PACKAGES for path in (root / package).rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts)
    for path in [root / "pyproject.toml", *files]:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(dockerfile.read_bytes())
    return digest.hexdigest()[:16]


def is_current(client: Any, tag: str, base: str) -> bool:
    """Whether ``tag`` exists and was built from this checkout (and its Dockerfile) on ``base``."""
    root = source_root()
    found = _get(client, tag)
    if found is None:
        return False
    return bool((found.labels or {}).get("ncl.source") == source_digest(root, root / "Dockerfile", base))


def build_wheels(root: Path, wheels: Path, progress: Progress) -> None:
    """``wheels/project`` gets ncl's wheel, ``wheels/deps`` everything it needs, so the image caches them apart."""
    target = wheels / "all"
    progress(f"building wheels of {root} and its dependencies")
    command = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-w", str(target), str(root)]
    errors, last = [], "no output"
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL) as pip:
        assert pip.stdout is not None
        for raw in pip.stdout:  # streamed as pip goes: resolving and fetching can take a while
            last = raw.rstrip() or last
            if last.startswith(("Collecting ", "Saved ", "Building wheel", "ERROR")):
                progress(last)
            if last.startswith("ERROR"):
                errors.append(last)
    if pip.returncode != 0:
        raise ImageError(f"pip wheel failed: {(errors or [last])[0]}")
    (wheels / "project").mkdir()
    for wheel in target.glob("ncl_agent_host-*.whl"):
        wheel.rename(wheels / "project" / wheel.name)
    target.rename(wheels / "deps")


class EngineDown(NclError):
    """The docker engine did not answer a ping; ``reason`` is the first line of why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"docker engine not reachable ({reason})")
        self.reason = reason


def connect_engine(timeout: float) -> Any:
    """A client of an engine that answered a ping (the caller closes it): for this command, the runtime probe and
    ``ncl doctor`` alike."""
    client = None
    try:
        import docker  # imported here: the SDK is slow to import and most ncl commands never need it

        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # the SDK raises many kinds; any of them means "not reachable"
        if client is not None:
            client.close()
        raise EngineDown(str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__) from None
    return client


def _get(client: Any, tag: str) -> Any:
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def image_id(client: Any, tag: str) -> str | None:
    found = _get(client, tag)
    return None if found is None else str(found.id)


def inspect(client: Any, tag: str) -> tuple[Versions | None, str | None]:
    """The versions ``tag`` was built for (None: the engine does not have it), and why runners cannot start from
    it (missing, or built for other schema versions), or None when they can."""
    found = _get(client, tag)
    if found is None:
        return None, f"{tag} missing (build it with 'ncl image build')"
    versions = Versions.of(found.labels or {})
    return versions, mismatch(tag, versions)


def check_runner_image(client: Any, tag: str) -> None:
    """Raise ``ImageRefused`` (one line naming ``ncl image build``) unless runners may start from ``tag``."""
    problem = inspect(client, tag)[1]
    if problem is not None:
        raise ImageRefused(f"image {problem}")


def _ensure_base(client: Any, base: str, progress: Progress) -> None:
    """The base must be local: the build runs without network. A missing public one is pulled once."""
    import docker.errors

    if image_id(client, base) is not None:
        return
    progress(f"pulling base image {base}")
    try:
        client.images.pull(base)
    except docker.errors.DockerException:
        hint = f"run scripts/build-base-image.sh or docker pull {base}"
        raise ImageError(f"base image {base} not found; {hint}") from None


def _engine_build(client: Any, ctx: Path, tag: str, base: str, labels: dict[str, str], progress: Progress) -> None:
    stream = client.api.build(path=str(ctx), dockerfile="Dockerfile", tag=tag, buildargs={"BASE": base},
                              labels=labels, network_mode="none", rm=True, forcerm=True, pull=False, decode=True)
    for chunk in stream:
        if "error" in chunk:
            raise ImageError(f"image build failed: {str(chunk['error']).strip().splitlines()[-1]}")
        for line in str(chunk.get("stream", "")).splitlines():
            if line.strip():
                progress(line.rstrip())


def build(tag: str, base: str = DEFAULT_BASE, dockerfile: Path | None = None,
          progress: Progress = lambda line: None) -> Built:
    import docker.errors

    root = source_root()
    dockerfile = dockerfile or root / "Dockerfile"
    if not dockerfile.is_file():
        raise ImageError(f"no Dockerfile at {dockerfile}")
    try:
        client = connect_engine(timeout=30)
    except EngineDown as down:
        raise ImageError(f"{down}; start it (scripts/docker-engine.sh)") from None
    try:
        _ensure_base(client, base, progress)
        previous = image_id(client, tag)
        with tempfile.TemporaryDirectory(prefix="ncl-image-") as ctx:
            shutil.copyfile(dockerfile, Path(ctx) / "Dockerfile")
            build_wheels(root, Path(ctx) / "wheels", progress)
            progress(f"building {tag} on {base}")
            versions = host_versions()
            labels = {"ncl.source": source_digest(root, dockerfile, base), "ncl.base": base, **versions.labels()}
            _engine_build(client, Path(ctx), tag, base, labels, progress)
        built = Built(tag, image_id(client, tag) or "", base, versions)
        if previous and previous != built.id:
            # The image this one replaces would linger untagged after every rebuild; a container using it keeps it.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous)
        return built
    finally:
        client.close()
