"""`sia-edge chat`: the session class in-process, and the REPL through real subprocesses (a pipe and a pty)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sia_edge.chat import ChatSession, PlainFormat, Trimmed, kept_tokens, render_tokens
from sia_edge.errors import PromptError
from sia_edge.settings import GenerationSettings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LONG_SYSTEM = ("The following is a long, friendly conversation between a curious user and a patient assistant who "
               "answers every question about cooking, travel, music, films, books and the weather. ") * 6


@pytest.fixture(scope="module")
def gemma(engine):
    return engine  # the session's real Gemma engine with its shipped value model (tests/conftest.py)


@pytest.fixture(scope="module")
def smollm(smollm_path):
    from sia_edge.engine import Engine

    # no value model: exercises the unsteered path whether or not one ships for SmolLM2 (n_ctx: a multiple of 256,
    # since BaseModel reports llama.cpp's padded context size)
    engine = Engine(model=smollm_path, threads=1, n_ctx=256, use_value_model=False)
    assert engine.base.chat_template
    yield engine
    engine.close()


def chat_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# --- the session, in-process --------------------------------------------------------------------------------------


def test_plain_format_is_documented_user_assistant_lines():
    fmt = PlainFormat()
    text = fmt.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "},
                       {"role": "user", "content": "Bye"}], add_generation_prompt=True)
    assert text == ("A conversation between a user and a helpful assistant.\n\n"
                    "User: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:")
    assert PlainFormat("").render([{"role": "system", "content": "Be kind."}], False) == "Be kind.\n\n"


def test_trimmed_stream_drops_whitespace_at_both_ends():
    trim = Trimmed()
    assert [trim.push(p) for p in [" ", " Hello", " world", "\n", "\n", "again", " \n"]] == \
        ["", "Hello", " world", "", "", "\n\nagain", ""]


def log_softmax(logits):
    x = logits.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_second_turn_only_decodes_the_new_turn(gemma):
    session = ChatSession(gemma, GenerationSettings(max_tokens=12, seed=1), system=LONG_SYSTEM)
    first = "".join(session.send("Hello! What is your favourite food?"))
    assert first and "User:" not in first
    after_first = len(session.tokens)
    assert session.last.reused_tokens <= 2  # a fresh conversation: nothing to reuse
    fed_before = gemma.base.decoded_tokens
    second = "".join(session.send("And your favourite city?"))
    assert second
    reused = session.last
    # everything up to the last reply (minus the final token, never decoded) came from the KV cache
    assert reused.reused_tokens >= after_first - 3
    decoded = reused.prompt_tokens - reused.reused_tokens
    assert decoded < 25 < reused.prompt_tokens // 4
    # what llama.cpp was actually fed for this turn: the new prompt tokens, then one per generated token
    fed = gemma.base.decoded_tokens - fed_before
    last_not_fed = reused.result.stop_reason in ("length", "stop", "context")  # chosen, then the loop ended
    assert fed == decoded + len(reused.result.token_ids) - last_not_fed
    # and the reused cache is right: the next-token distribution after prefilling this turn's prompt on top of it
    # is the one a cold cache gives (to float tolerance: one big prefill rounds differently from several pieces)
    prompt = session.tokens[: reused.prompt_tokens]
    fed_before = gemma.base.decoded_tokens
    gemma.base.prefill(prompt, reuse=True)
    assert gemma.base.decoded_tokens - fed_before < len(prompt) // 4  # most of it came from the cache
    warm = log_softmax(gemma.base.logits())
    gemma.base.reset()
    gemma.base.prefill(prompt)
    cold = log_softmax(gemma.base.logits())
    top = np.argsort(-cold)[:10]
    # measured: up to ~0.2 nats apart on single candidates, ~0.1 on average; a wrong cache is off by whole nats
    assert int(cold.argmax()) in np.argsort(-warm)[:3] and np.abs(warm[top] - cold[top]).mean() < 0.3
    assert "last reply:" in session.stats_text() and f"{reused.reused_tokens} reused" in session.stats_text()


def test_conversation_tokens_match_the_rendered_text(gemma):
    session = ChatSession(gemma, GenerationSettings(max_tokens=10, seed=4, stop=("!",)))
    for line in ["Hi there", "How are you?"]:
        "".join(session.send(line))
    rendered = session.format.render(session.messages, add_generation_prompt=False)
    assert gemma.base.detokenize(session.tokens) == rendered
    assert session.messages[1]["role"] == "assistant" and "!" not in session.messages[1]["content"]


def test_chat_template_model_stops_on_end_of_turn_and_runs_unsteered(smollm):
    notes = []
    session = ChatSession(smollm, GenerationSettings(max_tokens=24, temperature=0), notify=notes.append)
    assert notes == ["no value model for SmolLM2-135M-Instruct.Q4_1.gguf: chatting unsteered (gate none)"]
    assert session.settings.gate == "none" and session.format.name == "the model's chat template"
    reply = "".join(session.send("What is 2+2?"))
    assert "4" in reply and session.last.result.stop_reason == "eos"  # <|im_end|> ends the turn
    assert smollm.base.token_text(session.tokens[0]) == b"<|im_start|>"
    rendered = session.format.render(session.messages, add_generation_prompt=False)
    assert rendered.endswith("<|im_end|>\n")
    assert session.tokens == render_tokens(smollm.base, session.format, rendered, whole=True)
    assert "only /gate none" in session.command("/gate entropy").text


def test_context_overflow_drops_the_oldest_turns(smollm):
    notes = []
    session = ChatSession(smollm, GenerationSettings(max_tokens=16, temperature=0), notify=notes.append)
    question = "Please describe, in a few words, the colour of the sky on a clear summer afternoon. "
    for _ in range(6):
        "".join(session.send(question))
        assert len(session.tokens) <= smollm.base.n_ctx
    assert any("dropped the" in n for n in notes)
    assert session.last.result.stats.tokens >= 1 and len(session.messages) < 12
    with pytest.raises(PromptError):
        "".join(session.send("word " * 400))


def test_commands(gemma):
    session = ChatSession(gemma, GenerationSettings(max_tokens=8, seed=2))
    assert "/reset" in session.command("/help").text
    assert "no reply yet" in session.command("/stats").text
    assert "tau=0.7" in session.command("/gate entropy 0.7").text and session.settings.tau == 0.7
    assert "online" in session.command("/gate online 0.3").text and session.settings.ratio == 0.3
    # switching gates starts from the new gate's defaults: no ratio left over to override the explicit tau
    assert "tau=0.7" in session.command("/gate entropy 0.7").text and session.settings.ratio is None
    "".join(session.send("Hi"))
    assert "entropy-gate(tau=0.7)" in session.last.result.pipeline
    assert "not changed" in session.command("/gate first-n 3.7").text and session.settings.gate == "entropy"
    assert "first-n-gate(n=3)" in session.command("/gate first-n 3").text
    assert "not changed" in session.command("/gate random 3").text
    assert "usage" in session.command("/gate sideways").text
    assert session.command("/gate none").text.endswith("sample(T=1)") and session.settings.gate == "none"
    "".join(session.send("Hi"))
    assert session.messages and session.command("/reset").text == "conversation reset" and not session.messages
    assert "unknown command" in session.command("/nope").text
    assert session.command("/exit").exit


def test_kept_tokens_spell_the_returned_text(gemma):
    result = gemma.generate("Q: Name a colour.\nA:", max_tokens=16, seed=3, stop=(".", "\n"))
    kept = kept_tokens(gemma.base, result.token_ids, result.text)
    assert gemma.base.detokenize(kept) == result.text
    assert kept == result.token_ids[: len(kept)] or not result.token_ids


# --- the REPL, through real processes -------------------------------------------------------------------------------


def test_repl_over_a_pipe(gemma_path):
    lines = ["Hello there! How are you?", "/stats", "What is your favourite colour?", "/stats", "/gate none",
             "/reset", "/stats", "Nice to meet you.", "/exit", "this line is never read"]
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "chat", "--model", str(gemma_path), "--threads", "1",
                           "-n", "12", "--seed", "5"], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, env=chat_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    stats = re.findall(r"prompt: (\d+) tokens, (\d+) reused from the KV cache", out)
    assert len(stats) == 2
    (p1, r1), (p2, r2) = [(int(a), int(b)) for a, b in stats]
    assert r1 == 0 and r2 > p1  # turn 2 re-used turn 1's prompt and most of its reply
    assert "no-gate" in out and "conversation reset" in out
    assert re.search(r"context: \d+ of 2048 tokens, 0 turns\nno reply yet", out)
    assert out.count("last reply:") == 2
    assert out.split("\n")[0].strip()  # the first reply


def test_repl_exits_on_end_of_input(gemma_path):
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "chat", "--model", str(gemma_path), "--threads", "1",
                           "--gate", "none", "-n", "6", "--seed", "1"], input="Hi\n", capture_output=True, text=True,
                          env=chat_env(), timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_ctrl_c_stops_the_reply_and_keeps_the_session(gemma_path):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "sia_edge", "chat", "--model", str(gemma_path), "--threads", "1",
                                           "-n", "300", "--seed", "2", "--gate", "none"],
                          env=chat_env(), encoding="utf-8", timeout=120)
    try:
        child.expect_exact("> ")
        child.sendline("Write me a very long story about a dragon and a knight.")
        child.expect_exact("knight.\r\n")  # the terminal's echo of our line
        child.expect(r"\w+\W+\w+\W+\w+")  # the reply is streaming
        child.kill(signal.SIGINT)
        child.expect_exact("reply stopped")
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(r"last reply: (\d+) tokens .*stop: cancelled")
        assert int(child.match.group(1)) < 300
        child.expect_exact("> ")
        child.sendline("Thank you!")
        child.expect_exact("you!\r\n")
        child.expect(r"\w")
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(r"context: \d+ of 2048 tokens, 2 turns")
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
