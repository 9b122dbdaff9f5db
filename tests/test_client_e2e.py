"""tmlab.Client against the embedded server: real socket, real model."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

import tmlab

pytestmark = pytest.mark.slow

PROMPT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def client(local_server):  # type: ignore[no-untyped-def]
    with tmlab.Client(base_url=local_server.base_url) as c:
        yield c


def test_stream_reassembles_to_the_same_result_as_non_streaming(client: tmlab.Client) -> None:
    params = dict(temperature=0.8, seed=11, max_tokens=24, logprobs=True, top_logprobs=3)
    plain = client.chat(PROMPT, **params)
    seen: list[str] = []
    streamed = client.chat(PROMPT, stream=True, on_delta=lambda d: seen.append(d.text), **params)
    assert plain.text and streamed.text == plain.text
    assert "".join(seen) == plain.text
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.usage.completion_tokens == plain.usage.completion_tokens
    a, b = plain.logprobs_frame(), streamed.logprobs_frame()
    assert list(a["token"]) == list(b["token"])
    assert a["logprob"].tolist() == pytest.approx(b["logprob"].tolist(), abs=1e-6)
    assert streamed.timing.ttft_s is not None
    assert streamed.timing.ttft_s <= streamed.timing.latency_s


def test_greedy_tokens_are_rank_one_of_the_raw_distribution(client: tmlab.Client) -> None:
    # At temperature 0 the sampled token is the argmax of the raw distribution, so a truthful
    # table shows rank 1 and a prob equal to the largest alternative at every position.
    res = client.chat(PROMPT, temperature=0, max_tokens=16, logprobs=True, top_logprobs=5)
    df = res.logprobs_frame()
    assert len(df) == res.usage.completion_tokens
    assert (df["rank"] == 1).all()
    top1 = [max(lps) for lps in df["top_logprobs"]]
    assert df["logprob"].tolist() == pytest.approx(top1, abs=1e-6)
    for lps in df["top_logprobs"]:
        assert len(lps) == 5
        assert lps == sorted(lps, reverse=True)
        assert math.fsum(math.exp(x) for x in lps) <= 1 + 1e-6
    assert ((df["top_mass"] + df["other_mass"] - 1).abs() < 1e-9).all()


def test_bad_parameter_is_rejected_before_sending(client: tmlab.Client) -> None:
    with pytest.raises(tmlab.ParameterError, match="reasoning_effort"):
        client.chat(PROMPT, reasoning_effort="max")


def test_server_side_error_maps_to_the_tree(client: tmlab.Client) -> None:
    with pytest.raises(tmlab.NotFoundError) as info:
        client.chat(PROMPT, model="no-such-model", max_tokens=4)
    assert info.value.status_code == 404
    assert "SmolLM2-135M-Instruct" in info.value.message
    # the server named the model: the URL is right, so no hint to check it
    assert "check the base URL" not in info.value.message


def test_a_404_on_the_path_says_which_url_was_tried(local_server) -> None:  # type: ignore[no-untyped-def]
    wrong = local_server.base_url + "/extra"  # a path too many
    with (
        tmlab.Client(base_url=wrong, model="SmolLM2-135M-Instruct", max_retries=0) as c,
        pytest.raises(tmlab.NotFoundError) as info,
    ):
        c.chat(PROMPT, max_tokens=4)
    assert f"tried POST {wrong}/chat/completions; check the base URL" in info.value.message


def test_models_lists_the_local_model(client: tmlab.Client) -> None:
    ids = [m["id"] for m in client.models()]
    assert "SmolLM2-135M-Instruct" in ids


def test_client_without_key_starts_the_local_server_and_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL", "TMLAB_MODEL")
    }
    code = (
        "import tmlab\n"
        "res = tmlab.Client().chat('Say hi.', max_tokens=4, temperature=0)\n"
        "print('MODEL', res.model)\n"
        "print('TOKENS', res.usage.completion_tokens)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "MODEL SmolLM2-135M-Instruct" in out.stdout
    tokens = int(out.stdout.split("TOKENS", 1)[1].split()[0])
    assert 1 <= tokens <= 4
    # one calm line on stdout (stderr is painted pink in JupyterLab, like an error)
    notice = [line for line in out.stdout.splitlines() if "using the local" in line]
    assert len(notice) == 1
    assert "SmolLM2-135M-Instruct" not in out.stderr
    assert "TENSORMESH_INFERENCE_API_KEY" in notice[0]
