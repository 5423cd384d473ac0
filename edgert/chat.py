"""``edgert chat BUNDLE``: a conversation with a decoder bundle in the terminal.

Each turn goes through the bundle's chat template with the whole history (and ``--system``), the
answer streams as it is generated, and the history keeps it. Where the history no longer fits
the bundle's context with room for an answer, the oldest exchanges are dropped (the system
message stays), as llama.cpp's and Ollama's chats do. ``/reset`` clears the history, ``/exit``
or Ctrl-D leaves; Ctrl-C stops an answer (what was said stays in the history) or, at the
prompt, clears the line. A bad turn (a prompt too long on its own, a template that refuses a
message) is one line and the conversation goes on without it."""

from __future__ import annotations

import sys
from collections.abc import Callable

from edgert.runtime.errors import EdgertError

HELP = "/reset clears the conversation, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


def fit(generator, history: list[dict[str, str]], room: int) -> list[int]:
    """The prompt ids of ``history``, oldest exchanges dropped (in place) until ``room`` positions
    are left for the answer; the newest user message alone must fit."""
    system = 1 if history and history[0]["role"] == "system" else 0
    while True:
        ids = generator.encode_messages(history)
        if len(ids) + room <= generator.context or len(history) - system <= 1:
            return ids
        del history[system:system + 2]  # a user message and its answer


def chat(generator, params, strategy: str = "ar", strategy_options: dict | None = None, system: str | None = None,
         read: Callable[[str], str] = input, write: Callable[[str], None] | None = None) -> int:
    """The loop; ``read`` and ``write`` are the terminal (tests give their own)."""
    if write is None:
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()
    if not generator.info.get("chat_template"):
        raise EdgertError("this bundle's checkpoint has no chat template; use 'edgert generate' for plain text")
    try:
        import readline  # noqa: F401  (line editing and recall for input(), where the platform has it)
    except ImportError:
        pass
    history = [{"role": "system", "content": system}] if system else []
    print(f"edgert chat: {HELP}", file=sys.stderr)
    while True:
        try:
            line = read("> ")
        except EOFError:
            write("\n")
            return 0
        except KeyboardInterrupt as stop:
            if type(stop) is not KeyboardInterrupt:  # SIGTERM (edgert.cli.Terminated): leave
                raise
            write("\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            del history[1 if system else 0:]
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"edgert chat: unknown command {text}; {HELP}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            write(piece)

        try:
            ids = fit(generator, history, min(params.max_new_tokens, generator.context // 2))
            answer = generator.generate(ids, params, strategy=strategy, strategy_options=strategy_options,
                                        on_text=on_text).text
        except KeyboardInterrupt as stop:
            if type(stop) is not KeyboardInterrupt:
                raise
            answer = "".join(pieces)
            write(" [stopped]")
        except EdgertError as err:
            history.pop()
            print(f"edgert chat: {err}", file=sys.stderr)
            continue
        write("\n")
        history.append({"role": "assistant", "content": answer})
