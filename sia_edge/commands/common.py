"""What every command shares: the model and generation options, settings from options, engine construction,
Ctrl-C handling and the summary line. The defaults shown come from GenerationSettings, the gate and signal
choices from their registries, so each option is declared once."""

from __future__ import annotations

import json
import signal
import sys
import threading

import click

from ..base_model import DEFAULT_CONTEXT
from ..errors import PromptError
from ..gate import GATE_HELP, GATE_NAMES, GATES, PARAMETERS, default_weights_text
from ..settings import GenerationSettings
from ..signals import SIGNAL_HELP, SIGNALS
from ..steering import REWARD_NORMS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULTS = GenerationSettings()


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def model_options(func):
    """--model, --value-model, --ctx and --threads, shared by every command that loads models."""
    return _apply(func, [
        click.option("-m", "--model", "model", type=click.Path(dir_okay=False), default=None,
                     help="GGUF base model [default: $SIA_EDGE_MODEL, else the built-in Gemma 3 270M base]."),
        click.option("--value-model", type=click.Path(dir_okay=False), default=None,
                     help="ONNX value model [default: $SIA_EDGE_VALUE_MODEL, else the one shipped for the base model]."),
        click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=DEFAULT_CONTEXT, show_default=True,
                     help="Context window in tokens (prompt + generated)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="llama.cpp threads [default: all cores]."),
        click.option("--gpu-layers", "gpu_layers", type=GpuLayers(), default="0", show_default=True,
                     help="Layers to offload to a GPU, a number or 'all' (llama.cpp's -ngl); needs a Metal or CUDA "
                          "build of llama-cpp-python (README), ignored by a CPU-only build (`sia-edge info`)."),
    ])


class GpuLayers(click.ParamType):
    """A layer count >= 0, or 'all' (-1 for llama.cpp)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return -1
        try:
            layers = int(value)
        except ValueError:
            layers = -2
        if layers < 0:
            self.fail(f"{value!r} is not a layer count >= 0 or 'all'", param, ctx)
        return layers


def sampling_options(func):
    """-k, -t and --signal: what a calibration is valid for (calibrate, eval, and part of generation_options)."""
    return _apply(func, [
        # plain types: GenerationSettings checks the values and says what is wrong in one line
        click.option("-k", "--top-k", type=int, default=DEFAULTS.top_k, show_default=True,
                     help="Candidates per step; sampling is restricted to them."),
        click.option("-t", "--temperature", type=float, default=DEFAULTS.temperature,
                     show_default=True, help="Sampling temperature; 0 is greedy."),
        click.option("--signal", type=click.Choice(tuple(SIGNALS)), default=None,
                     help=f"{SIGNAL_HELP} [default: {DEFAULTS.signal}]"),
        # the name this option had before `top2` (not an entropy) joined: kept, hidden, so old scripts still run
        click.option("--entropy-over", type=click.Choice(tuple(SIGNALS)), default=None, hidden=True,
                     help="Old name of --signal."),
    ])


def chosen_signal(signal: str | None, entropy_over: str | None) -> str:
    """--signal, or its old name --entropy-over, else the default."""
    if signal and entropy_over and signal != entropy_over:
        raise click.UsageError("--entropy-over is the old name of --signal: give one of them")
    return signal or entropy_over or DEFAULTS.signal


reward_norm_option = click.option(
    "--reward-norm", type=click.Choice(REWARD_NORMS), default=DEFAULTS.reward_norm, show_default=True,
    help="Normalise the k candidates' rewards at each junction before w: none (the paper), center, or zscore "
         "(w then means the same however widely the rewards spread).")


def gate_parameter_option(name: str, **extra):
    """--tau, --ratio, --q or --first-n, typed and described by the gate registry."""
    parameter = PARAMETERS[name]
    users = ", ".join(spec.name for spec in GATES.values()
                      if spec.parameter == name or (name == "ratio" and spec.arm == "calibrated"))
    default = getattr(DEFAULTS, name)
    kind = int if parameter.kind is int else float
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, default=default,
                        show_default=default is not None,
                        help=f"{parameter.help[0].upper()}{parameter.help[1:]} (gate {users}).", **extra)


weight_option = click.option(
    "-w", "--weight", type=float, default=None,
    help=f"Reward weight w in s = logit + w * value [default: the gate's own ({default_weights_text()}) times the "
         f"value model's weight scale: 1 unless its metadata sets sia_edge.weight_scale; `sia-edge info` shows it].")


def generation_options(func):
    """The steering and sampling options, shared by generate, chat and serve."""
    return _apply(func, [
        click.option("--gate", type=click.Choice(GATE_NAMES), default=DEFAULTS.gate, show_default=True,
                     help=GATE_HELP),
        gate_parameter_option("tau"),
        gate_parameter_option("ratio"),
        click.option("--calibration", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Calibration file for --ratio [default: the cached one for this model, else the shipped one]."),
        gate_parameter_option("q"),
        gate_parameter_option("first_n"),
        sampling_options,
        weight_option,
        reward_norm_option,
        click.option("-n", "--max-tokens", type=int, default=DEFAULTS.max_tokens, show_default=True,
                     help="Most tokens to generate."),
        click.option("--stop", multiple=True, help="Stop when this text appears (repeatable); it is not printed."),
        click.option("-s", "--seed", type=int, default=None,
                     help="Random seed [default: a fresh one, always reported on stderr]."),
    ])


def settings_from(options: dict) -> GenerationSettings:
    """GenerationSettings from the generation options (it checks them, e.g. tau and ratio together)."""
    fields = ("gate", "tau", "ratio", "q", "first_n", "top_k", "weight", "reward_norm", "temperature", "signal",
              "max_tokens", "seed")
    options = {**options, "signal": chosen_signal(options.get("signal"), options.get("entropy_over"))}
    return GenerationSettings(stop=tuple(options.get("stop", ())), **{f: options[f] for f in fields})


def build_engine(model, value_model, n_ctx, threads, needs_value_model: bool, calibration=None, gpu_layers=0,
                 parallel: int = 1, **slots):
    """The Engine a command runs on; the value model is loaded if the command needs it or one was named.
    One-shot commands run one generation at a time (`parallel=1`: a seed replays exactly); the server batches
    (`slots`: Engine's prefill_chunk and prefix_reuse)."""
    from ..engine import Engine

    return Engine(model=model, value_model=value_model, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers,
                  use_value_model=needs_value_model or value_model is not None, calibration=calibration,
                  parallel=parallel, **slots)


RAY_LOCAL = "local"  # bare --ray (distributed.LOCAL, repeated so that --help imports nothing more)


def ray_options(func):
    """--ray [ADDRESS] and --ray-actors, for the commands whose generations can run on Ray actors."""
    return _apply(func, [
        click.option("--ray", "ray_address", is_flag=False, flag_value=RAY_LOCAL, default=None, metavar="[ADDRESS]",
                     help="Run the generations on Ray actors, each holding its own engine: bare --ray starts Ray on "
                          "this machine, an ADDRESS ('auto', 'ray://HEAD:10001') joins a cluster; --threads is then "
                          "per actor [default 1]. Needs sia-edge[ray] (docs/ray.md)."),
        click.option("--ray-actors", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Ray actors with --ray; each loads the models once and decodes one batch at a time."),
    ])


def build_pool(ray_address, ray_actors, model, value_model, n_ctx, threads, gpu_layers, use_value_model: bool,
               expect: dict | None = None):
    """A RayPool for --ray (None without it), whose actors build the engine these options describe."""
    if ray_address is None:
        return None
    from ..distributed import EngineSpec, RayPool

    spec = EngineSpec.of(model, value_model, n_ctx=n_ctx, threads=threads or 1, gpu_layers=gpu_layers,
                         use_value_model=use_value_model)
    return RayPool(spec, ray_address, ray_actors, expect=expect)


def read_prompt(prompt: str) -> str:
    """The prompt argument, or stdin for '-'; text that is not UTF-8 is refused in one line."""
    if prompt != "-":
        return prompt
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"standard input is not valid UTF-8 (byte {exc.start}); pass UTF-8 text") from None


class CtrlC:
    """While active, the first Ctrl-C asks the generation to stop at the next token; the second one kills."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self.event

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def summary_line(result) -> str:
    st = result.stats
    return (f"sia-edge: seed {st.seed} | {st.tokens} tokens | {st.junctions} junctions "
            f"({100 * st.junction_ratio:.0f}%) | {st.tokens_per_second:.1f} tok/s | stop: {result.stop_reason}")


best_of_option = click.option(
    "--best-of", "best_of", type=click.IntRange(min=1), default=1, show_default=True,
    help="Generate N samples (seeds seed..seed+N-1) and print the one the value model scores highest; "
         "with --json, all N texts and their scores.")


def run_best_of_cli(engine, text: str, settings: GenerationSettings, n: int, as_json: bool, out):
    """`sia-edge generate --best-of N`: the best text on `out` (or one JSON object), a summary line on stderr.

    The N samples are decoded as one batch, so Ctrl-C stops all of them at their next token; the best of the
    partial samples is printed. Returns the BestOfResult.
    """
    from ..best_of import best_of

    with CtrlC() as cancelled:
        result = best_of(engine, text, n, settings, cancel=cancelled)
    if as_json:
        payload = result.as_dict()
        payload["model"] = str(engine.base.path)
        payload["value_model"] = str(engine.value_model.path)
        out.write(json.dumps(payload) + "\n")
    else:
        out.write(result.text + "\n")
    out.flush()
    click.echo(f"sia-edge: best of {len(result.results)}: sample {result.best} "
               f"(score {result.scores[result.best]:.3f}; all {' '.join(f'{s:.3f}' for s in result.scores)}) | "
               f"{result.base_steps} base steps | {result.value_model_calls} value-model calls | "
               f"{result.seconds:.1f} s", err=True)
    click.echo(summary_line(result.best_result), err=True)
    return result
