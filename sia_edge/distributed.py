"""Generation work on Ray actors (`--ray [ADDRESS]` of eval, calibrate and vm distill). The only module that imports
ray, and only inside functions: the runtime never needs it (`pip install 'sia-edge[ray]'` when you do).

Each actor holds one Engine (models loaded once per actor, `threads` llama.cpp threads, one Ray CPU per thread).
`RayPool.map(work, batches)` runs `work(engine, batch)` on the actors, one batch at a time per actor, and yields
(index, result) as batches finish. The callers cut their work into fixed batches (batch.fixed_batches) and decode
each batch as one `generate_many` call, exactly as they do in-process (batch.run_batches), so a run gives the same
samples on Ray as without it; each caller writes the results to its own resumable file as they arrive.

Failures: a batch whose actor dies (a crash, a lost node) or whose work raises anything but a sia-edge error is
reported on stderr and run again (on a fresh actor if the old one died), at most MAX_ATTEMPTS times in all. Each
batch's result is yielded once, so nothing is lost or written twice. A sia-edge error (bad input) is raised at once.

Test hook: SIA_EDGE_RAY_CRASH_BATCHES=0,2 makes the first attempt of batches 0 and 2 kill their actor's process
(once per pool), so the retry path can be tested on a real Ray.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .base_model import DEFAULT_CONTEXT
from .errors import InvalidSettingError, SiaError

RAY_MISSING = "Ray is not installed: pip install 'sia-edge[ray]'"
LOCAL = "local"  # `--ray` without an address: start Ray on this machine
MAX_ATTEMPTS = 3  # a batch runs at most this often: the first attempt and two retries
CRASH_ENV = "SIA_EDGE_RAY_CRASH_BATCHES"


def import_ray():
    try:
        import ray
    except ImportError:
        raise SiaError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class EngineSpec:
    """How each actor builds its Engine. A path must exist at the same place on every node; None means each node's
    built-in default base model and the value model shipped for it (`--value-model`/`$SIA_EDGE_*` apply there)."""

    model: str | None = None
    value_model: str | None = None
    n_ctx: int = DEFAULT_CONTEXT
    threads: int = 1
    gpu_layers: int = 0
    use_value_model: bool = True

    @classmethod
    def of(cls, model=None, value_model=None, **options) -> "EngineSpec":
        """Local files become absolute paths (a worker's working directory is not the driver's)."""
        def absolute(path):
            return None if path is None else str(Path(path).resolve()) if Path(path).exists() else str(path)

        return cls(model=absolute(model), value_model=absolute(value_model), **options)

    def build(self):
        from .engine import Engine

        return Engine(model=self.model, value_model=self.value_model, n_ctx=self.n_ctx, threads=self.threads,
                      gpu_layers=self.gpu_layers, use_value_model=self.use_value_model)


def engine_identity(engine) -> dict:
    """What the driver's models and every actor's must agree on: the tokenizer and the value model's bytes."""
    value_model = engine.value_model
    return {"model_fingerprint": engine.fingerprint,
            "value_model_sha256": hashlib.sha256(Path(value_model.path).read_bytes()).hexdigest()
            if value_model is not None else None}


class EngineActor:
    """The actor: one Engine, built once (RayPool wraps this class with ray.remote)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.engine = spec.build()

    def identity(self) -> dict:
        return engine_identity(self.engine)

    def run(self, work, batch, crash: bool = False):
        if crash:  # the test hook (CRASH_ENV): die as a crashed worker or a lost node would
            os._exit(1)
        return work(self.engine, batch)


class RayPool:
    """`actors` Ray actors holding an Engine each, started at the first `map`. `address` None or LOCAL starts Ray
    on this machine (`ray.init()`), anything else joins that cluster ('auto', 'ray://head:10001'). `expect`
    (engine_identity of the driver's engine, or a fingerprint alone) is checked against every actor's models."""

    def __init__(self, spec: EngineSpec, address: str | None = None, actors: int = 2, expect: dict | None = None,
                 log=None) -> None:
        if actors < 1:
            raise InvalidSettingError(f"--ray-actors must be at least 1, got {actors}")
        self.ray = import_ray()
        self.spec, self.address, self.n_actors, self.expect = spec, address, actors, expect
        self.log = log or (lambda message: print(f"sia-edge: {message}", file=sys.stderr, flush=True))
        self._crash = {int(part) for part in os.environ.get(CRASH_ENV, "").split(",") if part.strip()}
        self._actor_class = None
        self._actors: list = []
        self._started_ray = False
        self.retries = 0  # batches run again after a failure (for reports and tests)

    # --- actors ---------------------------------------------------------------------------------------------

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            address = None if self.address in (None, LOCAL) else self.address
            try:
                ray.init(address=address, include_dashboard=False, logging_level="warning")
            except Exception as exc:  # e.g. no cluster at that address
                raise SiaError(f"cannot start or join Ray at {address or 'this machine'}: {_first_line(exc)}"
                               ) from None
            self._started_ray = True
        cpus = ray.cluster_resources().get("CPU", 0)
        if self.n_actors * self.spec.threads > cpus:
            self.log(f"Ray has {cpus:g} CPUs; {self.n_actors} actors x {self.spec.threads} threads need more, so "
                     f"some actors wait until CPUs free up")
        self._actor_class = ray.remote(num_cpus=self.spec.threads, max_restarts=0)(EngineActor)
        self._actors = [self._actor_class.remote(self.spec) for _ in range(self.n_actors)]
        try:
            identities = ray.get([actor.identity.remote() for actor in self._actors])
        except ray.exceptions.RayError as exc:
            raise SiaError(f"a Ray actor could not load the models: {_first_line(_cause(exc))}") from None
        expected = self.expect or {}
        for identity in identities:
            wrong = [key for key, value in expected.items() if identity.get(key) != value]
            if wrong:
                raise SiaError(f"a Ray actor loaded other models than this machine ({', '.join(wrong)} differ): "
                               f"every node needs the same GGUF and value-model files (docs/ray.md)")

    def _replace(self, dead) -> object:
        self._actors.remove(dead)
        fresh = self._actor_class.remote(self.spec)
        self._actors.append(fresh)
        return fresh

    # --- work -----------------------------------------------------------------------------------------------

    def map(self, work, batches: list):
        """Yield (index, work(engine, batches[index])) for every batch, in the order they finish."""
        ray = self.ray
        if not self._actors:
            self._start()
        pending = deque(range(len(batches)))
        attempts = [0] * len(batches)
        idle = list(self._actors)
        running: dict = {}  # object ref -> (batch index, actor)
        while pending or running:
            while idle and pending:
                index, actor = pending.popleft(), idle.pop()
                crash = index in self._crash
                self._crash.discard(index)
                attempts[index] += 1
                running[actor.run.remote(work, batches[index], crash)] = (index, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the actor's process or node is gone
                failure, actor = _first_line(exc), self._replace(actor)
            except ray.exceptions.RayTaskError as exc:  # the work raised; the actor lives on
                cause = _cause(exc)
                if isinstance(cause, SiaError):
                    raise cause from None
                failure = f"{type(cause).__name__}: {_first_line(cause)}"
            else:
                idle.append(actor)
                yield index, result
                continue
            idle.append(actor)
            if attempts[index] >= MAX_ATTEMPTS:
                raise SiaError(f"batch {index} failed {MAX_ATTEMPTS} times on Ray actors (last: {failure}); the "
                               f"batches finished before it are kept, rerun to resume")
            self.retries += 1
            self.log(f"Ray batch {index} failed (attempt {attempts[index]} of {MAX_ATTEMPTS}): {failure}; retrying")
            pending.appendleft(index)

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
