"""The Matrix bot's account on its homeserver (DESIGN §13.8): whether NCL_MATRIX_* set it up, a logged-in
matrix-nio client for the channel (the configured token, else the login a password made before, kept in
data/matrix/state.json so its device, and with it the meaning of transaction ids, outlives a restart), and
``ncl doctor``'s check of that login, which needs nothing of the channel itself. matrix-nio is imported only when a
login is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host.channels import matrix_wire as wire
from host.errors import NclError
from host.settings import Settings


class MatrixError(NclError):
    """The homeserver refused or could not be reached."""


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "matrix" / "state.json"


def configured(settings: Settings) -> str | None:
    """What is missing for the channel to run ('' when nothing is set at all: the channel is off)."""
    if not settings.matrix_user_id:
        return ""
    if not settings.matrix_homeserver:
        return "NCL_MATRIX_HOMESERVER is not set"
    if not (settings.matrix_access_token or settings.matrix_password):
        return "neither NCL_MATRIX_ACCESS_TOKEN nor NCL_MATRIX_PASSWORD is set"
    return None


async def login(settings: Settings, state: wire.State, device_name: str = "ncl host") -> Any:
    """A logged-in client: the configured token, else the one a password login made before (kept in the state),
    else a password login on the same device as before."""
    from nio import AsyncClient, AsyncClientConfig, LoginResponse, WhoamiResponse

    client = AsyncClient(settings.matrix_homeserver, settings.matrix_user_id,
                         config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False))
    try:
        for token in (settings.matrix_access_token, None if settings.matrix_access_token else state.access_token):
            if not token:
                continue
            client.access_token = token
            who = await client.whoami()
            if isinstance(who, WhoamiResponse):
                if who.user_id != settings.matrix_user_id:
                    raise MatrixError(f"the access token is {who.user_id}'s, not {settings.matrix_user_id}'s")
                client.user_id, client.device_id = who.user_id, who.device_id
                return client
            if settings.matrix_access_token:
                raise MatrixError(f"the homeserver refused NCL_MATRIX_ACCESS_TOKEN: {who.message}")
        if not settings.matrix_password:
            raise MatrixError("no access token works and NCL_MATRIX_PASSWORD is not set")
        client.access_token, client.device_id = "", state.device_id
        done = await client.login(settings.matrix_password, device_name=device_name)
        if not isinstance(done, LoginResponse):
            raise MatrixError(f"login as {settings.matrix_user_id} refused: {done.message}")
        state.access_token, state.device_id = done.access_token, done.device_id
        return client
    except BaseException:
        await client.close()
        raise


async def check_login(settings: Settings) -> str:
    """``ncl doctor``: who the homeserver says the bot is (a password login is undone at once). MatrixError or
    OSError says why not."""
    from nio import WhoamiResponse

    state = wire.State.load(state_path(settings), settings.matrix_user_id)
    kept = state.access_token
    client = await login(settings, state, device_name="ncl doctor")
    try:
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse):
            raise MatrixError(who.message)
        return f"logged in to {settings.matrix_homeserver} as {who.user_id} (device {who.device_id})"
    finally:
        if state.access_token != kept:
            await client.logout()  # the doctor's own login: gone again
        await client.close()
