"""Every error-body shape servers send maps to the right class, message and fields."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _fake_server import BASE, KEY, Script

from tmlab import Client
from tmlab.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    status_error_from_response,
)


def error_for(status: int, headers: dict[str, str] | None = None, **content: Any) -> APIStatusError:
    """The error a client raises for one answer (no retries)."""
    script = Script(httpx.Response(status, headers=headers, **content))
    client = Client(
        base_url=BASE, api_key=KEY, model="m", max_retries=0, transport=script.transport()
    )
    with pytest.raises(APIStatusError) as info:
        client.chat("Hi")
    return info.value


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (418, APIStatusError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[APIStatusError]) -> None:
    err = error_for(status, json={"error": {"message": "nope"}})
    assert type(err) is cls
    assert err.status_code == status
    if status == 404:  # a 404 on the chat path also says which URL was tried, and the fix
        assert err.message.startswith("nope — tried POST ") and "/v1" in err.message
    else:
        assert err.message == "nope"


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        # a 404 that says nothing about the model: the path is the likely culprit
        ({"error": {"message": "Not Found"}}, True),
        ({"detail": "Not Found"}, True),
        ({"error": {"message": "no route matched"}}, True),  # "m" as part of a word only
        # the server named the model as unknown (OpenAI / the embedded server, a param, vLLM)
        ({"error": {"message": "no such model", "code": "model_not_found"}}, False),
        ({"error": {"message": "unknown", "param": "model"}}, False),
        ({"object": "error", "message": "The model `m` does not exist.", "code": 404}, False),
    ],
)
def test_404_hints_at_the_base_url_only_when_the_model_is_not_named(
    body: dict[str, Any], hint: bool
) -> None:
    err = error_for(404, json=body)
    assert isinstance(err, NotFoundError)
    assert ("check the base URL" in err.message) is hint
    assert ("tried POST http://tm.test/v1/chat/completions" in err.message) is hint


@pytest.mark.parametrize(
    ("body", "message", "etype", "param", "code"),
    [
        (
            {
                "error": {
                    "message": "bad temp",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "invalid_value",
                }
            },
            "bad temp",
            "invalid_request_error",
            "temperature",
            "invalid_value",
        ),
        (
            {"error": {"message": "too many", "type": "rate", "code": 400}},
            "too many",
            "rate",
            None,
            400,
        ),
        (
            {"error": {"message": "m", "type": None, "param": None, "code": None}},
            "m",
            None,
            None,
            None,
        ),
        ({"error": "plain string error"}, "plain string error", None, None, None),
        ({"detail": "Model not found"}, "Model not found", None, None, None),
        (
            {
                "detail": [
                    {
                        "loc": ["body", "temperature"],
                        "msg": "must be <= 2",
                        "type": "less_than_equal",
                    },
                    {"loc": ["body", "n"], "msg": "must be >= 1"},
                ]
            },
            "temperature: must be <= 2; n: must be >= 1",
            None,
            "temperature",
            None,
        ),
        ({"message": "flat message", "code": "E1"}, "flat message", None, None, "E1"),
    ],
)
def test_json_error_shapes(
    body: dict, message: str, etype: str | None, param: str | None, code: str | int | None
) -> None:
    err = error_for(400, json=body)
    assert (err.message, err.type, err.param, err.code) == (message, etype, param, code)
    assert err.body == body
    assert message in str(err)


def test_non_json_html_body() -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    err = error_for(502, text=html, headers={"content-type": "text/html"})
    assert isinstance(err, ServerError)
    assert "502 Bad Gateway" in err.message
    assert err.type is None and err.code is None


def test_empty_body_uses_the_reason_phrase() -> None:
    err = error_for(503, content=b"")
    assert err.message == "Service Unavailable"


def test_request_id_from_headers() -> None:
    err = error_for(500, json={"error": {"message": "x"}}, headers={"x-request-id": "req_42"})
    assert err.request_id == "req_42"
    assert "req_42" in str(err)


def test_key_echoed_by_the_server_is_redacted() -> None:
    err = error_for(401, json={"error": {"message": f"Incorrect API key: {KEY}"}})
    assert KEY not in str(err) and KEY not in repr(err)
    assert "Incorrect API key: ***" in err.message


def test_key_echoed_anywhere_in_the_body_is_redacted_from_every_attribute() -> None:
    echo = {
        "error": {"message": f"bad key {KEY}", "param": KEY, "details": [{"key": KEY}]},
        "request": {"headers": [f"Bearer {KEY}"]},
    }
    err = error_for(401, json=echo)
    assert err.body["error"]["details"] == [{"key": "***"}]
    assert err.body["request"] == {"headers": ["Bearer ***"]}
    assert err.param == "***"
    shown = [str(err), repr(err), err.message, repr(err.body), err.response.text]  # type: ignore[union-attr]
    shown.append(err.response.content.decode())  # type: ignore[union-attr]
    assert all(KEY not in t for t in shown)
    assert err.response.json()["request"] == {"headers": ["Bearer ***"]}  # type: ignore[union-attr]
    text_err = error_for(401, text=f"no such key {KEY}")
    assert text_err.body == "no such key ***" and KEY not in text_err.response.text  # type: ignore[union-attr]


def test_key_cut_by_the_message_length_limit_leaves_no_prefix() -> None:
    for pad in range(480, 500):
        err = error_for(401, text="x" * pad + f" bad key {KEY}")
        assert KEY[:6] not in err.message, pad


def test_status_error_from_response_directly() -> None:
    response = httpx.Response(
        404, json={"detail": "no such model"}, request=httpx.Request("POST", BASE)
    )
    err = status_error_from_response(response)
    assert isinstance(err, NotFoundError)
    assert err.request is response.request and err.response is response
