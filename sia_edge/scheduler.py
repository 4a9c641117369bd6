"""Continuous batching for an Engine: generations asked for from many threads share the slots of one BatchContext.

One worker thread runs the rounds. A round admits waiting requests into free slots, advances every active
generation by one step (the `Decoding.steps` loop: logits, gate, junction, choice), scores the junctions of all
slots that share a value model in one batched call (a fold call and a scoring call, however many slots are at a
junction), then feeds every slot's next token to llama.cpp in one decode. A finished, failed or cancelled request
frees its slot at once; the next waiting request takes it in the following round.

Two things keep a conversation cheap, as in llama.cpp's server. A slot keeps its tokens' KV cells after its request
ends, and a new request goes to the free slot whose cached tokens share the longest prefix with its prompt (ties:
the least recently used), decoding only what differs (`prefix_reuse`). And a new prompt is read in chunks of
`prefill_chunk` tokens inside the round's one decode, so the other slots keep streaming while it is read.

Each request keeps its own settings, seed, cancel flag and value model. Its events go to its caller through a
queue, so the caller's thread only waits. Batched logits equal single-sequence logits to float tolerance only,
and depend on which other requests share the round: a seed replays exactly only through `Engine(parallel=1)`.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .decoder import PREFILLING, Decoding, GenerationResult, GenerationStats, TokenEvent
from .junctions import Junction, score_junctions
from .base_model.batch_context import DEFAULT_PREFILL_CHUNK
from .errors import QueueTimeoutError

DEFAULT_CACHE_RAM_MB = 256.0  # host RAM for conversations that lost their slot (SavedSequences)

# The worker exits after this long without work, freeing the slots' KV cells (a new request starts it again, with
# empty slots): long enough that a person reading a reply and typing the next turn finds the conversation cached.
_IDLE_SECONDS = 600.0


@dataclass(eq=False)  # a request is itself: found in the line by identity
class Request:
    """One generation handed to the scheduler; its caller reads `events` until a result or an error arrives."""

    prompt_tokens: list[int]
    settings: object  # GenerationSettings, validated by the engine
    seed: int
    value_model: object | None
    cancel: Callable[[], bool]
    log_probs: bool = False
    top_log_probs: int = 0
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    admitted: threading.Event = field(default_factory=threading.Event)  # out of the line: a slot, or failed
    abandoned: bool = False  # the caller went away: stop at the next step

    def stopped(self) -> bool:
        return self.abandoned or self.cancel()


@dataclass
class _Done:
    result: GenerationResult


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Slotted:
    request: Request
    decoding: Decoding
    steps: Iterator


class Scheduler:
    """The slots, the waiting line and the worker thread of one Engine (`parallel` > 1)."""

    def __init__(self, base, n_slots: int, n_ctx_per_slot: int, prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
                 prefix_reuse: bool = True, cache_ram_mb: float = DEFAULT_CACHE_RAM_MB) -> None:
        """`prefill_chunk`: prompt tokens read per round beside the other slots' steps (None: a prompt is read
        whole, alone, at its first round). `prefix_reuse`: a slot keeps its KV cells for the next prompt.
        `cache_ram_mb`: host RAM for the KV cells of conversations that lost their slot (0: none)."""
        self.base = base
        self.n_slots = n_slots
        self.n_ctx_per_slot = n_ctx_per_slot
        self.prefill_chunk = prefill_chunk
        self.prefix_reuse = prefix_reuse
        self._last_used = [0] * n_slots  # round at which each slot's last request ended: ties go to the oldest
        self._saved = SavedSequences(int(cache_ram_mb * 2**20) if prefix_reuse else 0)
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: dict[int, _Slotted] = {}  # slot index -> its generation; changed by the worker only
        self._context = None  # BatchContext, made by the worker when first needed
        self._worker: threading.Thread | None = None
        self._closed = False
        self.counts = {"served": 0, "cancelled": 0, "errors": 0, "rejected": 0, "rounds": 0,
                       "value_model_calls": 0, "prompt_tokens": 0, "cached_tokens": 0, "restored": 0}

    # -- the callers' side --

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="sia-edge-scheduler", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def wait_admitted(self, request: Request, timeout: float | None) -> None:
        """Block until the request has a slot. The timeout counts only while no slot is free for it: a request
        that a free slot awaits is admitted at the worker's next round, however long the current one (another
        request's prefill, say) takes. After `timeout` seconds with every slot taken or claimed by requests ahead
        of it, it is withdrawn and QueueTimeoutError raised (nothing of it ran)."""
        if request.admitted.wait(timeout):
            return
        with self._cond:
            if request in self._waiting and not self._slot_awaits_locked(request):
                self._waiting.remove(request)
                self.counts["rejected"] += 1
                ahead = sum(not r.stopped() for r in self._waiting)  # the line it was in, without it
                raise QueueTimeoutError(
                    f"no slot came free for this request within {timeout:g} s ({len(self._active)} of "
                    f"{self.n_slots} slots busy, {ahead} other request{'s' if ahead != 1 else ''} in line); "
                    f"try again later")
        request.admitted.wait()  # a slot is free for it (or it was just admitted, or failed): the next round

    def _slot_awaits_locked(self, request: Request) -> bool:
        """Whether the next admission round gives this waiting request a slot: fewer live requests are ahead of
        it in line than slots are free (a cancelled one ahead will leave the line instead)."""
        ahead = 0
        for other in self._waiting:
            if other is request:
                break
            ahead += not other.stopped()
        return ahead < self.n_slots - len(self._active)

    def abandon(self, request: Request) -> None:
        """The caller stopped reading: drop it from the queue, or stop it at its next step."""
        with self._cond:
            request.abandoned = True
            if request in self._waiting:
                self._waiting.remove(request)
                self.counts["cancelled"] += 1

    def load(self) -> dict:
        """Slots busy and requests queued now, and totals since start (served, cancelled, errors, rejected by the
        queue timeout, rounds, value-model calls, and prompt tokens admitted and of those found in a slot's KV
        cache)."""
        with self._cond:
            return {"parallel": self.n_slots, "busy": len(self._active), "queued": len(self._waiting),
                    **self.counts}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join()

    # -- the worker --

    def _run(self) -> None:
        try:
            while self._admit():
                self._round()
        except BaseException as exc:  # llama.cpp failed under every slot: tell their callers, start afresh
            with self._cond:
                self._fail_all_locked(exc)
                self._retire_locked()

    def _admit(self) -> bool:
        """Fill free slots from the queue; False when the worker should exit (closed, or idle too long)."""
        with self._cond:
            while not self._waiting and not self._active:
                if self._closed or not self._cond.wait(_IDLE_SECONDS) and not self._waiting:
                    self._retire_locked()
                    return False
            if self._closed:
                self._fail_all_locked(RuntimeError("the engine was closed"))
                self._retire_locked()
                return False
            if self._context is None:
                from .base_model import BatchContext

                self._context = BatchContext(self.base, self.n_slots, self.n_ctx_per_slot, self.prefill_chunk)
                self._last_used = [0] * self.n_slots
            self._drop_cancelled_locked()
            while self._waiting and len(self._active) < self.n_slots:
                request = self._waiting.popleft()
                index = self._place(request.prompt_tokens)
                slot = self._context.slots[index]
                decoding = Decoding(slot, request.value_model, request.prompt_tokens, request.settings,
                                    request.seed, request.stopped, request.log_probs,
                                    top_log_probs=request.top_log_probs, reuse=self.prefix_reuse)
                self._active[index] = _Slotted(request, decoding, decoding.steps())
                request.admitted.set()
            return True

    def _place(self, prompt: list[int]) -> int:
        """The free slot for a new prompt: the one whose cached tokens save the most decoding, or the least recently
        used. A conversation kept in host RAM that saves more is restored into it first; what the slot held and
        would lose goes to host RAM."""
        index, shared = self._best_slot(prompt)
        slot = self._context.slots[index]
        saved, saved_shared = self._saved.best(prompt)
        if saved is not None and saved_shared > shared:
            self._saved.keep(slot)
            self._saved.take(saved)
            if slot.restore(saved):
                self.counts["restored"] += 1
        elif shared == 0:
            self._saved.keep(slot)
        return index

    def _best_slot(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot whose cached tokens share the longest useful prefix with `prompt` (the least decoding),
        the least recently used among equals; and that prefix's length.

        A shared prefix counts only if it is at least half of what the slot holds: a new conversation that shares
        just the chat template's first tokens with a cached one takes an empty or the oldest slot instead of
        destroying that conversation to save a few tokens (llama.cpp's --slot-prompt-similarity, measured on the
        cached side)."""
        free = [i for i in range(self.n_slots) if i not in self._active]
        if not self.prefix_reuse:
            return free[0], 0
        shared = {i: useful_prefix(self._context.slots[i].tokens, prompt) for i in free}
        index = max(free, key=lambda i: (shared[i], -self._last_used[i]))
        return index, shared[index]

    def _round(self) -> None:
        """One step of every active generation, their junctions scored together per value model, one decode."""
        waiting: dict[int, Junction] = {}
        for index in list(self._active):
            item = self._advance(index, None)
            if isinstance(item, Junction):
                waiting[index] = item
        by_model: dict[int, list[int]] = {}
        for index, junction in waiting.items():
            by_model.setdefault(id(junction.view.value_model), []).append(index)
        for indexes in by_model.values():
            model = waiting[indexes[0]].view.value_model
            calls_before = model.calls
            try:
                rewards = score_junctions([waiting[i] for i in indexes])
            except Exception as exc:  # a broken value model fails its own requests only
                for i in indexes:
                    self._finish(i, _Failed(exc))
                continue
            self.counts["value_model_calls"] += model.calls - calls_before
            for i, reward in zip(indexes, rewards):
                self._advance(i, reward)
        self._context.flush()
        self.counts["rounds"] += 1

    def _advance(self, index: int, reply: np.ndarray | None) -> Junction | None:
        """Send the slot's generation its reply; pass a token event to its caller; return a Junction if it
        waits for scores."""
        slotted = self._active[index]
        try:
            item = slotted.steps.send(reply)
        except StopIteration:
            self._finish(index, _Done(slotted.decoding.result))
            return None
        except Exception as exc:
            self._finish(index, _Failed(exc))
            return None
        if isinstance(item, Junction):
            return item
        if item is PREFILLING:  # its prompt is still being read, a chunk per round
            return None
        slotted.request.events.put(item)
        if item.token_id < 0:  # the held-back tail of a stop string: the generation's last event
            return self._advance(index, None)
        return None

    def _finish(self, index: int, outcome: _Done | _Failed) -> None:
        slot = self._context.slots[index]
        if isinstance(outcome, _Failed) or not self.prefix_reuse:
            slot.clear()
        else:
            slot.release()  # its KV cells stay for the next prompt that starts the same way
        self._last_used[index] = self.counts["rounds"]
        with self._cond:  # callers count the free slots (wait_admitted) under this lock
            slotted = self._active.pop(index)
            stats = getattr(slotted.decoding, "stats", None)
            if stats is not None:
                self.counts["prompt_tokens"] += stats.prompt_tokens
                self.counts["cached_tokens"] += stats.cached_tokens
            if isinstance(outcome, _Failed):
                self.counts["errors"] += 1
            elif outcome.result.stop_reason == "cancelled":
                self.counts["cancelled"] += 1
            else:
                self.counts["served"] += 1
        slotted.request.events.put(outcome)

    def _drop_cancelled_locked(self) -> None:
        """Requests cancelled while in line leave it before they take a slot: admitting one would run its whole
        prefill inside a round, stalling every active slot, only to stop at its first step."""
        for request in [r for r in self._waiting if r.stopped()]:
            self._waiting.remove(request)
            self.counts["cancelled"] += 1
            request.events.put(_Done(cancelled_in_line(request.prompt_tokens, request.settings, request.seed)))
            request.admitted.set()  # out of the line: its caller stops waiting and reads the result

    def _retire_locked(self) -> None:
        """The worker is leaving: free the llama.cpp context (its KV cells) until work comes again."""
        self._saved.clear()  # sequence states belong to the context they came from
        if self._context is not None:
            self._context.close()
            self._context = None
        self._worker = None

    def _fail_all_locked(self, exc: BaseException) -> None:
        for slotted in self._active.values():
            slotted.request.events.put(_Failed(exc))
        for request in self._waiting:
            request.events.put(_Failed(exc))
            request.admitted.set()  # out of the line: its caller stops waiting and reads the error
        self.counts["errors"] += len(self._active) + len(self._waiting)
        self._active.clear()
        self._waiting.clear()


def useful_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many of `cached` a new `prompt` can keep: their common prefix, if it is at least half of `cached`
    (else 0: not worth destroying the rest for)."""
    from .base_model import common_prefix

    shared = common_prefix(cached, prompt)
    return shared if 2 * shared >= len(cached) > 0 else 0


class SavedSequences:
    """Host-RAM copies of conversations' KV cells that lost their slot (llama.cpp's server --cache-ram): a later
    turn of one is restored into a slot instead of read again. Least recently kept first out, within `budget`
    bytes (Gemma 3 270M: ~18 KB per token, so 256 MB holds ~14,000 tokens)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: list = []  # SavedSequence, oldest first

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def keep(self, slot) -> None:
        """Save what `slot` holds before it is overwritten (nothing if it holds nothing or is over budget)."""
        tokens = slot.tokens
        if not tokens or self.budget <= 0:
            return
        saved = slot.save()
        if saved.nbytes > self.budget:
            return
        # an entry this one extends is superseded by it
        self.entries = [e for e in self.entries if e.tokens != tokens[:len(e.tokens)]]
        self.entries.append(saved)
        while self.nbytes > self.budget:
            self.entries.pop(0)

    def best(self, prompt: list[int]) -> tuple[object | None, int]:
        """The saved sequence that saves `prompt` the most decoding, and how many tokens."""
        best, shared = None, 0
        for entry in self.entries:
            n = useful_prefix(entry.tokens, prompt)
            if n > shared:
                best, shared = entry, n
        return best, shared

    def take(self, entry) -> None:
        self.entries.remove(entry)

    def clear(self) -> None:
        self.entries = []


def cancelled_in_line(prompt_tokens: list[int], settings, seed: int) -> GenerationResult:
    """The result of a generation cancelled before it had a slot (or the engine): nothing decoded or generated."""
    stats = GenerationStats(prompt_tokens=len(prompt_tokens), seed=seed)
    return GenerationResult("", "cancelled", stats, [], settings.as_dict(), settings.describe())


def read_events(scheduler: Scheduler, request: Request) -> Iterator:
    """The caller's side of a submitted request: its TokenEvents, then its GenerationResult as the generator's
    return value. Leaving early (break, close, an exception) cancels it at its next step."""
    finished = False
    try:
        while True:
            item = request.events.get()
            if isinstance(item, TokenEvent):
                yield item
            elif isinstance(item, _Done):
                finished = True
                return item.result
            else:
                finished = True
                raise item.error
    finally:
        if not finished:
            scheduler.abandon(request)
