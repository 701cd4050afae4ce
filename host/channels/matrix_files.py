"""Files through the Matrix channel: one sent to the bot fetched into the session's workspace (``fetched``), one the
agent sends uploaded from its outbox (``uploaded``). Both sides are hostile: the event may lie about the file's size
and its server may trickle it; the runner may have put a link where a file should be."""

from __future__ import annotations

import asyncio
import io
import logging
import mimetypes
import tempfile
from pathlib import Path
from typing import Any

from host.channels import lanes, reply_files
from host.channels import matrix_wire as wire
from host.channels.matrix_login import MatrixError
from host.errors import cut
from host.files import confined
from host.settings import Settings
from host.store.outbox import OutMessage

log = logging.getLogger("host.channels.matrix")
FILES_DIR = "files"  # below the session folder, the runner's workspace: where uploads to the bot are kept
FETCH_S = 60.0  # a file sent to the bot is fetched within this (the sync waits for it)
KINDS = ("m.file", "m.image", "m.audio", "m.video")


async def fetched(client: Any, settings: Settings, folder: Path, content: dict[str, Any], message_id: str) -> str:
    """The row's text: the body (bounded), or for a file where it was stored in the session ``folder``."""
    body = wire.cut(content.get("body"), wire.MAX_TEXT)
    if content.get("msgtype") not in KINDS:
        return body
    info: dict[str, Any] = content["info"] if isinstance(content.get("info"), dict) else {}
    size, url = info.get("size"), content.get("url")
    name = wire.safe_file_name(content.get("filename") or content.get("body"))
    limit = settings.matrix_max_file_bytes
    if not isinstance(url, str) or not url.startswith("mxc://"):
        return f"[a file {name} that could not be fetched: no mxc:// URL] {body}"
    if isinstance(size, int) and size > limit:
        return f"[a file {name} not taken: {size} bytes is over NCL_MATRIX_MAX_FILE_BYTES ({limit})]"
    from nio import DownloadError

    # Streamed to a private file whatever size the event claimed (its own size is the sender's word), in bounded time.
    with tempfile.TemporaryDirectory(prefix="ncl-matrix-") as scratch:
        saved = Path(scratch) / "download"
        try:
            got = await asyncio.wait_for(client.download(mxc=url, save_to=saved), FETCH_S)
        except TimeoutError:
            return f"[a file {name} that could not be fetched: not done within {FETCH_S:g} s]"
        if isinstance(got, DownloadError) or not saved.is_file():
            return f"[a file {name} that could not be fetched: {getattr(got, 'message', 'no body')}]"
        if saved.stat().st_size > limit:
            return f"[a file {name} not taken: over NCL_MATRIX_MAX_FILE_BYTES ({limit} bytes)]"
        data = await lanes.run("matrix", saved.read_bytes)
    relative = Path(FILES_DIR) / f"{message_id.rsplit('-', 1)[1]}-{name}"
    try:
        await lanes.run("matrix", confined.write_beneath, folder, relative, data)
    except (confined.Refused, OSError) as exc:  # the runner's folder: it may have put a link there
        log.warning("matrix: file %s not stored: %s", relative, exc, extra={"action": "matrix_file_refused"})
        return f"[a file {name} not stored: {exc}]"
    caption = f" {body}" if body and body != content.get("filename", body) and body != name else ""
    return f"[file {relative} ({len(data)} bytes, {wire.cut(info.get('mimetype'), 100) or 'unknown type'})]" \
           f"{caption}"


async def uploaded(client: Any, settings: Settings, folder: Path, reply: OutMessage, name: str) -> dict[str, Any]:
    """The message of the file ``name`` that ``reply`` of the session ``folder`` sends (``reply_files.read``: never
    through a link, never out of the reply's own folder), uploaded; or a text saying it was not."""
    from nio import UploadResponse

    try:
        data = await lanes.run("matrix", reply_files.read, folder, reply, name, settings.matrix_max_file_bytes)
    except (confined.Refused, OSError) as exc:
        reply_files.refused("matrix_file_refused", folder.name, reply, name, str(exc))
        return wire.text_content(f"(the file {reply_files.said(name)} was not sent: {cut(str(exc), 500)})")
    size = len(data)
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    done, _ = await client.upload(io.BytesIO(data), content_type=mime, filename=name, filesize=size)
    if not isinstance(done, UploadResponse):
        raise MatrixError(f"uploading {name} failed: {done.message}")
    kind = "m.image" if mime.startswith("image/") else "m.file"
    return {"msgtype": kind, "body": name, "filename": name, "url": done.content_uri,
            "info": {"size": size, "mimetype": mime}}
