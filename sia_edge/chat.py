"""`sia-edge chat`: an offline terminal chat on the ordinary decoding loop.

`ChatSession` holds everything (history, rendering, KV-cache-friendly token bookkeeping, truncation, the /commands)
and needs no terminal; `chat` (the click command) is a thin read-eval-print shell around it.

Conversation formats
- The model's own chat template (GGUF `tokenizer.chat_template`, Jinja) when it has one, rendered with jinja2.
  Its end-of-turn token is an end-of-generation token, so the loop stops on it.
- Otherwise (base models such as Gemma 3 270M base) the plain format below, with stop strings so the model does
  not write the user's next turn:

      A conversation between a user and a helpful assistant.   <- the system text (--system), then a blank line

      User: first message
      Assistant: first reply
      User: second message
      Assistant:                                               <- the model continues from here

KV-cache reuse: the conversation is kept as the exact token list the model has seen (the generated token ids,
not a re-tokenisation of their text) and sent in full each turn; BaseModel.prefill keeps the common prefix, so
only the new turn is decoded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from .base_model import common_prefix
from .errors import PromptError, SiaError
from .gate import GATE_NAMES, GATES, PARAMETERS
from .models import OBJECTIVES
from .settings import GenerationSettings

PLAIN_SYSTEM = "A conversation between a user and a helpful assistant."
PLAIN_STOPS = ("\nUser:", "\nAssistant:")
MIN_REPLY_TOKENS = 8  # a turn that cannot leave this much room for the reply is refused

HELP = """commands:
  /help               this text
  /reset              forget the conversation (keeps the system text)
  /stats              junctions, junction ratio, tokens/s and KV-cache reuse of the last reply
  /gate NAME [X]      change the gate: {gates}
  /objective NAME     steer toward another objective: {objectives}
  /exit               leave (Ctrl-D too)
Ctrl-C stops the current reply; the conversation is kept.""".format(gates=", ".join(f"{name} [{spec.parameter}]" if spec.parameter else name
                            for name, spec in GATES.items()), objectives=", ".join(OBJECTIVES))


# --- formats -----------------------------------------------------------------------------------------------------


class PlainFormat:
    """`User:` / `Assistant:` lines for models without a chat template."""

    special = False  # user text is never parsed for control tokens
    stops = PLAIN_STOPS
    name = "plain User:/Assistant:"

    def __init__(self, system: str | None = None) -> None:
        self.system = PLAIN_SYSTEM if system is None else system

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        system = self.system
        if messages and messages[0]["role"] == "system":  # a system message replaces the default system text
            system, messages = messages[0]["content"], messages[1:]
        parts = [f"{system.strip()}\n\n"] if system and system.strip() else []
        for message in messages:
            role = {"user": "User", "assistant": "Assistant"}.get(message["role"], "System")
            parts.append(f"{role}: {message['content'].strip()}\n")
        if add_generation_prompt:
            parts.append("Assistant:")
        return "".join(parts)


class TemplateFormat:
    """The GGUF's own Jinja chat template, rendered like Hugging Face transformers does (sandboxed jinja2)."""

    special = True  # the rendered text contains control tokens such as <|im_start|>
    stops: tuple[str, ...] = ()  # the end-of-turn token is an end-of-generation token
    name = "the model's chat template"

    def __init__(self, template: str, bos_token: str, eos_token: str, system: str | None = None) -> None:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(template)
        except TemplateError as exc:
            raise PromptError(f"the model's chat template does not parse: {exc}; use --plain") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.system = system

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from jinja2.exceptions import TemplateError

        if self.system:
            messages = [{"role": "system", "content": self.system}, *messages]
        if not messages and not add_generation_prompt:
            return ""  # some templates index messages[0]
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise PromptError(f"the model's chat template failed: {exc}") from exc


def chat_format(base, system: str | None = None, plain: bool = False) -> PlainFormat | TemplateFormat:
    """The model's template if it has one (and `plain` is not asked for), else the plain format."""
    if plain or not base.chat_template:
        return PlainFormat(system)
    text = lambda token: base.token_text(token).decode("utf-8", errors="replace")  # noqa: E731
    return TemplateFormat(base.chat_template, text(base.bos_id), text(base.eos_id), system)


def render_tokens(base, fmt, text: str, whole: bool) -> list[int]:
    """Tokens of rendered chat text: `whole` adds BOS as the model wants (once), otherwise a continuation."""
    tokens = base.tokenize(text, add_bos=base.add_bos if whole else False, special=fmt.special)
    if whole and len(tokens) >= 2 and tokens[0] == tokens[1] == base.bos_id:
        tokens = tokens[1:]  # the template wrote bos_token itself
    return tokens


def kept_tokens(base, token_ids: list[int], text: str) -> list[int]:
    """Token ids that spell exactly `text`: the generated ids while they match, then a tokenisation of the rest.

    A generation that stopped on a stop string carries ids past the text it returns; keeping the generated ids
    (rather than re-tokenising the text) keeps the conversation identical to what sits in the KV cache.
    """
    data = text.encode("utf-8")
    kept, used = [], 0
    for token in token_ids:
        piece = base.token_bytes(token)
        if not data.startswith(piece, used):
            break
        kept.append(token)
        used += len(piece)
    rest = data[used:].decode("utf-8", errors="replace")
    return kept + (base.tokenize(rest, add_bos=False) if rest else [])


class Trimmed:
    """Streamed text without whitespace at either end: leading whitespace is dropped, trailing is held back."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, piece: str) -> str:
        text = self.held + piece if self.started else piece.lstrip()
        body = text.rstrip()
        self.held = text[len(body):]
        self.started = self.started or bool(body)
        return body


# --- the session -------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """What the last reply cost."""

    result: object  # GenerationResult
    prompt_tokens: int
    reused_tokens: int  # prompt tokens already in the KV cache (not decoded again)
    dropped_turns: int = 0


@dataclass
class CommandOutput:
    text: str
    exit: bool = False


@dataclass
class ChatSession:
    """A conversation with one engine. No terminal needed: `send` yields reply text, `command` runs /commands.

    >>> session = ChatSession(engine, GenerationSettings(max_tokens=64))
    >>> print("".join(session.send("Hello!")))
    """

    engine: object
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system: str | None = None
    plain: bool = False
    notify: Callable[[str], None] = lambda message: print(f"sia-edge: {message}", file=sys.stderr, flush=True)

    def __post_init__(self) -> None:
        self.base = self.engine.base
        self.format = chat_format(self.base, self.system, self.plain)
        if self.settings.steers and self.engine.value_model is None:
            self.notify(f"no value model for {self.base.name}: chatting unsteered (gate none)")
            self.settings = self.settings.with_gate("none")
        self.messages: list[dict] = []
        self.last: Turn | None = None
        self.turns = 0  # replies so far; with a fixed --seed, reply i uses seed + i
        self.reset()

    # -- conversation --

    def reset(self) -> None:
        self.messages = []
        self._rendered = self.format.render([], add_generation_prompt=False)
        self._tokens = render_tokens(self.base, self.format, self._rendered, whole=True)

    @property
    def tokens(self) -> list[int]:
        """The conversation as the model has seen it (what the next turn extends)."""
        return list(self._tokens)

    def send(self, text: str, cancel=None) -> Iterator[str]:
        """Add a user message and stream the reply's text. The reply joins the history (also when cancelled)."""
        user = {"role": "user", "content": text}
        prompt_text, prompt, dropped, max_tokens = self._fit([*self.messages, user])
        settings = self.settings.with_(stop=tuple(dict.fromkeys(self.format.stops + self.settings.stop)),
                                       max_tokens=max_tokens)
        if settings.seed is not None:
            settings = settings.with_(seed=(settings.seed + self.turns) % 2**63)
        reused = min(common_prefix(self.base.tokens, prompt), len(prompt) - 1)
        stream = self.engine.stream(prompt, settings, cancel=cancel, reuse_prefix=True)
        trim = Trimmed()
        for event in stream:
            piece = trim.push(event.text)
            if piece:
                yield piece
        result = stream.result
        self.turns += 1
        self.last = Turn(result, len(prompt), reused, dropped)
        self._remember(user, prompt_text, prompt, result)

    def _fit(self, messages: list[dict]) -> tuple[str, list[int], int, int]:
        """The prompt for `messages` plus a reply; drops the oldest turns while it would overflow the context."""
        n_ctx, want = self.base.n_ctx, self.settings.max_tokens
        dropped = 0
        while True:
            prompt_text = self.format.render(messages, add_generation_prompt=True)
            if dropped == 0 and prompt_text.startswith(self._rendered):
                prompt = self._tokens + render_tokens(self.base, self.format, prompt_text[len(self._rendered):],
                                                      whole=False)
            else:
                prompt = render_tokens(self.base, self.format, prompt_text, whole=True)
            if len(prompt) + want <= n_ctx or len(messages) <= 1:
                break
            messages = messages[2:]  # the oldest user message and its reply
            dropped += 1
        room = n_ctx - len(prompt)
        if room < min(want, MIN_REPLY_TOKENS):
            raise PromptError(f"the message does not fit: the conversation would be {len(prompt)} tokens and the "
                              f"context holds {n_ctx}; shorten it, /reset, or raise --ctx")
        if dropped:
            self.messages = messages[:-1]
            self.notify(f"context full: dropped the {dropped} oldest turn{'s' if dropped > 1 else ''}")
        return prompt_text, prompt, dropped, min(want, room)

    def _remember(self, user: dict, prompt_text: str, prompt: list[int], result) -> None:
        reply = {"role": "assistant", "content": result.text.strip()}
        self.messages += [user, reply]
        full = self.format.render(self.messages, add_generation_prompt=False)
        spoken = prompt_text + result.text
        if full.startswith(spoken):
            said = kept_tokens(self.base, result.token_ids, result.text)
            self._tokens = prompt + said + render_tokens(self.base, self.format, full[len(spoken):], whole=False)
        else:  # the template rewrote the reply (e.g. stripped it): re-tokenise; prefill still reuses the prefix
            self._tokens = render_tokens(self.base, self.format, full, whole=True)
        self._rendered = full

    # -- commands --

    def command(self, line: str) -> CommandOutput:
        name, *args = line.strip().split()
        name = name.lower()
        if name in ("/exit", "/quit"):
            return CommandOutput("", exit=True)
        if name == "/help":
            return CommandOutput(HELP)
        if name == "/reset":
            self.reset()
            self.last = None
            return CommandOutput("conversation reset")
        if name == "/stats":
            return CommandOutput(self.stats_text())
        if name == "/gate":
            return CommandOutput(self._gate(args))
        if name == "/objective":
            return CommandOutput(self._objective(args))
        return CommandOutput(f"unknown command {name}; /help lists the commands")

    def _objective(self, args: list[str]) -> str:
        if len(args) != 1:
            current = self.engine.value_model.path.name if self.engine.value_model else "none"
            return f"usage: /objective NAME with NAME one of {', '.join(OBJECTIVES)} (now: {current})"
        try:
            reason = self.engine.use_value_model(args[0])
        except SiaError as exc:
            return f"not changed: {exc}"
        return f"objective: {args[0]} ({self.engine.value_model.path.name}; {reason})"

    def _describe(self) -> str:
        """The steering chain as the next reply runs it: the objective's weight scale applies to a default w."""
        return self.settings.with_value_model(self.engine.value_model).describe()

    def stats_text(self) -> str:
        lines = [f"format: {self.format.name} | steering: {self._describe()}",
                 f"context: {len(self._tokens)} of {self.base.n_ctx} tokens, {len(self.messages) // 2} turns"]
        if self.last is None:
            return "\n".join(lines + ["no reply yet"])
        st, turn = self.last.result.stats, self.last
        lines.append(f"last reply: {st.tokens} tokens | {st.junctions} junctions ({100 * st.junction_ratio:.0f}%) | "
                     f"{st.tokens_per_second:.1f} tok/s | stop: {self.last.result.stop_reason} | seed {st.seed}")
        lines.append(f"prompt: {turn.prompt_tokens} tokens, {turn.reused_tokens} reused from the KV cache, "
                     f"{turn.prompt_tokens - turn.reused_tokens} decoded in {st.prefill_seconds:.3f} s")
        return "\n".join(lines)

    def _gate(self, args: list[str]) -> str:
        if not args or args[0] not in GATES or len(args) > 2:
            return f"usage: /gate NAME [X] with NAME one of {', '.join(GATE_NAMES)}"
        name = args[0]
        if GATES[name].steers and self.engine.value_model is None:
            return f"no value model is loaded for {self.base.name}: only /gate none is possible"
        try:
            parameter = GATES[name].parameter
            if len(args) > 1 and parameter is None:
                return f"gate {name} takes no number"
            value = PARAMETERS[parameter].parse(args[1]) if len(args) > 1 else None
            # a new gate starts from its defaults: /gate online 0.3 then /gate entropy 0.7 must not keep ratio 0.3
            self.settings = self.engine.settings(self.settings.with_gate(name, value))
        except SiaError as exc:
            return f"not changed: {exc}"
        return f"gate: {self._describe()}"
