"""``%%tmchat --prefill TEXT`` and ``--branch ID:POS[:TOKEN]``, through IPython itself."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from test_magics import _one_error_line, last_row, magics, markdown_shown, run

from tmlab.jupyter.flags import FlagError, parse_flags
from tmlab.result import ChatResult


@pytest.mark.parametrize(
    ("line", "branch"),
    [
        ("--branch 12:5", (12, 5, None)),
        ('--branch "12:5: sea"', (12, 5, " sea")),
        ("--branch '12:5:a:b'", (12, 5, "a:b")),
        ("--branch 12:5:#1234", (12, 5, 1234)),
    ],
)
def test_branch_flag_parses_id_position_and_token(line: str, branch: tuple[object, ...]) -> None:
    assert parse_flags(line).branch == branch


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("--branch 12", "ID:POS[:TOKEN]"),
        ("--branch x:1", "ID:POS[:TOKEN]"),
        ("--branch 0:1", "ID ≥ 1"),
        ("--prefill a --branch 1:2", "exclude each other"),
        ("--prefill a --temperature 0,1", "one request"),
        ("--branch 1:2 --repeat 3", "one request"),
        ("--branch 1:2 --system hi", "no --system"),
        ("--branch 1:2 --model m", "no --model"),
        ("--prefill a --continue-final-message", "sets --continue-final-message itself"),
    ],
)
def test_bad_continuation_flags_are_one_line(line: str, words: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_flags(line)
    assert words in str(info.value)


@pytest.mark.slow
def test_prefill_continues_the_answer(ip: InteractiveShell) -> None:
    result, cap = run(
        ip,
        "%%tmchat --prefill '1, 2, 3, 4,' --temperature 0 --max-tokens 3\n"
        "Count from 1 to 10, separated by commas.",
    )
    assert result.success, cap.stdout
    res = result.result
    assert isinstance(res, ChatResult)
    assert res.text.lstrip().startswith("5")
    assert res.full_text == "1, 2, 3, 4," + res.text
    row = last_row()
    assert row["messages"][-1] == {"role": "assistant", "content": "1, 2, 3, 4,"}
    assert row["params"]["continue_final_message"] is True
    assert magics(ip).turns[-1] == {"role": "assistant", "content": res.full_text}
    (shown,) = markdown_shown(cap)
    assert "continues the prefill" in shown


@pytest.mark.slow
def test_branch_continues_a_result_of_this_session(ip: InteractiveShell) -> None:
    first, _ = run(
        ip, "%%tmchat --logprobs 3 --temperature 0 --max-tokens 10 --out parent\nName a colour."
    )
    assert first.success
    parent = first.result
    entries = parent.choices[0].logprobs
    expected = next(a for a in entries[2].top if a.token_id != entries[2].token_id)
    result, cap = run(ip, f"%tmchat --branch {parent.history_id}:2 --max-tokens 4")
    assert result.success, cap.stdout
    res = result.result
    assert res.parent is not None and res.parent.token == expected.token
    row = last_row()
    assert row["source"] == "magic"
    assert row["parent_id"] == parent.history_id
    assert (row["branch_position"], row["branch_token"]) == (2, expected.token)
    assert row["params"]["max_tokens"] == 4  # the flag overrides the inherited budget
    (shown,) = markdown_shown(cap)
    assert f"branch of history row {parent.history_id} at position 2" in shown
    # after a restart (nothing in memory) the history's stored tokens give the same branch
    from tmlab.history import forget_results

    forget_results()
    ip.user_ns.pop("parent", None)
    again, cap = run(ip, f"%tmchat --branch {parent.history_id}:2 --max-tokens 4")
    assert again.success, cap.stdout
    assert again.result.full_text == res.full_text
    assert again.result.parent is not None and again.result.parent.parent_id == parent.history_id
    # a row that is not an answer of this session in memory: one line saying why
    result, cap = run(ip, "%%tmchat --branch 99999:0\n\n")  # a blank body is fine
    assert "tokens and alternatives" in _one_error_line(result, cap)
    result, cap = run(ip, f"%%tmchat --branch {parent.history_id}:0\nsome text")
    assert "leave the cell body empty" in _one_error_line(result, cap)
    result, cap = run(ip, "%tmchat --max-tokens 3")
    assert "use %%tmchat with the message" in _one_error_line(result, cap)
