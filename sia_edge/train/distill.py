"""Distil a sequence-level reward into a value model on the base model's own text (the SIA paper's Eq. 6).

    sample   the runtime's own loop (batched `Engine.generate_many`, gate none, the top-k and temperature steering
             uses) continues each prompt N times; optionally a share of the samples is steered (entropy gate);
    score    the reward scores each finished text once (prompt + continuation, or the continuation alone);
    train    every prefix of prompt + continuation (from the first generated token on) regresses onto the
             trajectory's standardised reward (squared error per prefix; `loss="mean"`: the paper's squared error
             of the mean over prefixes), with the same network and ONNX export as `vm train`.

Samples and their rewards live in a JSONL cache (one line per sample, with its seed): rerunning resumes, drawing
only the samples that are missing and scoring only the ones without a score for this reward. Its header records
what the samples depend on (the model file's sha256, the sampling settings, the steering's tau, w and value model);
a cache drawn with anything else is refused. Seeds come from (seed, prompt index, sample index), so a run is
reproducible and independent of the order samples finish in.
The value model reads exactly what the runtime feeds it: prompt tokens without BOS, then the generated token ids
(`input="tokens"`, the bag architecture), or those tokens' bytes (`input="bytes"`, the GRU: one model for any GGUF).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InvalidSettingError, TrainingDataError
from ..progress import progress_bar as make_bar  # `progress_bar` is a flag here
from .config import (ARCHITECTURES, DISTILL_ARCH, DISTILL_EPOCHS, DistillConfig,  # noqa: F401 (re-exported)
                     FitReport)
from .distill_fit import train_and_export

CACHE_FORMAT = 2  # 2: the header records the model's weights and the steered samples' settings
INPUT_KINDS = ("tokens", "bytes", "hidden")  # what the distilled value model reads
REWARD_ON = ("full", "continuation")
LOSSES = {"prefix": "prefix", "mean": "mean"}  # CLI name -> trainer loss
SCORE_CHUNK = 64  # texts per reward call; the cache is rewritten after each chunk


@dataclass(kw_only=True)
class DistillReport(FitReport):
    cache: str
    reward: str
    samples: int  # samples used (prompts x samples per prompt, minus empty continuations)
    sampled_now: int  # samples drawn in this run (the rest came from the cache)
    scored_now: int
    skipped_empty: int
    n_holdout_prompts: int
    reward_mean: float
    reward_sd: float
    holdout_metrics: list[dict] = field(default_factory=list)  # per fraction of each held-out continuation
    within_prompt_correlation: float = float("nan")  # full texts, after removing each prompt's mean
    junction_agreement: dict | None = None  # --input hidden --look-ahead: held-out junctions against the look-ahead
    sampling_seconds: float = 0.0


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampling seed of one sample: a hash of (run seed, prompt index, sample index), 32 bits."""
    digest = hashlib.sha256(f"sia-edge-distill:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def is_steered(seed: int, prompt_index: int, sample_index: int, share: float) -> bool:
    """Whether a sample is drawn with steering: a fixed uniform draw per sample, below `share`."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"sia-edge-distill-steer:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < share


# --- the cache -------------------------------------------------------------------------------------------------


class SampleCache:
    """JSONL: a header line (the sampling settings), then one line per sample. Appends as samples finish; rewards
    are written into the sample lines (the file is rewritten atomically after each scored chunk)."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = Path(path)
        self.header = header
        self.samples: dict[tuple[int, int], dict] = {}
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # interrupted mid-line: drop the partial sample
            raw = raw[: raw.rfind(b"\n") + 1]
            self.path.write_bytes(raw)
        lines = [line for line in raw.decode("utf-8").splitlines() if line.strip()]
        try:
            records = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"sample cache {self.path} is not JSONL ({exc.msg}); delete it or pass "
                                    f"another --cache") from None
        if not records or records[0].get("type") != "header":
            raise TrainingDataError(f"{self.path} is not a sia-edge distillation cache (no header line); delete "
                                    f"it or pass another --cache")
        previous = records[0]
        if previous.get("format") != self.header["format"]:
            raise InvalidSettingError(f"sample cache {self.path} has format {previous.get('format')}, this sia-edge "
                                      f"writes {self.header['format']} (format 1 did not record the model's weights "
                                      f"or the steering settings); pass another --cache or delete it")
        changed = sorted(k for k in self.header if previous.get(k) != self.header[k])
        if changed:
            shown = ", ".join(f"{k} {previous.get(k)!r} -> {self.header[k]!r}" for k in changed)
            raise InvalidSettingError(f"sample cache {self.path} was drawn with other settings ({shown}); "
                                      f"pass another --cache or delete it")
        for record in records[1:]:
            self.samples[(record["prompt_index"], record["sample_index"])] = record

    def add(self, record: dict) -> None:
        self.samples[(record["prompt_index"], record["sample_index"])] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _rewrite(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps({"type": "header", **self.header}) + "\n")
            for key in sorted(self.samples):
                handle.write(json.dumps(self.samples[key]) + "\n")
        os.replace(partial, self.path)

    def save(self) -> None:
        self._rewrite()


def cache_header(config: DistillConfig, fingerprint: str, weights_sha256: str | None,
                 steer_sha256: str | None) -> dict:
    """What a sample depends on (besides its prompt and seed): resuming with anything else is refused. The
    tokenizer's fingerprint is not enough (a GGUF with other weights can share it), and a steered sample depends on
    the steering's tau and w, whose defaults have changed before, so the header records them as they run."""
    steered = sample_settings(config)[True].as_ran() if config.steered_share > 0 else {}
    return {
        "format": CACHE_FORMAT, "source": "texts" if config.texts else "sampled",
        "model_fingerprint": fingerprint, "model_weights_sha256": weights_sha256, "seed": config.seed,
        "max_tokens": config.max_tokens, "top_k": config.top_k, "temperature": config.temperature,
        "steered_share": config.steered_share, "steer_value_model_sha256": steer_sha256,
        **{f"steer_{key}": steered.get(key) for key in STEERING_KEYS},
    }


STEERING_KEYS = ("gate", "signal", "tau", "weight", "reward_norm")  # of the steered samples' settings, as they ran


def sample_settings(config: DistillConfig) -> dict:
    """The generation settings of unsteered (False) and steered (True) samples: the runtime's loop with the
    sampling options of `config`, gate none, or the entropy gate at its defaults (tau, the gate's w)."""
    from ..settings import GenerationSettings

    base = GenerationSettings(top_k=config.top_k, temperature=config.temperature, max_tokens=config.max_tokens)
    return {False: base.with_(gate="none"), True: base.with_(gate="entropy")}


# --- stages ----------------------------------------------------------------------------------------------------


def sample_missing(config: DistillConfig, prompts: list[str], cache: SampleCache, engine_factory,
                   progress_bar: bool = True, pool=None) -> int:
    """Draw every (prompt, sample) not in the cache, in fixed batches of config.batch_size (unsteered ones first),
    here (an engine from `engine_factory`) or on `pool` (Ray actors); append each batch as it finishes. Returns how
    many were drawn."""
    from ..batch import fixed_batches, run_batches

    missing = [(p, s) for p in range(len(prompts)) for s in range(config.samples_per_prompt)
               if (p, s) not in cache.samples or cache.samples[(p, s)]["prompt"] != prompts[p]]
    if not missing:
        return 0
    engine = engine_factory() if pool is None else None
    settings = sample_settings(config)
    groups = {False: [], True: []}
    for p, s in missing:
        groups[is_steered(config.seed, p, s, config.steered_share)].append((p, s))
    batches = [SampleBatch([(p, s, sample_seed(config.seed, p, s), prompts[p]) for p, s in chunk],
                           settings[steered], steered)
               for steered, group in groups.items() for chunk in fixed_batches(group, config.sample_batch_size)]
    with make_bar(total=len(missing), desc="sampling", unit="sample", disable=not progress_bar) as bar:
        for _, records in run_batches(engine, sample_batch, batches, pool):
            for record in records:
                cache.add(record)
            bar.update(len(records))
    return len(missing)


@dataclass
class SampleBatch:
    jobs: list[tuple[int, int, int, str]]  # (prompt index, sample index, seed, prompt)
    settings: object  # GenerationSettings
    steered: bool


def sample_batch(engine, batch: SampleBatch) -> list[dict]:
    """The cache records of one batch, in finishing order: one `generate_many` call over exactly these jobs."""
    from ..decoder import value_model_tokens

    jobs = batch.jobs
    records = []
    for output in engine.generate_many([prompt for *_, prompt in jobs], batch.settings,
                                       seeds=[seed for _, _, seed, _ in jobs], batch_size=len(jobs)):
        p, s, seed, prompt = jobs[output.index]
        result = output.result
        records.append({
            "type": "sample", "prompt_index": p, "sample_index": s, "seed": seed, "steered": batch.steered,
            "prompt": prompt, "prompt_tokens": value_model_tokens(engine.tokenize(prompt), (), engine.base.bos_id),
            "continuation": result.text, "token_ids": list(result.token_ids), "stop_reason": result.stop_reason,
            "junctions": result.stats.junctions, "rewards": {},
        })
    return records


def read_texts(path: Path, column: str) -> list[str]:
    """Non-empty texts: one per line of a .txt file, else the `column` of a CSV (header row) or JSONL file."""
    from ..errors import PromptError
    from .data import _check_columns, _read_rows

    path = Path(path)
    if path.suffix.lower() == ".txt":
        from ..calibration import read_prompt_file

        return read_prompt_file(path)
    rows = _read_rows(path)
    _check_columns(path, rows, [column])
    texts = [str(row[column]) for _, row in rows if str(row[column] or "").strip()]
    if not texts:
        raise PromptError(f"{path}: every row has an empty {column!r}")
    return texts


def ingest_texts(config: DistillConfig, texts: list[str], cache: SampleCache, tokenizer) -> int:
    """Off-policy samples: each text as it is (no prompt), cut to max_tokens tokens; the reward reads the cut text,
    as the value model does. Returns how many were added."""
    added = 0
    for index, text in enumerate(texts):
        if (index, 0) in cache.samples and cache.samples[(index, 0)].get("text") == text:
            continue
        tokens = tokenizer.tokenize(text, add_bos=False)[: config.max_tokens]
        cache.add({"type": "sample", "prompt_index": index, "sample_index": 0, "seed": None, "steered": False,
                   "text": text, "prompt": "", "prompt_tokens": [], "continuation": tokenizer.detokenize(tokens),
                   "token_ids": tokens, "stop_reason": "text", "junctions": 0, "rewards": {}})
        added += 1
    return added


def reward_text(record: dict, reward_on: str) -> str:
    return record["continuation"] if reward_on == "continuation" else record["prompt"] + record["continuation"]


def score_missing(config: DistillConfig, keys: list[tuple[int, int]], cache: SampleCache, reward,
                  progress_bar: bool = True) -> int:
    """Score every sample in `keys` that has no score under this reward yet (key: spec and what it reads)."""
    from ..rewards import RewardError, checked

    key = reward_key(config)
    todo = [k for k in keys if key not in cache.samples[k].get("rewards", {})]
    if not todo:
        return 0
    scorer = checked(reward)
    with make_bar(total=len(todo), desc=f"scoring ({scorer.name})", unit="text", disable=not progress_bar) as bar:
        for start in range(0, len(todo), SCORE_CHUNK):
            chunk = todo[start : start + SCORE_CHUNK]
            texts = [reward_text(cache.samples[k], config.reward_on) for k in chunk]
            try:
                scores = scorer.score(texts, first_index=start,
                                      describe=lambda i: f"prompt {todo[i][0]}, sample {todo[i][1]}")
            except RewardError as exc:
                raise RewardError(f"{exc}; the {len(cache.samples)} samples drawn so far stay in {cache.path}"
                                  ) from None
            for k, value in zip(chunk, scores):
                cache.samples[k].setdefault("rewards", {})[key] = value
            cache.save()
            bar.update(len(chunk))
    return len(todo)


def reward_key(config: DistillConfig) -> str:
    return f"{config.reward}|{config.reward_on}"


def standardise(rewards: np.ndarray, reward_name: str) -> tuple[np.ndarray, float, float]:
    """(z, mean, sd); refuses rewards that are all equal (nothing to learn)."""
    mean, sd = float(rewards.mean()), float(rewards.std())
    if not sd > 1e-12 * max(1.0, abs(mean)):
        raise TrainingDataError(f"every sample got the same reward ({mean:g}) from {reward_name!r}: nothing to "
                                f"learn; use another reward, more samples or longer continuations")
    return ((rewards - mean) / sd).astype(np.float32), mean, sd


def split_prompts(n_prompts: int, holdout: float, seed: int) -> np.ndarray:
    """Sorted indices of the held-out prompts (at least one, never all): samples of one prompt stay together."""
    if n_prompts < 2:
        raise TrainingDataError(f"distillation needs at least 2 prompts (one is held out to measure the fit), "
                                f"got {n_prompts}")
    count = min(n_prompts - 1, max(1, int(round(holdout * n_prompts))))
    return np.sort(np.random.default_rng(seed).permutation(n_prompts)[:count])


# --- the whole run ---------------------------------------------------------------------------------------------


def distill_value_model(config: DistillConfig, progress: Callable[[str], None] = stderr_progress,
                        progress_bar: bool = True, reward=None) -> DistillReport:
    """Sample (resuming from the cache), score, standardise, train, evaluate, export."""
    from ..base_model import BaseModel
    from ..calibration import read_prompt_file
    from ..models import weights_fingerprint
    from ..rewards import load_reward
    from .trainer import require_training_extra

    config = replace(config, out=Path(config.out), model=Path(config.model),
                     prompts=Path(config.prompts) if config.prompts else None,
                     texts=Path(config.texts) if config.texts else None)
    _check_config(config)
    config = replace(config, arch=config.arch or DISTILL_ARCH.get(config.input))
    torch = require_training_extra()
    started = time.perf_counter()
    if config.texts:
        prompts = read_texts(config.texts, config.text_column)
        if config.max_texts and len(prompts) > config.max_texts:
            chosen = np.sort(np.random.default_rng(config.seed).choice(len(prompts), config.max_texts, replace=False))
            prompts = [prompts[i] for i in chosen]
        config = replace(config, samples_per_prompt=1)
    else:
        prompts = read_prompt_file(config.prompts)
    tokenizer = BaseModel(config.model, vocab_only=True)
    reward = reward or load_reward(config.reward, tokenizer)  # a bad reward fails before any sampling
    steer_path = _steer_value_model(config, tokenizer) if config.steered_share > 0 else None
    weights = None if config.texts else weights_fingerprint(config.model)  # texts depend on the tokenizer only
    header = cache_header(config, tokenizer.fingerprint, weights,
                          hashlib.sha256(steer_path.read_bytes()).hexdigest() if steer_path else None)
    cache = SampleCache(config.cache_path, header)
    if config.texts:
        progress(f"{len(prompts)} texts of {config.texts.name} (off-policy, at most {config.max_tokens} tokens); "
                 f"{len(cache.samples)} already in {cache.path}")
    else:
        progress(f"{len(prompts)} prompts x {config.samples_per_prompt} samples of {config.max_tokens} tokens; "
                 f"{len(cache.samples)} samples already in {cache.path}")

    def engine_factory():
        from ..engine import Engine

        return Engine(model=config.model, value_model=steer_path, use_value_model=steer_path is not None,
                      threads=config.llama_threads)

    sampling_started = time.perf_counter()
    if config.texts:
        sampled = ingest_texts(config, prompts, cache, tokenizer)
    else:
        pool = _ray_pool(config, steer_path, tokenizer.fingerprint)
        try:
            sampled = sample_missing(config, prompts, cache, engine_factory, progress_bar, pool)
        finally:
            if pool is not None:
                pool.close()
    sampling_seconds = time.perf_counter() - sampling_started
    keys = [(p, s) for p in range(len(prompts)) for s in range(config.samples_per_prompt)]
    scored = score_missing(config, keys, cache, reward, progress_bar)

    units = {k: model_input(config.input, cache.samples[k], tokenizer) for k in keys}
    used = [k for k in keys if len(units[k][0]) > units[k][1]]  # an immediate end of text has no prefix to learn
    if not used:
        raise TrainingDataError("every sample ended at once (no generated tokens); nothing to learn")
    rewards = np.array([cache.samples[k]["rewards"][reward_key(config)] for k in used], dtype=np.float64)
    among = min(len(prompts), config.holdout_among or len(prompts))  # prompts appended later keep the split
    held_prompts = set(split_prompts(among, config.holdout, config.seed).tolist())
    holdout_idx = np.array([i for i, (p, _) in enumerate(used) if p in held_prompts], dtype=np.int64)
    train_idx = np.array([i for i, (p, _) in enumerate(used) if p not in held_prompts], dtype=np.int64)
    if len(train_idx) == 0 or len(holdout_idx) == 0:
        raise TrainingDataError("too few non-empty samples to hold some out; draw more samples or prompts")
    _, mean, sd = standardise(rewards[train_idx], reward.name)  # the transform comes from training samples only
    targets = ((rewards - mean) / sd).astype(np.float32)

    token_lists = [units[k][0] for k in used]
    score_from = np.array([units[k][1] for k in used], dtype=np.int64)
    if config.input == "hidden":
        from .hidden_train import distill_hidden

        fit, graph = distill_hidden(config, reward, prompts, used, token_lists, score_from, targets, train_idx,
                                    holdout_idx, mean, sd, progress)
    else:
        fit, graph = train_and_export(torch, config, tokenizer, reward, prompts, used, token_lists, score_from,
                                      targets, train_idx, holdout_idx, mean, sd, progress)
    return DistillReport(out=str(config.out), reward=reward.name, reward_mean=mean, reward_sd=sd, **fit,
                         cache=str(cache.path), samples=len(used), sampled_now=sampled, scored_now=scored,
                         skipped_empty=len(keys) - len(used), n_holdout_prompts=len(held_prompts),
                         seconds=time.perf_counter() - started, sampling_seconds=sampling_seconds, graph=graph,
                         input=config.input, arch=config.arch)


def model_input(kind: str, record: dict, tokenizer) -> tuple[list[int], int]:
    """What the value model reads of a sample, and where its continuation starts: the prompt tokens (without BOS)
    and the generated ids (input tokens), or their bytes (input bytes: each id's bytes, as the runtime's
    ValueModel feeds a byte-level model; control tokens give none)."""
    prompt, continuation = record["prompt_tokens"], record["token_ids"]
    if kind == "bytes":
        prompt = list(b"".join(tokenizer.token_bytes(int(t)) for t in prompt))
        continuation = list(b"".join(tokenizer.token_bytes(int(t)) for t in continuation))
    return prompt + continuation, len(prompt)


def _ray_pool(config: DistillConfig, steer_path: Path | None, fingerprint: str):
    """Ray actors for the sampling stage (config.ray_address), started only if a sample is missing. Models left to
    their defaults are resolved on each node (their paths there may differ); the actors' are checked against ours."""
    if config.ray_address is None:
        return None
    from ..distributed import EngineSpec, RayPool
    from ..models import resolve_base_model

    default_model = Path(config.model).resolve() == Path(resolve_base_model(None)).resolve()
    spec = EngineSpec.of(None if default_model else config.model, config.steer_value_model,
                         threads=config.llama_threads or 1, use_value_model=steer_path is not None)
    expect = {"model_fingerprint": fingerprint}
    if steer_path is not None:
        expect["value_model_sha256"] = hashlib.sha256(steer_path.read_bytes()).hexdigest()
    return RayPool(spec, config.ray_address, config.ray_actors, expect=expect)


def _steer_value_model(config: DistillConfig, tokenizer) -> Path:
    from ..models import resolve_value_model

    path = resolve_value_model(config.steer_value_model, tokenizer.fingerprint)
    if path is None:
        raise InvalidSettingError(f"steered samples need a value model and none ships for {tokenizer.name}; "
                                  f"pass --steer-value-model")
    return Path(path)


def _check_config(config: DistillConfig) -> None:
    if (config.prompts is None) == (config.texts is None):
        raise InvalidSettingError("give either prompts to continue (on-policy) or texts to use as they are "
                                  "(off-policy), not both")
    if config.texts and config.steered_share > 0:
        raise InvalidSettingError("steered samples need prompts to continue, not texts")
    if config.max_texts is not None and config.max_texts < 1:
        raise InvalidSettingError(f"max-texts must be at least 1, got {config.max_texts}")
    if config.input not in INPUT_KINDS:
        raise InvalidSettingError(f"input must be one of {', '.join(INPUT_KINDS)}, got {config.input!r}")
    if config.arch is not None and config.arch not in ARCHITECTURES:
        raise InvalidSettingError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {config.arch!r}")
    if config.input == "bytes" and config.arch not in (None, "gru"):
        raise InvalidSettingError("a byte-level value model must be order-aware: use arch gru with input bytes")
    if config.reward_on not in REWARD_ON:
        raise InvalidSettingError(f"reward-on must be one of {', '.join(REWARD_ON)}, got {config.reward_on!r}")
    if config.loss not in LOSSES:
        raise InvalidSettingError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if not 0 <= config.steered_share <= 1:
        raise InvalidSettingError(f"steered share must be in [0, 1], got {config.steered_share}")
    if not 0 < config.holdout < 1:
        raise InvalidSettingError(f"holdout must be between 0 and 1, got {config.holdout}")
    for name in ("samples_per_prompt", "max_tokens", "top_k", "sample_batch_size", "epochs", "dim", "hidden",
                 "min_count", "batch_size", "threads", "context_tokens", "recurrent_size", "ray_actors"):
        if getattr(config, name) < 1:
            raise InvalidSettingError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not (math.isfinite(config.temperature) and config.temperature >= 0):
        raise InvalidSettingError(f"temperature must be >= 0, got {config.temperature}")
    if Path(config.out).resolve() == config.cache_path.resolve():
        raise InvalidSettingError("the sample cache and the value model must be different files")
