"""tmlab.score and tmlab.classify: on the embedded server against an independent llama.cpp
computation (echo), and the continuation path against small fake servers that make the faults
a real server cannot be made to produce (llama.cpp's real server: test_foreign_llamacpp.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _e2e import MODEL
from _fake_server import LiveServer, scripted_app

import tmlab
from tmlab.classification import _log_mass, _log_norm
from tmlab.continuation import PROBE_MESSAGES
from tmlab.errors import ScoreError
from tmlab.scoring import SCORE_COLUMNS, ScoreResult
from tmlab.server.engine import default_model_path

TEXT = "The capital of France is Paris."
CONTEXT = "What is the capital of France?"


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=512, logits_all=True, verbose=False
    )
    yield llm
    llm.close()


@pytest.fixture
def client(local_server: Any) -> Iterator[tmlab.Client]:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as c:
        yield c


@pytest.mark.slow
def test_score_equals_an_independent_log_softmax(client: Any, reference: Any) -> None:
    s = tmlab.score(TEXT, context=CONTEXT, client=client)
    assert isinstance(s, ScoreResult) and s.method == "echo"
    assert "".join(t.token for t in s.tokens) == TEXT
    assert s.response is not None
    echoed = s.response.choices[0].logprobs or []
    prompt = [t.token_id for t in echoed[: s.response.raw["choices"][0]["logprobs"]["echo_tokens"]]]
    reference.reset()
    reference.eval(prompt)  # one batch, as the server evaluates a prompt
    scores = np.asarray(reference.scores[: len(prompt)], dtype=np.float64)
    start = next(i for i in range(len(prompt)) if echoed[i] is s.tokens[0])
    for k, tok in enumerate(s.tokens):
        row = scores[start + k - 1]
        lp = row - (row.max() + math.log(np.exp(row - row.max()).sum()))
        assert tok.logprob == pytest.approx(float(lp[tok.token_id]), abs=1e-6)
        best = np.argsort(-lp, kind="stable")[:20]
        assert [a.token_id for a in tok.top] == [int(i) for i in best]
    total = math.fsum(t.logprob for t in s.tokens)
    assert s.total_logprob == pytest.approx(total)
    assert s.mean_logprob == pytest.approx(total / len(s.tokens))
    assert s.perplexity == pytest.approx(math.exp(-total / len(s.tokens)))
    assert "raw_logprobs" in s.meaning
    # where the answer sits is learned once per server: the next text needs one request
    again = tmlab.score(TEXT, context=CONTEXT, client=client)
    assert again.requests == 1
    assert [(t.token_id, t.logprob) for t in again.tokens] == [
        (t.token_id, t.logprob) for t in s.tokens
    ]


@pytest.mark.slow
def test_shuffled_words_are_more_surprising(client: Any) -> None:
    fluent = tmlab.score(TEXT, context=CONTEXT, client=client)
    shuffled = tmlab.score("Paris France of is capital The.", context=CONTEXT, client=client)
    assert shuffled.perplexity > 3 * fluent.perplexity
    alone = tmlab.score(TEXT, client=client)  # no context: the text as an assistant turn
    assert alone.n_tokens == fluent.n_tokens and alone.context is None
    assert alone.total_logprob < fluent.total_logprob  # the question makes the answer likelier


@pytest.mark.slow
def test_frame_html_and_plot(client: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = tmlab.score(TEXT, context=CONTEXT, client=client, top_logprobs=5)
    df = s.frame()
    assert list(df.columns) == SCORE_COLUMNS
    assert df["surprisal_bits"].tolist() == pytest.approx((-df["logprob"] / math.log(2)).tolist())
    assert (df["entropy_bits"] >= 0).all() and "lower bound" in df.attrs["notes"]
    assert df.attrs["totals"]["perplexity"] == pytest.approx(s.perplexity)
    ranks = df["rank"].dropna()
    assert ((ranks >= 1) & (ranks <= 5)).all()
    html = s._repr_html_()
    assert "Paris" in html and "perplexity" in html and "given text" in html
    ax = s.plot()
    assert len(ax.patches) == s.n_tokens  # one bar per token
    plt.close("all")


def test_bad_input_names_the_parameter() -> None:
    with pytest.raises(tmlab.ParameterError, match="text"):
        tmlab.score("")
    with pytest.raises(tmlab.ParameterError, match="context"):
        tmlab.score("x", context=3)  # type: ignore[arg-type]
    with pytest.raises(tmlab.ParameterError, match="labels"):
        tmlab.classify("q", ["only one"])
    with pytest.raises(tmlab.ParameterError, match="prompts"):
        tmlab.classify("q", ["a", "b"], prompts=["x"])


# --- classify -----------------------------------------------------------------------------

REVIEW = "Review: '{}'\nIs this review positive or negative? Answer with one word."


@pytest.mark.slow
def test_classify_probabilities(client: Any) -> None:
    prompt = REVIEW.format("I loved every minute of it.")
    df = tmlab.classify(prompt, ["positive", "negative"], client=client, progress=False)
    assert list(df["label"]) == ["positive", "negative"]
    assert df["p_norm"].sum() == pytest.approx(1.0)
    assert 0 < df["mass"].iloc[0] <= 1 + 1e-9
    assert df["mass"].iloc[0] == pytest.approx(df["prob"].sum())
    one = tmlab.score("negative", context=prompt, client=client)
    assert df.loc[1, "logprob"] == pytest.approx(one.total_logprob, abs=1e-9)
    assert df["is_top"].sum() == 1 and df["error"].isna().all()


@pytest.mark.slow
def test_classify_many_prompts_with_a_failure_as_rows(client: Any) -> None:
    prompts = [REVIEW.format("Terrible, a waste of time."), "word " * 9000]
    df = tmlab.classify(None, ["positive", "negative"], prompts=prompts, client=client)
    assert len(df) == 4 and list(df["prompt_index"]) == [0, 0, 1, 1]
    good, bad = df[df["prompt_index"] == 0], df[df["prompt_index"] == 1]
    assert good["error"].isna().all() and good["p_norm"].sum() == pytest.approx(1.0)
    assert bad["error"].str.contains("context").all() and bad["p_norm"].isna().all()


def test_overlapping_labels_warn() -> None:
    with pytest.warns(UserWarning, match="overlap"):
        from tmlab.classification import _prepare

        _prepare("q", ["pos", "positive"], None, 1, "auto")


# --- the continuation path, against small fake servers -------------------------------------

TOY = ["the", " cat", " sat"]  # the toy model's tokenisation of "the cat sat"
TRUE_LP = [-0.5, -1.25, -2.0]  # its logprob of each true token
OUTSIDE = 2  # at this position the true token is not among the returned alternatives


def _toy_handler(continues: bool) -> Any:
    def handler(path: str, body: bytes) -> tuple[int, dict[str, str], list[bytes | float], bool]:
        req = json.loads(body)
        msgs = req["messages"]
        cont = continues and req.get("continue_final_message")
        prefix = msgs[-1]["content"] if cont else ""
        prompt_tokens = 10 + len(msgs) * 3 - (4 if cont else 0)
        if cont and prefix == PROBE_MESSAGES[-1]["content"]:  # the continuation check
            return 200, {"content-type": "application/json"}, [_toy_body(" 5,")], False
        pos = len([t for i, t in enumerate(TOY) if len("".join(TOY[: i + 1])) <= len(prefix)])
        alts = [{"token": " dog", "logprob": -3.0}, {"token": " mat", "logprob": -3.5}]
        if pos < len(TOY) and pos != OUTSIDE:
            alts.insert(0, {"token": TOY[pos], "logprob": TRUE_LP[pos]})
            # a shorter alternative the text also starts with: the walk takes the longest
            alts.append({"token": TOY[pos][:2], "logprob": -4.0})
        entry = {"token": alts[0]["token"], "logprob": alts[0]["logprob"], "top_logprobs": alts}
        out = {
            "id": "x",
            "object": "chat.completion",
            "model": "toy",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": entry["token"]},
                    "finish_reason": "length",
                    "logprobs": {"content": [entry]} if req.get("logprobs") else None,
                }
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1},
        }
        return 200, {"content-type": "application/json"}, [json.dumps(out).encode()], False

    return handler


def _toy_body(content: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    usage = {"prompt_tokens": 20, "completion_tokens": 2}
    return json.dumps({"model": "toy", "choices": [choice], "usage": usage}).encode()


def test_continuation_walk_on_a_server_without_echo() -> None:
    with LiveServer(scripted_app(_toy_handler(continues=True))) as server:
        c = tmlab.Client(base_url=server.base_url, model="toy")
        s = tmlab.score("the cat sat", context="Say it.", client=c, top_logprobs=5)
    assert s.method == "continuation"
    assert [t.token for t in s.tokens[:2]] == ["the", " cat"]
    assert [t.logprob for t in s.tokens[:2]] == TRUE_LP[:2]
    # " sat" was outside the alternatives: unknown, bounded by the smallest returned
    assert all(math.isnan(t.logprob) for t in s.tokens[2:])
    assert s.bounds[2] == -3.5 and math.isnan(s.total_logprob)
    assert s.requests == 3 + len(s.tokens)
    assert "outside the returned alternatives" in s.describe()


def test_a_server_that_does_neither_is_a_clear_error() -> None:
    with LiveServer(scripted_app(_toy_handler(continues=False))) as server:
        c = tmlab.Client(base_url=server.base_url, model="toy")
        with pytest.raises(ScoreError) as info:
            tmlab.score("the cat sat", client=c)
    message = str(info.value)
    assert "echo=True" in message and "continue_final_message" in message


def test_classify_never_returns_a_silent_nan() -> None:
    """A label with a token outside the returned alternatives has no probability: its rows
    say so (the error), instead of a bare NaN in p_norm."""
    with LiveServer(scripted_app(_toy_handler(continues=True))) as server:
        c = tmlab.Client(base_url=server.base_url, model="toy")
        with pytest.warns(UserWarning, match="overlap"):  # "the" begins "the cat sat"
            df = tmlab.classify("Say it.", ["the", "the cat sat"], client=c, progress=False)
    assert df["p_norm"].isna().all() and not df["is_top"].any()
    assert df["error"].str.contains("'the cat sat'").all()
    assert df.loc[0, "logprob"] == TRUE_LP[0]  # what is known is kept


def test_p_norm_of_very_unlikely_labels_does_not_underflow() -> None:
    lps = [-800.0, -800.0 - math.log(3)]
    assert math.exp(_log_norm(lps[0], lps)) == pytest.approx(0.75)
    assert math.exp(_log_mass(lps)) == 0.0  # the mass itself is below the smallest float


def test_perplexity_at_least_bounds_an_unknown_token_by_the_smallest_alternative() -> None:
    from tmlab.result import TokenLogprob
    from tmlab.scoring import ScoreResult

    tokens = [TokenLogprob("The", -1.0), TokenLogprob("x", math.nan), TokenLogprob(" sea", -2.0)]
    s = ScoreResult(
        "Thex sea",
        None,
        None,
        tokens,
        "continuation",
        "raw_logprobs",
        5,
        3,
        bounds=[math.nan, -5.0, math.nan],
    )
    assert math.isnan(s.perplexity)  # unknown: not a number to show as one
    # the unknown token is at most as likely as the smallest returned alternative (-5)
    assert s.perplexity_at_least == pytest.approx(math.exp((1.0 + 5.0 + 2.0) / 3))
    known = ScoreResult("The sea", None, None, [tokens[0], tokens[2]], "echo", "raw", 5, 1)
    assert known.perplexity_at_least == pytest.approx(known.perplexity)
