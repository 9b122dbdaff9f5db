"""Retry policy tables: which statuses are retried, how Retry-After is read, backoff."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from tmlab.client.retry import backoff_delay, is_retryable_status, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("code", "retry"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (200, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (422, False),
        (600, False),
    ],
)
def test_retryable_statuses(code: int, retry: bool) -> None:
    assert is_retryable_status(code) is retry


def _date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "2"}, 2.0),  # plain dicts: any case
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 3 "}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),  # bad ms: fall back
        ({"retry-after": _date(30)}, 30.0),
        ({"retry-after": _date(-30)}, 0.0),  # a date in the past: retry now
        ({"retry-after": _date(3600)}, 60.0),  # capped
        ({"retry-after": "3600"}, 60.0),
        ({"retry-after-ms": "600000"}, 60.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Mon, 99 Foo 2024 99:99:99 GMT"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)


def test_parse_retry_after_reads_httpx_headers_case_insensitively() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "1500"})) == 1.5


def test_custom_cap() -> None:
    assert parse_retry_after({"retry-after": "30"}, cap=5.0) == 5.0


@pytest.mark.parametrize(
    ("attempt", "rng", "expected"),
    [
        (0, 0.0, 0.5),
        (0, 1.0, 0.375),  # at most 25 % jitter
        (1, 0.0, 1.0),
        (2, 0.0, 2.0),
        (3, 0.0, 4.0),
        (4, 0.0, 8.0),
        (5, 0.0, 8.0),  # capped
        (50, 0.0, 8.0),
        (50, 1.0, 6.0),
    ],
)
def test_backoff_delay(attempt: int, rng: float, expected: float) -> None:
    assert backoff_delay(attempt, rng=lambda: rng) == pytest.approx(expected)


def test_backoff_with_custom_base_and_cap_stays_within_bounds() -> None:
    delays = [backoff_delay(a, base=0.1, cap=1.0) for a in range(10) for _ in range(20)]
    assert all(0.075 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1  # jitter: not all the same
