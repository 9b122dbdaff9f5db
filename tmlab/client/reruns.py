"""Send a logged request again: a caller of both the history (the store) and the client.

The history only stores rows and the client only writes to it; reading a row back and sending
it again lives here, above both, so that neither imports the other's caller. (The module is
``reruns`` so that importing it never hides the function ``tmlab.rerun``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tmlab.client import Client
from tmlab.client.history import get_row
from tmlab.client.settings import Settings
from tmlab.errors import ParameterError
from tmlab.params import PARAMS

if TYPE_CHECKING:
    from tmlab.result import ChatResult

__all__ = ["rerun"]


def rerun(id: int, *, client: Client | None = None, **overrides: Any) -> ChatResult:
    """Send logged request ``id`` again (``overrides`` change some parameters).

    Keys are never logged, so it goes to ``client``, else to the row's server with the key
    in force now; a row from a server on this machine (such as the embedded one, whose port
    changes) goes to the server the session uses now. Returns the new ChatResult.
    """
    row = get_row(id)
    if row is None:
        raise ParameterError("id", f"no request {id} in the history", "an id of tmlab.history()")
    params = dict(row["params"] or {})
    params.update(overrides)
    # Parameters the table does not know (sent through extra_body) go back the same way.
    extra = {k: params.pop(k) for k in list(params) if k not in PARAMS}
    if client is not None:
        return client.chat(row["messages"], model=row["model"], extra_body=extra or None, **params)
    url = row["base_url"]
    local = url is None or Settings(base_url=url, api_key=None, model=None).loopback
    with Client() if local else Client(base_url=url) as own:
        return own.chat(row["messages"], model=row["model"], extra_body=extra or None, **params)
