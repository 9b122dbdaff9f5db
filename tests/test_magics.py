"""The magics run through IPython itself against the embedded server (the real model).

What reached the server is read back from the history row the client logged (source "magic").
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output
from nbclient import NotebookClient
from test_live import final_screen

import tmlab.local
from tmlab.client.settings import ENV_API_KEY, ENV_BASE_URL, session
from tmlab.history import history
from tmlab.jupyter.magics import TmChat, TmchatError
from tmlab.local import LocalServer
from tmlab.result import ChatResult

pytestmark = pytest.mark.slow


def magics(shell: InteractiveShell) -> TmChat:
    instance = shell.magics_manager.registry["TmChat"]
    assert isinstance(instance, TmChat)
    return instance


def run(shell: InteractiveShell, source: str) -> tuple[ExecutionResult, CapturedIO]:
    with capture_output() as cap:
        result = shell.run_cell(source, store_history=True)
    return result, cap


def markdown_shown(cap: CapturedIO) -> list[str]:
    return [d.get("text/markdown", "") for d in final_screen(cap.outputs)]


def last_row() -> dict[str, Any]:
    df = history(n=1)
    assert len(df) == 1
    row: dict[str, Any] = df.iloc[0].to_dict()
    return row


def test_flags_reach_the_request_and_the_answer_is_shown_once(ip: InteractiveShell) -> None:
    result, cap = run(
        ip,
        "%%tmchat --temperature 0.5 --top-k 20 --max-tokens 12 --seed 7 --stop '###' "
        "--logprobs 3 --system 'Be brief.' --reasoning-effort none\nName a colour.",
    )
    assert result.success, cap.stdout
    res = result.result
    assert isinstance(res, ChatResult) and res.text
    assert ip.user_ns["_"] is res  # the cell's value: _ and Out[n]
    assert ip.user_ns["Out"][ip.execution_count - 1] is res
    row = last_row()
    assert row["source"] == "magic"
    assert row["complete"] == 1
    params = row["params"]
    for name, value in {
        "temperature": 0.5,
        "top_k": 20,
        "max_tokens": 12,
        "seed": 7,
        "stop": "###",
        "logprobs": True,
        "top_logprobs": 3,
        "reasoning_effort": "none",
    }.items():
        assert params[name] == value, name
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
    ]
    screen = final_screen(cap.outputs)
    answers = [d for d in screen if res.text in d.get("text/markdown", "")]
    assert len(answers) == 1  # shown once: the live output became the final view
    assert " prompt + " in answers[0]["text/markdown"]  # the usage line
    assert any("text/html" in d and "prob" in d["text/html"] for d in screen)  # logprobs table
    assert "Out[" not in cap.stdout or res.text not in cap.stdout


def test_out_stores_the_result_and_the_cost_is_shown_with_prices(ip: InteractiveShell) -> None:
    run(ip, "%tmconfig prices=0.3,1.2")
    result, cap = run(ip, "%%tmchat --out answer --max-tokens 6 --no-stream\nSay hello.")
    assert result.success
    assert ip.user_ns["answer"] is result.result
    assert isinstance(ip.user_ns["answer"], ChatResult)
    assert last_row()["params"]["max_tokens"] == 6
    (shown,) = markdown_shown(cap)
    assert "cost $" in shown and "input $0.3, output $1.2" in shown


def test_variables_are_interpolated_and_literal_braces_kept(ip: InteractiveShell) -> None:
    ip.user_ns["topic"] = "owls"
    ip.user_ns["facts"] = {"legs": 2}
    result, _ = run(ip, "%%tmchat --max-tokens 4\nTell me about {topic}: {facts[legs]} {{legs}}.")
    assert result.success
    assert last_row()["messages"][-1]["content"] == "Tell me about owls: 2 {legs}."
    body = '{"a": 1, "b": {"c": [1, 2]}}\n{undefined_name}'
    result, _ = run(ip, "%%tmchat --max-tokens 4\n" + body)
    assert result.success
    assert last_row()["messages"][-1]["content"] == body  # no variable named: unchanged


def test_continue_sends_earlier_turns_and_new_starts_over(ip: InteractiveShell) -> None:
    first, _ = run(ip, "%%tmchat --max-tokens 8 --seed 1\nMy name is Ada.")
    second, _ = run(ip, "%%tmchat --continue --max-tokens 8\nWhat is my name?")
    assert first.success and second.success
    assert last_row()["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.result.text},
        {"role": "user", "content": "What is my name?"},
    ]
    run(ip, "%%tmchat --new --max-tokens 4\nHi.")
    run(ip, "%%tmchat --continue --max-tokens 4\nAgain.")
    messages = last_row()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Hi.", "Again."]
    assert len(magics(ip).turns) == 4


def test_json_asks_for_a_json_object(ip: InteractiveShell) -> None:
    result, _ = run(ip, "%%tmchat --json --max-tokens 24 --seed 3\nGive a person with a name.")
    assert result.success
    assert last_row()["params"]["response_format"] == {"type": "json_object"}
    if result.result.finish_reason == "stop":
        assert isinstance(json.loads(result.result.text), dict)


def _one_error_line(result: ExecutionResult, cap: CapturedIO) -> str:
    assert not result.success
    text = (cap.stdout + cap.stderr).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    return text


def test_a_wrong_flag_value_is_one_line_and_nothing_is_sent(ip: InteractiveShell) -> None:
    before = len(history())
    result, cap = run(ip, "%%tmchat --temperature 5 --top-k 3\nHi.")
    line = _one_error_line(result, cap)
    assert isinstance(result.error_in_exec, TmchatError)
    assert line == (
        "%%tmchat: --temperature: temperature=5.0 is out of range (allowed: float in 0..2)"
    )
    assert len(history()) == before
    result, cap = run(ip, "%%tmchat --reasoning-effort extreme\nHi.")
    assert "'none' | 'low' | 'medium' | 'high'" in _one_error_line(result, cap)


def test_debug_shows_the_traceback(ip: InteractiveShell) -> None:
    session.update(model="no-such-model")
    result, cap = run(ip, "%%tmchat --debug --max-tokens 2\nHi.")
    assert not result.success
    assert "Traceback" in cap.stdout + cap.stderr


def test_a_401_is_one_line_with_the_fix(
    ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-key-0123456789abcdef"
    monkeypatch.setenv("TMLAB_TEST_WRONG_KEY", wrong)
    with tmlab.local.start(api_key="the-right-key-for-this-test", quiet=True) as guarded:
        result, _ = run(ip, f"%tmconfig base_url={guarded.base_url} key=env:TMLAB_TEST_WRONG_KEY")
        assert result.success
        result, cap = run(ip, "%%tmchat --max-tokens 4\nHi.")
    line = _one_error_line(result, cap)
    assert line.startswith("AuthenticationError 401: Missing or incorrect API key")
    assert "set TENSORMESH_INFERENCE_API_KEY or run %tmconfig key=env:VAR" in line
    assert wrong not in cap.stdout + cap.stderr + json.dumps([o.data for o in cap.outputs])
    row = last_row()
    assert row["complete"] == 0 and "AuthenticationError" in row["error"]


def test_tmconfig_shows_and_changes_the_session(
    ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMLAB_TEST_KEY_VAR", "k-123456789")
    result, _ = run(ip, "%tmconfig")
    settings = result.result["value"].to_dict()
    assert settings["key"] == "not set"
    result, _ = run(ip, "%tmconfig model=some-model prices=0.3,1.2 key=env:TMLAB_TEST_KEY_VAR")
    assert result.success
    assert session.model == "some-model"
    assert session.prices == {"input": 0.3, "output": 1.2}
    assert result.result["value"]["key"] == "set (from TMLAB_TEST_KEY_VAR)"
    assert "k-123456789" not in result.result.to_string()
    run(ip, "%config TmChat.model = 'other-model'")
    assert session.model == "other-model"


def test_tmconfig_refuses_a_key_typed_into_the_cell(ip: InteractiveShell) -> None:
    secret = "sk-typed-into-a-cell-123456"
    result, cap = run(ip, f"%tmconfig key={secret}")
    line = _one_error_line(result, cap)
    assert "key= takes env:VAR" in line
    assert secret not in cap.stdout + cap.stderr
    assert session.key_source() is None


def test_tmmodels_and_tmhistory(ip: InteractiveShell) -> None:
    result, cap = run(ip, "%tmmodels")
    assert result.success
    assert "SmolLM2-135M-Instruct" in list(result.result["id"])
    # the embedded server says what it is doing: one slot, exact; its load in one line
    assert list(result.result["parallel"]) == [1]
    assert result.result.attrs["stats"]["parallel"] == 1
    [line] = [o.data["text/plain"] for o in cap.outputs if "text/plain" in o.data]
    assert line.startswith("server: ") and "1 slot (one at a time, exact)" in line
    run(ip, "%%tmchat --max-tokens 3\nHi.")
    run(ip, "%%tmchat --max-tokens 3\nHello.")
    result, _ = run(ip, "%tmhistory -n 1 --source magic")
    df = result.result
    assert len(df) == 1 and df.iloc[0]["messages"][-1]["content"] == "Hello."
    result, cap = run(ip, "%tmhistory --source nowhere")
    assert "source" in _one_error_line(result, cap)


def test_help_lists_every_flag(ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("tmchat").__doc__ or ""
    assert "--temperature" in doc and "float in 0..2" in doc and "--logprobs" in doc


def test_in_a_kernel_the_answer_is_displayed_once_and_is_the_cell_value(
    local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite3"))
    monkeypatch.setenv(ENV_BASE_URL, local_server.base_url)
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext tmlab.jupyter.magics"),
        nbformat.v4.new_code_cell("%%tmchat --max-tokens 24 --seed 5\nName three fruits."),
        nbformat.v4.new_code_cell("_.text"),
    ]
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources=resources, allow_errors=True
    )
    client.execute()
    outputs = nb.cells[1].outputs
    assert not [o for o in outputs if o.output_type in ("execute_result", "error")]
    text = ast.literal_eval(nb.cells[2].outputs[0]["data"]["text/plain"])  # the value: _
    assert text
    shown = [o for o in outputs if any(text in str(v) for v in o.get("data", {}).values())]
    assert len(shown) == 1
    # the stop button, in a real kernel: tests/test_interrupt.py


def test_comma_lists_run_a_small_sweep(ip: InteractiveShell) -> None:
    before = len(history())
    result, cap = run(ip, "%%tmchat --temperature 0,1 --repeat 2 --max-tokens 2 --out df\nHi.")
    assert result.success, cap.stdout + cap.stderr
    df = result.result
    assert ip.user_ns["df"] is df
    assert sorted(df["temperature"]) == [0.0, 0.0, 1.0, 1.0]
    rows = history().iloc[before:]
    assert sorted(p["temperature"] for p in rows["params"]) == [0.0, 0.0, 1.0, 1.0]
    assert any("distinct_answers" in o.data.get("text/html", "") for o in cap.outputs)


def test_trace_shows_the_stage_table_under_the_answer(ip: InteractiveShell) -> None:
    result, cap = run(
        ip, "%%tmchat --trace 0-1 --top-k 3 --temperature 0.7 --seed 2 --max-tokens 4\nHi."
    )
    assert result.success, cap.stderr
    assert last_row()["params"]["sampler_trace"] == {"positions": [0, 1]}
    tables = [o.data.get("text/html", "") for o in cap.outputs if "text/html" in o.data]
    stage_table = next(t for t in tables if "removed_mass" in t)
    assert stage_table.count("top_k") == 2 and "temperature" in stage_table
    result, cap = run(ip, "%%tmchat --trace 300\nHi.")
    assert "0..255" in _one_error_line(result, cap)
