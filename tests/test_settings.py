"""Settings: arguments > the session (%tmconfig) > environment > defaults; keys never shown."""

from __future__ import annotations

import httpx
import pytest

import tmlab
from tmlab.client.settings import DEFAULT_BASE_URL, resolve_settings, session

KEY = "tm-sk-SETTINGSSECRET-987654321"


def test_precedence_arguments_then_session_then_environment() -> None:
    env = {
        "TENSORMESH_SERVERLESS_BASE_URL": "https://env.example/v1",
        "TMLAB_MODEL": "env-model",
        "TENSORMESH_INFERENCE_API_KEY": "env-key",
    }
    s = resolve_settings(environ=env)
    assert (s.base_url, s.model, s.api_key) == ("https://env.example/v1", "env-model", "env-key")
    session.update(base_url="https://session.example/v1", model="session-model")
    s = resolve_settings(environ=env)
    assert (s.base_url, s.model) == ("https://session.example/v1", "session-model")
    s = resolve_settings("https://arg.example/v1", model="arg-model", environ=env)
    assert (s.base_url, s.model) == ("https://arg.example/v1", "arg-model")


def test_key_from_a_named_variable_only() -> None:
    env = {"MY_KEY": KEY, "TENSORMESH_INFERENCE_API_KEY": "other"}
    session.update(key_env="MY_KEY")
    s = resolve_settings(environ=env)
    assert s.api_key == KEY and s.base_url == DEFAULT_BASE_URL
    described = session.describe(environ=env)
    assert described["key"] == "set (from MY_KEY)"
    assert KEY not in repr(session) and KEY not in str(described)
    with pytest.raises(tmlab.ParameterError, match="unknown setting"):
        session.update(api_key=KEY)


def test_a_prompted_key_is_used_and_never_shown() -> None:
    session.prompt_key(KEY)
    assert resolve_settings(environ={}).api_key == KEY
    assert session.describe(environ={})["key"] == "set (from the prompt)"
    assert KEY not in repr(session)
    client = tmlab.Client()
    assert KEY not in repr(client)


def test_local_forces_the_embedded_server_despite_a_key_in_the_environment() -> None:
    session.update(local=True)
    s = resolve_settings(environ={"TENSORMESH_INFERENCE_API_KEY": "k"})
    assert s.local and s.api_key is None
    assert session.describe(environ={"TENSORMESH_INFERENCE_API_KEY": "k"})["key"] == "not set"
    session.update(base_url="http://127.0.0.1:9/v1")  # a base URL ends "local"
    assert not session.local


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("https://serverless.tensormesh.ai", "https://serverless.tensormesh.ai/v1"),
        ("https://serverless.tensormesh.ai/", "https://serverless.tensormesh.ai/v1"),
        ("https://serverless.tensormesh.ai/v1/", "https://serverless.tensormesh.ai/v1"),
        ("http://127.0.0.1:8000/openai/v1", "http://127.0.0.1:8000/openai/v1"),
    ],
)
def test_a_base_url_without_a_path_gets_v1(given: str, used: str) -> None:
    env = {"TENSORMESH_SERVERLESS_BASE_URL": given}
    assert resolve_settings(environ=env).base_url == used
    assert resolve_settings(given, environ={}).base_url == used
    session.update(base_url=given)
    assert session.base_url == used


def test_a_404_on_the_chat_path_says_which_url_was_tried() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(404, json={"detail": "Not Found"})
    )
    client = tmlab.Client(base_url="https://host.example/api", model="m", transport=transport)
    with pytest.raises(tmlab.NotFoundError) as info:
        client.chat("hi")
    message = str(info.value)
    assert "https://host.example/api/chat/completions" in message and "/v1" in message


def test_bad_settings_are_refused_before_anything_changes() -> None:
    with pytest.raises(tmlab.ParameterError, match="base_url"):
        session.update(model="kept", base_url="ftp://nope")
    assert session.model is None
    with pytest.raises(tmlab.ParameterError, match="prices"):
        session.update(prices={"input": -1})
    session.update(prices={"input": 0.3, "output": 1.2})
    assert session.prices == {"input": 0.3, "output": 1.2}


def test_client_with_no_arguments_follows_the_session() -> None:
    session.update(base_url="https://session.example/v1", model="session-model")
    client = tmlab.Client()
    assert client.base_url == "https://session.example/v1" and client.model == "session-model"


def test_embedded_says_whether_the_client_talks_to_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Notebooks check the embedded server's own facts (same seed, same answer; raw logprobs)
    only where ``client.embedded`` is True."""
    for name in ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert tmlab.Client().embedded and tmlab.AsyncClient().embedded
    assert not tmlab.Client(base_url="http://127.0.0.1:8000/v1").embedded  # a server of yours
    assert not tmlab.Client(api_key="k").embedded  # Tensormesh
    monkeypatch.setenv("TENSORMESH_INFERENCE_API_KEY", "k")
    assert not tmlab.Client().embedded
    session.update(local=True)  # %tmconfig local
    assert tmlab.Client().embedded
