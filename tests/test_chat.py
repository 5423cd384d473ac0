"""``edgert chat``: the history through the chat template, Ctrl-C during an answer, /reset, the
context kept by dropping the oldest exchanges, and the command itself on a pipe."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the tiny checkpoint is made with transformers (the dev extra)")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import make_llama  # noqa: E402

from edgert.chat import chat, fit  # noqa: E402
from edgert.runtime.llm.generator import Generator  # noqa: E402
from edgert.runtime.llm.sampling import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    make_llama(root / "ckpt")
    result = edgert("export", "llama", "--checkpoint", root / "ckpt", "--out", root / "bundle", "--opt", "context=96")
    assert result.returncode == 0, result.stderr
    return root / "bundle"


def lines(*typed):
    """A terminal that types ``typed`` (an exception instance is raised instead), then Ctrl-D."""
    pending = list(typed)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        item = pending.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    return read


def test_each_turn_sees_the_history_and_reset_clears_it(bundle):
    gen = Generator(bundle)
    params = SamplingParams(max_new_tokens=6)
    seen, said = [], []
    encode = gen.encode_messages
    gen.encode_messages = lambda messages: seen.append([dict(m) for m in messages]) or encode(messages)
    code = chat(gen, params, system="Be brief.", read=lines("Hello", KeyboardInterrupt(), "And then?", "/reset", "Hi",
                                                              "/bogus"), write=said.append)
    assert code == 0
    first = gen.generate(encode([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]),
                         params).text
    assert seen[0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert seen[1] == [*seen[0], {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert seen[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert first in "".join(said)


def test_ctrl_c_stops_an_answer_and_the_conversation_goes_on(bundle):
    gen = Generator(bundle)
    said, stops = [], [True]

    def write(text: str) -> None:
        if text and stops and text.strip():
            stops.pop()
            said.append(text)
            raise KeyboardInterrupt  # the user presses Ctrl-C as the first words appear
        said.append(text)

    seen = []
    encode = gen.encode_messages
    gen.encode_messages = lambda messages: seen.append([dict(m) for m in messages]) or encode(messages)
    assert chat(gen, SamplingParams(max_new_tokens=8), read=lines("Hello", "Again"), write=write) == 0
    assert " [stopped]" in said
    partial = said[0]
    assert seen[1][1] == {"role": "assistant", "content": partial}  # what was said stays
    assert said[-1] == "\n" and len(seen) == 2


def test_the_oldest_exchanges_go_when_the_context_is_full(bundle):
    gen = Generator(bundle)  # context 96
    history = [{"role": "system", "content": "S"}]
    for i in range(8):
        history += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    history.append({"role": "user", "content": "last"})
    assert len(gen.encode_messages(history)) + 32 > gen.context
    ids = fit(gen, history, 32)
    assert len(ids) + 32 <= gen.context
    assert history[0]["role"] == "system" and history[-1]["content"] == "last"
    assert history[1]["content"] not in ("q0", "last") and history[2]["content"] == "a" + history[1]["content"][1:]
    assert len(history) % 2 == 0  # system, then whole exchanges, then the new question


def test_a_turn_too_long_alone_is_one_line_and_the_chat_goes_on(bundle, capsys):
    gen = Generator(bundle)
    said = []
    assert chat(gen, SamplingParams(max_new_tokens=4), read=lines("word " * 200, "Hi"), write=said.append) == 0
    err = capsys.readouterr().err
    assert "edgert chat: prompt has" in err and "context is 96" in err
    assert said[-1] == "\n"  # the next turn answered


def test_the_command_on_a_pipe(bundle):
    done = edgert("chat", bundle, "--max-new-tokens", "5", "--system", "Be brief.", input="Hello\n/exit\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("> ") and "Ctrl-D" in done.stderr
    assert done.stdout.count("> ") == 2  # one answer, then /exit
    assert edgert("chat", bundle, input="").returncode == 0  # Ctrl-D at once


def test_a_bundle_without_a_chat_template_is_one_line(bundle):
    from edgert.runtime.errors import EdgertError

    gen = Generator(bundle)
    gen.info["chat_template"] = None
    with pytest.raises(EdgertError, match="no chat template; use 'edgert generate'"):
        chat(gen, SamplingParams(), read=lines("Hello"))
    assert_user_error(edgert("chat", bundle, "--threads", "0"), "--threads")
