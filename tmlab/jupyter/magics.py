"""The IPython magics: ``%%tmchat``, ``%tmconfig``, ``%tmmodels``, ``%tmhistory``.

``%load_ext tmlab`` calls :func:`load_ipython_extension`. The magics are a thin front end:
the flags come from :mod:`tmlab.jupyter.flags` (generated from the parameter table), the
request goes through :class:`tmlab.Client` (which follows the session settings of
``%tmconfig`` and logs every request in the history, here with ``source="magic"``), the
answer streams through :class:`~tmlab.jupyter.live.LiveAnswer`, errors become one line
(:func:`tmlab.jupyter.explain.error_line`).

How the answer is shown once: the live output (a display handle) receives the final view
at the end, and the cell's value, the ChatResult, skips its own display that one time (a
one-shot ``_ipython_display_``), so ``_`` and ``Out[n]`` hold the result while the screen
shows the answer once. Displaying the result later (``res`` in another cell) shows it
normally.
"""

from __future__ import annotations

import argparse
import getpass
import html
import os
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Bool, Dict, Float, Unicode, observe

from tmlab.jupyter.explain import error_line
from tmlab.jupyter.flags import FlagError, Flags, LineParser, help_text, parse_flags
from tmlab.jupyter.live import LiveAnswer, MarkdownView, result_view
from tmlab.jupyter.magic_branches import continued_note, send
from tmlab.jupyter.template import interpolate, unnamed_notice

if TYPE_CHECKING:
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell

    from tmlab.result import ChatResult

__all__ = ["TmChat", "TmchatError", "TmchatInterrupted", "load_ipython_extension"]


class TmchatError(Exception):
    """An error the magics report as one line (IPython shows ``_render_traceback_``)."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class TmchatInterrupted(KeyboardInterrupt):
    """Ctrl-C while ``%%tmchat`` waited: still an interrupt (so "Run all" stops), in one line."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _with_doc(doc: str) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        fn.__doc__ = doc
        return fn

    return deco


class _ShownOnce:
    """A one-shot ``_ipython_display_``: the live output already shows this result.

    IPython's display hook calls it for the cell's value; it displays nothing that time,
    removes itself, and from then on the result displays as usual. Called in another
    execution (the value of a cell that ran the magic from code), it displays normally.
    """

    def __init__(self, res: ChatResult | pd.DataFrame, execution_count: int) -> None:
        self.res = res
        self.execution_count = execution_count

    def __call__(self) -> None:
        self.res.__dict__.pop("_ipython_display_", None)
        shell = _shell()
        if shell is None or shell.execution_count != self.execution_count:
            display(self.res)


def _shell() -> InteractiveShell | None:
    from IPython.core.getipython import get_ipython

    return get_ipython()


_CONFIG_WORD = re.compile(r"(\w+)(?:=(.*))?", re.DOTALL)


@magics_class
class TmChat(Magics):
    """tmlab's magics. Settings are traits: ``%config TmChat.model = "..."`` works.

    Setting a trait changes the session settings (:data:`tmlab.client.settings.session`) that
    ``tmlab.Client()``, the widget and sweeps read too.
    """

    model = Unicode(None, allow_none=True, help="The model to ask (%tmconfig model=).").tag(
        config=True
    )
    base_url = Unicode(
        None, allow_none=True, help="The server's base URL (%tmconfig base_url=)."
    ).tag(config=True)
    key_env = Unicode(
        None, allow_none=True, help="The environment variable holding the API key."
    ).tag(config=True)
    local = Bool(False, help="Use the embedded local model server (%tmconfig local).").tag(
        config=True
    )
    history = Unicode(None, allow_none=True, help="The history database: a path, or 'off'.").tag(
        config=True
    )
    prices = Dict(
        None, allow_none=True, help="USD per million tokens: {'input': .., 'output': ..}."
    ).tag(config=True)
    update_interval = Float(
        0.1, help="Seconds between redraws of a streaming answer (≤ 10 a second by default)."
    ).tag(config=True)

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self.turns: list[dict[str, str]] = []
        """The conversation so far (user and assistant messages), for ``--continue``."""
        self._pushing = True

    @observe("model", "base_url", "key_env", "local", "history", "prices")
    def _push_setting(self, change: Any) -> None:
        from tmlab.client.settings import session

        if not getattr(self, "_pushing", True):
            return
        value = change["new"]
        if change["name"] == "prices" and value is not None:
            value = dict(value)
        session.update(**{change["name"]: value})

    # -- %%tmchat -------------------------------------------------------------------------

    @line_cell_magic
    @_with_doc(help_text())
    def tmchat(self, line: str, cell: str | None = None) -> Any:
        try:
            flags = parse_flags(line)
        except FlagError as exc:
            raise TmchatError(f"%%tmchat: {exc}") from None
        if flags.branch is not None:  # `%tmchat --branch ID:POS` on one line works too
            if cell is not None and cell.strip():
                raise TmchatError(
                    "%%tmchat --branch continues row ID's own conversation: leave the cell "
                    "body empty (or use the one-line %tmchat --branch ID:POS[:TOKEN])"
                )
            return self._shown(flags, self._chat(flags, []))
        if cell is None:
            raise TmchatError(
                "%tmchat on one line is for --branch ID:POS[:TOKEN]; to ask something, "
                "use %%tmchat with the message in the cell below"
            )
        prompt = interpolate(cell, self._namespace()).strip()
        notice = unnamed_notice(cell, self._namespace())
        if notice:  # {audience} with no audience: sent as written, and said so in one line
            display(MarkdownView(f"<small><i>{html.escape(notice)}</i></small>", notice))
        if not prompt:
            raise TmchatError("%%tmchat: the cell is empty; write the message below %%tmchat")
        if flags.new:
            self.turns = []
        if flags.is_sweep:
            return self._sweep(flags, prompt)
        user = {"role": "user", "content": prompt}
        messages = [*self.turns, user] if flags.continue_ else [user]
        res = self._chat(flags, messages)
        self.turns += [user, {"role": "assistant", "content": res.full_text}]
        return self._shown(flags, res)

    def _shown(self, flags: Flags, res: ChatResult) -> ChatResult:
        """The cell's value: stored in ``--out``, shown once (by the live output)."""
        if flags.out:
            self._namespace()[flags.out] = res
        shell = self.shell
        if shell is not None:
            res._ipython_display_ = _ShownOnce(res, shell.execution_count)  # type: ignore[attr-defined]
        return res

    def _namespace(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def _chat(self, flags: Flags, messages: list[dict[str, str]]) -> ChatResult:
        """Send one request, streaming into a live output; errors become one line."""
        from tmlab.client import Client
        from tmlab.client.history import request_source
        from tmlab.client.settings import session

        live = LiveAnswer(show_reasoning="reasoning" in flags.show, interval=self.update_interval)
        live.start()
        try:
            with request_source("magic"), Client() as client:
                res = send(client, flags, messages, live.on_delta if flags.stream else None)
        except KeyboardInterrupt as exc:
            self._interrupted(exc, flags, live)
        except Exception as exc:
            partial = getattr(exc, "partial", None)
            if partial is not None:
                note = "INCOMPLETE: the stream broke off; this is the partial answer"
                live.finish(result_view(partial, flags.show, note=note))
                if flags.out:
                    self._namespace()[flags.out] = partial
            else:
                live.finish(MarkdownView("", ""))
            if flags.debug:
                raise
            raise TmchatError(error_line(exc)) from None
        live.finish(result_view(res, flags.show, prices=session.prices, note=continued_note(res)))
        if "logprobs" in flags.show:
            self._show_logprobs(res)
        if "trace" in flags.show:
            self._show_trace(res)
        return res

    def _interrupted(self, exc: KeyboardInterrupt, flags: Flags, live: LiveAnswer) -> NoReturn:
        """Keep the partial answer on screen and in ``--out``, then stop the cell."""
        partial = getattr(exc, "partial", None)
        where = []
        if partial is not None and flags.out:
            self._namespace()[flags.out] = partial
            where.append(flags.out)
        hid = getattr(exc, "history_id", None)
        if hid is not None:
            where.append(f"history id {hid}")
        kept = f"; kept in {' and '.join(where)}" if where else ""
        note = f"INTERRUPTED: partial answer (complete=False){kept}"
        if partial is not None:
            live.finish(result_view(partial, flags.show, note=note))
        else:
            live.flush()
            view = MarkdownView(
                "\n\n".join(p for p in (live.text, f"<small><i>{note}</i></small>") if p),
                "\n".join(p for p in (live.text, note) if p),
            )
            live.finish(view)
        if flags.debug:
            raise exc
        raise TmchatInterrupted(f"Interrupted: the request was stopped{kept}") from None

    def _show_logprobs(self, res: ChatResult) -> None:
        from tmlab.display import style_logprobs

        df = res.logprobs_frame()
        if len(df):
            display(style_logprobs(df))
        else:
            display(MarkdownView("*no logprobs in the answer*", "no logprobs in the answer"))

    def _show_trace(self, res: ChatResult) -> None:
        from tmlab.frames import stage_summary

        df = stage_summary(res)
        if len(df):
            display(df)
        else:
            note = df.attrs["notes"]
            display(MarkdownView(f"*{note}*", note))

    def _sweep(self, flags: Flags, prompt: str) -> pd.DataFrame:
        """Comma lists / --repeat: a small sweep; shows its summary, returns its rows."""
        from tmlab.analysis.summary import summarize
        from tmlab.analysis.sweeps import sweep

        messages: list[dict[str, str]] = [{"role": "user", "content": prompt}]
        if flags.continue_:
            messages = [*self.turns, *messages]
        try:
            df = sweep(
                messages,
                grid=flags.grid,
                repeats=flags.repeat or 1,
                models=flags.models or flags.model,
                system=flags.system,
                **flags.params,
            )
        except Exception as exc:
            if flags.debug:
                raise
            raise TmchatError(error_line(exc)) from None
        from tmlab.display import collapsed_html, style_frame

        display(style_frame(summarize(df), more="tmlab.summarize(df) is the whole summary"))
        if flags.out:  # the rows go to --out; the screen keeps the summary
            self._namespace()[flags.out] = df
            rows = f"{len(df)} rows (one per answer) are in `{flags.out}`, a DataFrame"
            display(MarkdownView(f"<small>{rows}</small>", rows))
        else:  # the rows, collapsed: a click away, not a page of scrolling
            display(collapsed_html(df, "add --out NAME to keep them as a DataFrame"))
        shell = self.shell
        if shell is not None:  # the cell's value (_ , Out[n]) is the frame, not shown again
            df._ipython_display_ = _ShownOnce(df, shell.execution_count)  # type: ignore[attr-defined]
        return df

    # -- %tmconfig ------------------------------------------------------------------------

    @line_magic
    def tmconfig(self, line: str) -> Any:
        """%tmconfig [model=NAME] [base_url=URL] [key=env:VAR | key] [local] [history=off|PATH]
        [prices=IN,OUT[,CACHED]] [parallel=N] [max_tokens=N|off]

        Without arguments: the settings in force (the key only as "set (from VAR)" or "not
        set"). With arguments: change them for this session; tmlab.Client(), the widget and
        sweeps follow. ``key=env:VAR`` reads the key from the environment variable VAR; a bare
        ``key`` asks for it at a hidden prompt. A key is never typed into a cell. ``local``
        (or ``local=off``) switches to (from) the embedded local model. ``max_tokens=N`` is
        the length limit %%tmchat, the Explorer, sweeps and branches send when none is given
        (512 by default; ``off`` or ``none``: no limit; ``max_tokens=`` back to the default
        or TMLAB_MAX_TOKENS). ``reset`` forgets all.
        """
        from tmlab.client.settings import session

        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise TmchatError(f"%tmconfig: cannot split the arguments: {exc}") from None
        for word in words:
            if word == "reset":
                session.reset()
                self._sync_from_session()
                continue
            self._config_word(word)
        return _settings_frame(_server_slots(session.describe()))

    def _config_word(self, word: str) -> None:
        from tmlab.client.settings import session

        m = _CONFIG_WORD.fullmatch(word)
        name, value = (m.group(1), m.group(2)) if m else (word, None)
        if name == "key":
            self._config_key(value)
            return
        try:
            if name == "local":
                if value is None or value.lower() in ("on", "true", "yes", "1"):
                    self.local = True
                elif value.lower() in ("off", "false", "no", "0"):
                    self.local = False
                else:
                    raise TmchatError("%tmconfig: local takes no value, or local=off")
            elif name in ("model", "base_url", "history") and value is not None:
                setattr(self, name, value or None)
            elif name == "prices" and value is not None:
                self.prices = _prices(value)
            elif name == "parallel" and value is not None:
                session.update(parallel=value or None)
            elif name == "max_tokens" and value is not None:
                session.update(max_tokens=value or None)
            else:
                raise TmchatError(
                    f"%tmconfig: unknown setting {name!r}; use model=NAME, base_url=URL, "
                    "key=env:VAR, key, local, history=off|PATH, prices=IN,OUT[,CACHED], "
                    "parallel=N, max_tokens=N|off, reset"
                )
        except TmchatError:
            raise
        except Exception as exc:  # a ParameterError from the session, a TraitError
            raise TmchatError(f"%tmconfig: {error_line(exc)}") from None
        finally:
            self._sync_from_session()  # e.g. `local` clears base_url in the session

    def _config_key(self, value: str | None) -> None:
        from tmlab.client.settings import session

        if value is None:  # bare `key`: ask at a hidden prompt
            typed = getpass.getpass("API key (hidden; kept in memory for this session): ")
            try:
                session.prompt_key(typed)
            except Exception as exc:
                raise TmchatError(f"%tmconfig: {error_line(exc)}") from None
            self._sync_from_session()
            return
        if not value.startswith("env:") or not value[4:]:
            # Never echo the value: it may be the key itself.
            raise TmchatError(
                "%tmconfig: key= takes env:VAR (the environment variable that holds the key) "
                "or nothing (bare `key` asks at a hidden prompt); a key typed into a cell is "
                "saved with the notebook: remove it from this cell"
            )
        var = value[4:]
        try:
            self.key_env = var
        except Exception as exc:
            raise TmchatError(f"%tmconfig: {error_line(exc)}") from None
        if not os.environ.get(var):
            print(f"%tmconfig: note: the environment variable {var} is not set")

    def _sync_from_session(self) -> None:
        from tmlab.client.settings import session

        self._pushing = False  # set the traits without the observer writing them back
        try:
            for name in ("model", "base_url", "key_env", "local", "history"):
                setattr(self, name, getattr(session, name))
            self.set_trait("prices", dict(session.prices) if session.prices else None)
        finally:
            self._pushing = True

    # -- %tmmodels, %tmhistory --------------------------------------------------------------

    @line_magic
    def tmmodels(self, line: str) -> pd.DataFrame:
        """%tmmodels — the models the server serves (GET /models), as a DataFrame; a server
        that says what it is doing (the embedded one: GET /stats) gets a line with its load."""
        import pandas as pd

        from tmlab.client import Client
        from tmlab.display import stats_line

        try:
            with Client() as client:
                models = client.models()
                stats = client.server_stats()
        except Exception as exc:
            if "--debug" in line.split():
                raise
            raise TmchatError(error_line(exc)) from None
        df = pd.DataFrame(models)
        if stats is not None:  # a server that says what it is doing (the embedded one)
            df.attrs["stats"] = stats
            display({"text/plain": "server: " + stats_line(stats)}, raw=True)
        return df

    @line_magic
    def tmhistory(self, line: str) -> pd.DataFrame:
        """%tmhistory [-n N] [--model M] [--source client|magic|explorer|sweep]

        The logged requests as a DataFrame, oldest first (see tmlab.client.history).
        """
        from tmlab.client.history import history

        parser = LineParser(prog="%tmhistory", add_help=False, exit_on_error=False)
        parser.add_argument("-n", type=int, default=None)
        parser.add_argument("--model", default=None)
        parser.add_argument("--source", default=None)
        try:
            args = parser.parse_args(shlex.split(line))
            return history(n=args.n, model=args.model, source=args.source)
        except argparse.ArgumentError as exc:
            raise TmchatError(f"%tmhistory: {exc}") from None
        except (FlagError, ValueError) as exc:
            raise TmchatError(f"%tmhistory: {error_line(exc)}") from None


def _prices(value: str) -> dict[str, float]:
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or any(n < 0 for n in numbers):
        raise TmchatError(
            "%tmconfig: prices=IN,OUT in USD per million tokens (e.g. prices=0.3,1.2; "
            "a third number prices cached input tokens)"
        )
    prices = {"input": numbers[0], "output": numbers[1]}
    if len(numbers) == 3:
        prices["cached_input"] = numbers[2]
    return prices


def _server_slots(settings: dict[str, Any]) -> dict[str, Any]:
    """``parallel`` of the server the session talks to, when it is not the embedded one: what
    its ``/v1/models`` says (tmlab's and llama.cpp's servers), else that it is unknown."""
    if settings.get("local"):
        return settings
    from tmlab.client import Client

    slots = None
    try:
        with Client(timeout=3.0, max_retries=0) as client:
            for entry in client.models():
                value = entry.get("parallel") if isinstance(entry, dict) else None
                if isinstance(value, int) and not isinstance(value, bool):
                    slots = value
                    break
    except Exception:  # an unreachable server: %tmconfig still shows the settings
        slots = None
    shown = f"{slots} (from its /v1/models)" if slots is not None else "unknown (not said)"
    return {**settings, "parallel": shown}


def _settings_frame(settings: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    shown = {k: ("" if v is None else str(v)) for k, v in settings.items()}
    return pd.DataFrame({"value": shown}).rename_axis("setting")


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register the magics (``%load_ext tmlab``)."""
    magics = TmChat(shell=ipython)
    ipython.register_magics(magics)
