"""The embedding API: build an Engine once, then `generate(...)` or `stream(...)` from any thread."""

from __future__ import annotations

import os
import secrets
import threading
from typing import Callable, Iterator

from .base_model import DEFAULT_CONTEXT, BaseModel
from .batch import DEFAULT_BATCH_SIZE, BatchOutput, BatchRequest, run_batched
from .decoder import Decoding, GenerationResult, TokenEvent
from .errors import InvalidSettingError, PromptError, QueueTimeoutError, ValueModelError
from .models import cached_fingerprint, choose_value_model, resolve_base_model, weights_fingerprint
from .scheduler import DEFAULT_CACHE_RAM_MB, DEFAULT_PREFILL_CHUNK, Request, Scheduler, cancelled_in_line, read_events
from .settings import GenerationSettings

DEFAULT_PARALLEL = 4  # slots for concurrent requests: a laptop-sized default, like llama.cpp's server
MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ: more sequences than this and it cannot create the batched context

Cancel = Callable[[], bool] | threading.Event | None


class Engine:
    """A base model plus (optionally) a value model, loaded once.

    `parallel` > 1: generations asked for from several threads at once run together, each in a slot of one
    batched llama.cpp context (continuous batching, sia_edge/scheduler.py): a request joins at the next step and
    leaves its slot as soon as it ends; the junctions of all slots are scored in one value-model call per step.
    Every slot holds up to `n_ctx` tokens of KV cache of its own, so the slots' context takes `parallel` x `n_ctx`
    cells (~18 KB each for Gemma 3 270M: 4 x 2048 ~ 150 MB, 64 x 2048 ~ 2.4 GB), allocated while requests come and
    freed after 30 s idle; `parallel` is at most 256 (MAX_PARALLEL).
    `parallel=1`: one generation at a time on the model's own context, the others wait; a seed then replays
    exactly, which batching cannot promise (batched logits depend on which requests share the step). Nothing is
    global, so several engines (e.g. two models) can live in one process.

    >>> engine = Engine()                                  # built-in Gemma 3 270M + shipped sentiment value model
    >>> result = engine.generate("The movie was", max_tokens=32, seed=1)
    >>> result.stats.junction_ratio                         # share of steps the value model steered
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        value_model: str | os.PathLike | None = None,
        n_ctx: int = DEFAULT_CONTEXT,
        threads: int | None = None,
        gpu_layers: int = 0,
        value_threads: int = 1,
        use_value_model: bool = True,
        calibration: str | os.PathLike | None = None,
        parallel: int = DEFAULT_PARALLEL,
        prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
        prefix_reuse: bool = True,
        cache_ram_mb: float = DEFAULT_CACHE_RAM_MB,
    ) -> None:
        """`prefill_chunk`, `prefix_reuse` and `cache_ram_mb` shape the slots of `parallel` > 1
        (sia_edge/scheduler.py): prompt tokens read per round beside the other slots' steps (None: each prompt read
        whole, alone); whether a slot keeps its KV cells so the next prompt that starts the same way decodes only
        what differs; and host RAM for the KV cells of conversations that lost their slot to another."""
        if n_ctx < 16:
            raise InvalidSettingError(f"n_ctx must be >= 16, got {n_ctx}")
        if parallel < 1:
            raise InvalidSettingError(f"parallel must be >= 1, got {parallel}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise InvalidSettingError(f"prefill_chunk must be >= 1 (or None: a prompt read whole), got {prefill_chunk}")
        if parallel > MAX_PARALLEL:  # else every request would fail later, when the slots' context is made
            raise InvalidSettingError(f"parallel must be <= {MAX_PARALLEL} (the most sequences llama.cpp decodes in "
                                      f"one context), got {parallel}")
        self.base = BaseModel(resolve_base_model(model), n_ctx=n_ctx, n_threads=threads, gpu_layers=gpu_layers)
        self.fingerprint = cached_fingerprint(self.base.path, lambda: self.base.fingerprint)
        # which hidden-state value models serve this model (a hash of the file: ~1 s once, then cached)
        self.weights = weights_fingerprint(self.base.path) if use_value_model else None
        self.value_threads = value_threads
        self._loaded: dict[str, object] = {}  # value models by resolved path: objectives switched to stay loaded
        self.value_model = None
        self.value_model_reason = "not loaded (not needed)"
        if use_value_model:
            self.value_model, self.value_model_reason = self._load_value_model(value_model, required=False)
        self.calibration = calibration  # explicit calibration file for `ratio`; else cache, else shipped
        self._lock = threading.Lock()  # the model's own context (and generate_many's batch): one user at a time
        self._closed = False
        self.parallel = parallel
        if cache_ram_mb < 0:
            raise InvalidSettingError(f"cache_ram_mb must be >= 0, got {cache_ram_mb}")
        self._scheduler = (Scheduler(self.base, parallel, self.base.n_ctx, prefill_chunk, prefix_reuse, cache_ram_mb)
                           if parallel > 1 else None)

    def load(self) -> dict:
        """How busy the engine is: slots busy and requests queued now; generations served, cancelled and failed,
        requests the queue timeout turned away, batched rounds and value-model calls, since it started."""
        if self._scheduler is not None:
            return self._scheduler.load()
        busy = self._lock.locked()
        return {"parallel": 1, "busy": int(busy), "queued": None, **dict.fromkeys(
            ("served", "cancelled", "errors", "rejected", "rounds", "value_model_calls", "prompt_tokens",
             "cached_tokens", "restored"))}

    def value_model_for(self, spec: str | os.PathLike | None):
        """The value model an objective name (`sentiment`, `clean`) or ONNX file names, loaded once and kept;
        None: the engine's current one."""
        if spec is None:
            return self.value_model
        return self._load_value_model(spec, required=True)[0]

    def use_value_model(self, spec: str | os.PathLike) -> str:
        """Steer toward another objective (or value-model file) from now on; returns why that model was chosen."""
        self.value_model, self.value_model_reason = self._load_value_model(spec, required=True)
        return self.value_model_reason

    def _load_value_model(self, spec, required: bool):
        choice = choose_value_model(spec, self.fingerprint, self.weights)
        if choice.path is None:
            if required:
                raise ValueModelError(f"no value model for {spec!r}: {choice.reason}")
            return None, choice.reason
        key = str(choice.path.resolve())
        if key not in self._loaded:
            from .value_model import open_value_model

            model = open_value_model(choice.path, threads=self.value_threads)
            if model.reads_hidden:
                model.bind(self.weights or weights_fingerprint(self.base.path), self.base.name, self.base.n_embd,
                           self.base.n_vocab, texts=self.base.hidden_states, n_layer=self.base.n_layer)
            else:
                model.bind(self.fingerprint, self.base.name, self.base.token_bytes, self.base.n_vocab)
            self._loaded[key] = model
        return self._loaded[key], choice.reason

    def settings(self, settings: GenerationSettings | None = None, calibration: str | os.PathLike | None = None,
                 **overrides) -> GenerationSettings:
        """Defaults, then `settings`, then keyword overrides (GenerationSettings.updated: naming another gate resets
        the gate parameters, tau and ratio replace each other, both at once is refused); validated. A target
        `ratio` takes its tau from the calibration for this model (CalibrationError if the entropy gate has none):
        the `calibration` file, else the engine's, else the cached or shipped one."""
        from .calibration import resolve_ratio

        chosen = (settings or GenerationSettings()).updated(**overrides)
        return resolve_ratio(chosen, self.fingerprint, calibration or self.calibration)

    def stream(self, prompt: str | list[int], settings: GenerationSettings | None = None, cancel: Cancel = None,
               log_probs: bool = False, value_model: str | os.PathLike | None = None,
               queue_timeout: float | None = None, reuse_prefix: bool = False, top_log_probs: int = 0,
               **overrides) -> "Stream":
        """Iterate the returned Stream for TokenEvents; its `.result` is the GenerationResult afterwards.
        `log_probs=True` fills each event's `log_prob` (the unsteered base model's log-probability of the token)
        and, at junctions, the candidates' log-probabilities and sampling probabilities before and after steering;
        `top_log_probs=n` also lists the n likeliest tokens of every step (`TokenEvent.top_log_probs`);
        `value_model` (an objective name or ONNX file) steers this generation toward another objective;
        `queue_timeout`: seconds to wait for a free slot before QueueTimeoutError [default: wait];
        `reuse_prefix` (parallel=1): decode only what the KV cache does not already hold of the prompt, as chat turns
        do. The first logits then differ in the last digits from a fresh prefill's, so a seed replays exactly only
        without it (the default)."""
        _check_queue_timeout(queue_timeout)
        if top_log_probs < 0:
            raise InvalidSettingError(f"top_log_probs must be >= 0, got {top_log_probs}")
        scorer = self.value_model_for(value_model)
        chosen = self._for_value_model(self.settings(settings, **overrides), scorer)
        tokens = self._prompt_tokens(prompt, chosen)
        seed = chosen.seed if chosen.seed is not None else secrets.randbits(32)
        if self._scheduler is not None:
            request = Request(tokens, chosen, seed, scorer, _as_callable(cancel) or (lambda: False), log_probs,
                              top_log_probs)
            return Stream(self, seed, request=request, queue_timeout=queue_timeout)
        decoding = Decoding(self.base, scorer, tokens, chosen, seed, _as_callable(cancel), log_probs,
                            reuse=reuse_prefix, top_log_probs=top_log_probs)
        return Stream(self, seed, decoding=decoding, queue_timeout=queue_timeout)

    def generate(self, prompt: str | list[int], settings: GenerationSettings | None = None, cancel: Cancel = None,
                 **overrides) -> GenerationResult:
        stream = self.stream(prompt, settings, cancel, **overrides)
        for _ in stream:
            pass
        return stream.result

    def generate_many(self, prompts: list[str | list[int]], settings: GenerationSettings | None = None,
                      seeds: list[int] | None = None, batch_size: int = DEFAULT_BATCH_SIZE, cancel: Cancel = None,
                      log_probs: bool = False, value_model: str | os.PathLike | None = None,
                      queue_timeout: float | None = None, **overrides) -> Iterator[BatchOutput]:
        """Generate from every prompt (prompt i with seeds[i]), `batch_size` sequences decoded together.

        Returns an iterator of BatchOutput (index, result, events), one as each finishes, in finishing order; bad
        arguments raise here, before any decoding. Same loop and settings
        as `generate`, ~2.5x the throughput on 2 cores; a seed reproduces a batched sample, but not bit for bit the
        sample `generate` draws with it (batched logits differ in the last float digits). Holds the engine lock
        (QueueTimeoutError if it stays taken for `queue_timeout` seconds); it does not use the scheduler's slots.
        """
        if batch_size < 1:
            raise InvalidSettingError(f"batch_size must be >= 1, got {batch_size}")
        _check_queue_timeout(queue_timeout)
        scorer = self.value_model_for(value_model)
        chosen = self._for_value_model(self.settings(settings, **overrides), scorer)
        if seeds is None:
            seeds = [secrets.randbits(32) for _ in prompts]
        if len(seeds) != len(prompts):
            raise InvalidSettingError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        requests = [BatchRequest(self._prompt_tokens(p, chosen), chosen.with_(seed=s), s)
                    for p, s in zip(prompts, seeds)]
        return self._run_batched(requests, batch_size, self._or_closed(_as_callable(cancel)), log_probs, scorer,
                                 queue_timeout)

    def _run_batched(self, requests: list[BatchRequest], batch_size: int, cancel, log_probs: bool, scorer,
                     queue_timeout: float | None = None):
        self._take_turn(queue_timeout)
        try:
            for output in run_batched(self.base, scorer, requests, batch_size, cancel, log_probs,
                                      max_context=self.base.n_ctx):
                if self._closed:  # its samples stopped 'cancelled' for close(), not for the caller
                    raise RuntimeError("the engine was closed")
                yield output
        finally:
            self._lock.release()

    def _take_turn(self, queue_timeout: float | None) -> None:
        """Take the engine's lock (one generation at a time on it), or QueueTimeoutError after queue_timeout s."""
        if not self._lock.acquire(timeout=-1 if queue_timeout is None else queue_timeout):
            raise QueueTimeoutError(f"the engine stayed busy for {queue_timeout:g} s (one generation at a time); "
                                    f"try again later")
        if self._closed:
            self._lock.release()
            raise RuntimeError("the engine was closed")

    def _or_closed(self, cancel: Callable[[], bool] | None) -> Callable[[], bool]:
        """The caller's cancel, or the engine being closed: what a generation under the lock stops for."""
        return lambda: self._closed or bool(cancel and cancel())

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        return self.base.tokenize(text, add_bos=add_bos)

    def _prompt_tokens(self, prompt: str | list[int], settings: GenerationSettings) -> list[int]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty: give some text to continue")
            tokens = self.base.tokenize(prompt)
        else:
            tokens = [int(t) for t in prompt]
            if not tokens:
                raise PromptError("the prompt is empty: give some text to continue")
            outside = [t for t in tokens if not 0 <= t < self.base.n_vocab]
            if outside:  # llama.cpp would read out of bounds
                raise PromptError(f"prompt token id {outside[0]} is outside the vocabulary (0..{self.base.n_vocab - 1})")
        if len(tokens) >= self.base.n_ctx:
            raise PromptError(f"the prompt is {len(tokens)} tokens but the context holds {self.base.n_ctx}; "
                              f"shorten it or raise the context size (--ctx)")
        if settings.top_k > self.base.n_vocab:
            raise InvalidSettingError(f"top_k must be <= the vocabulary size {self.base.n_vocab}, "
                                      f"got {settings.top_k}")
        return tokens

    def _for_value_model(self, settings: GenerationSettings, scorer) -> GenerationSettings:
        """The settings as they steer with this value model: its weight scale multiplies the gate's default w (an
        explicit weight is used as given). ValueModelError if they steer and there is no value model."""
        if scorer is not None:
            return settings.with_value_model(scorer)
        if settings.steers:
            raise ValueModelError(
                f"gate {settings.gate!r} needs a value model and none ships for {self.base.name}; "
                f"pass --value-model (train one with `sia-edge vm train`) or use --gate none"
            )
        return settings

    def close(self) -> None:
        """Free the models. Generations under way stop at their next step and raise RuntimeError('the engine was
        closed'); close() waits for them, since freeing llama.cpp's model under a decode crashes the process (a
        stream started but never read holds the engine until it is read or closed)."""
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.close()  # fails the slots' requests and joins the worker, which frees their context
        with self._lock:  # the generation on the model's own context (or generate_many's batch) has stopped
            self.base.close()


class Stream:
    """A generation asked for. Iterate it for TokenEvents; `result` is set when the iteration ends.

    It waits for its turn (a slot, or the engine's lock with parallel=1) when iteration begins, or earlier with
    `start()`: a server calls that to turn a long queue into a 503 before it sends any response. After `start()`,
    iterate it or `close()` it, or its slot stays taken.
    """

    def __init__(self, engine: Engine, seed: int, decoding: Decoding | None = None, request: Request | None = None,
                 queue_timeout: float | None = None) -> None:
        self._engine = engine
        self._decoding = decoding
        self._request = request
        self._queue_timeout = queue_timeout
        self._events: Iterator[TokenEvent] | None = None
        self._holds_lock = False
        self.seed = seed
        self.result: GenerationResult | None = None

    def start(self) -> "Stream":
        """Wait for a slot now; QueueTimeoutError (and nothing generated) if none frees within queue_timeout."""
        if self._events is None:
            if self._request is not None:
                scheduler = self._engine._scheduler
                scheduler.submit(self._request)
                try:
                    scheduler.wait_admitted(self._request, self._queue_timeout)
                except BaseException:  # timed out (already withdrawn), or Ctrl-C while in line
                    scheduler.abandon(self._request)
                    raise
                self._events = read_events(scheduler, self._request)
            else:
                self._engine._take_turn(self._queue_timeout)
                self._holds_lock = True
                self._decoding.cancel = self._engine._or_closed(self._decoding.cancel)
                self._events = self._alone()
        return self

    def __iter__(self) -> Iterator[TokenEvent]:
        self.start()
        self.result = yield from self._events

    def _alone(self):
        decoding = self._decoding
        try:
            if not decoding.cancel():  # else cancelled while it waited for the engine: its prefill would only delay
                yield from decoding    # whoever waits next
            result = decoding.result or cancelled_in_line(decoding.prompt_tokens, decoding.settings, decoding.seed)
            if self._engine._closed and result.stop_reason == "cancelled":
                raise RuntimeError("the engine was closed")  # as in the slots: it did not stop for its caller
            return result
        finally:
            self._release()

    def close(self) -> None:
        """Give up the generation (or the slot `start()` took) without reading further."""
        if self._events is not None:
            self._events.close()
        if self._request is not None:
            self._engine._scheduler.abandon(self._request)
        self._release()

    def _release(self) -> None:
        if self._holds_lock:
            self._holds_lock = False
            self._engine._lock.release()


def _check_queue_timeout(queue_timeout: float | None) -> None:
    if queue_timeout is not None and not queue_timeout >= 0:
        raise InvalidSettingError(f"queue_timeout must be >= 0 seconds, got {queue_timeout}")


def _as_callable(cancel: Cancel) -> Callable[[], bool] | None:
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel
