"""GenerationSettings and the gate registry: one table of gates and parameters, checks in one place, and the rules
for changing settings (a new gate starts from its defaults; tau and ratio replace each other, both is refused)."""

import math

import numpy as np
import pytest

from sia_edge.errors import InvalidSettingError, ModelOutputError
from sia_edge.gate import DEFAULT_TAU, GATE_NAMES, GATES, PARAMETERS, OnlineRatioGate
from sia_edge.settings import TAU_AND_RATIO, GenerationSettings
from sia_edge.signals import SIGNALS, step_stats


def test_registry_entries_are_complete():
    assert set(GATE_NAMES) == {"entropy", "dense", "none", "random", "first-n", "online"}
    for name, spec in GATES.items():
        assert spec.name == name and spec.help and spec.arm in ("fixed", "calibrated", "matched")
        assert spec.parameter is None or spec.parameter in PARAMETERS
        settings = GenerationSettings(gate=name, **({"ratio": 0.3} if spec.parameter == "ratio" else {}))
        if spec.parameter == "ratio":
            settings = settings.with_(calibrated_tau=1.2)  # as Engine.settings would
        assert settings.build_gate().name == name
    assert [n for n, s in GATES.items() if not s.steers] == ["none"]


@pytest.mark.parametrize("name, good, bad", [
    ("tau", [0.0, 1.5, 9.0], [-0.1, math.nan, math.inf, "1"]),
    ("ratio", [0.0, 0.5, 1.0], [-0.01, 1.01, math.nan]),
    ("q", [0.0, 0.3, 1.0], [1.5, -1.0]),
    ("first_n", [0, 3, 100], [-1, 3.7, 2.0, True]),
])
def test_parameters_are_checked_once_by_the_registry(name, good, bad):
    for value in good:
        PARAMETERS[name].check(value)
    for value in bad:
        with pytest.raises(InvalidSettingError, match=name):
            PARAMETERS[name].check(value)
        if name != "ratio":  # the same check guards the settings object
            with pytest.raises(InvalidSettingError, match=name):
                GenerationSettings(**{name: value})


def test_parse_refuses_a_fraction_for_a_count():
    assert PARAMETERS["first_n"].parse("3") == 3
    assert PARAMETERS["tau"].parse("0.7") == 0.7
    with pytest.raises(InvalidSettingError, match="whole number"):
        PARAMETERS["first_n"].parse("3.7")
    with pytest.raises(InvalidSettingError, match="number"):
        PARAMETERS["q"].parse("lots")


def test_tau_and_ratio_together_are_refused_by_the_settings():
    with pytest.raises(InvalidSettingError, match="give tau or ratio, not both"):
        GenerationSettings(tau=1.0, ratio=0.2)
    with pytest.raises(InvalidSettingError, match="not both"):
        GenerationSettings(gate="online", ratio=0.2, tau=1.0)
    with pytest.raises(InvalidSettingError, match="not both"):
        GenerationSettings().updated(tau=1.0, ratio=0.2)
    assert TAU_AND_RATIO.startswith("give tau or ratio, not both")


def test_an_explicit_tau_replaces_an_inherited_ratio_and_back():
    """Bug: a ratio left over from earlier settings silently overrode an explicit tau."""
    from_ratio = GenerationSettings(ratio=0.3).with_(calibrated_tau=1.92)
    explicit = from_ratio.updated(tau=0.7)
    assert (explicit.ratio, explicit.calibrated_tau, explicit.threshold) == (None, None, 0.7)
    assert explicit.build_gate().tau == 0.7
    back = explicit.updated(ratio=0.5)
    assert (back.tau, back.ratio) == (None, 0.5)


def test_switching_gates_resets_the_other_gates_parameters():
    """Chat: `/gate online 0.3` then `/gate entropy 0.7` used to show tau=0.7 but steer with the ratio's tau."""
    online = GenerationSettings().with_gate("online", 0.3).with_(calibrated_tau=1.92)
    entropy = online.with_gate("entropy", 0.7)
    assert (entropy.gate, entropy.tau, entropy.ratio, entropy.calibrated_tau) == ("entropy", 0.7, None, None)
    assert entropy.build_gate().tau == 0.7
    plain = online.with_gate("entropy")
    assert (plain.ratio, plain.threshold) == (None, DEFAULT_TAU)
    assert GenerationSettings(q=0.9, gate="random").with_gate("first-n").q == 0.2
    with pytest.raises(InvalidSettingError, match="takes no parameter"):
        GenerationSettings().with_gate("dense", 0.5)
    with pytest.raises(InvalidSettingError, match="first_n must be"):
        GenerationSettings().with_gate("first-n", 3.7)


def test_updated_keeps_a_lookup_that_is_still_valid():
    looked_up = GenerationSettings(ratio=0.2).with_(calibrated_tau=1.9)
    assert looked_up.updated(max_tokens=5, seed=1).calibrated_tau == 1.9
    for change in (dict(top_k=5), dict(temperature=0.5), dict(signal="full"), dict(ratio=0.4)):
        assert looked_up.updated(**change).calibrated_tau is None


def test_a_ratio_without_its_lookup_cannot_build_the_entropy_gate():
    with pytest.raises(InvalidSettingError, match="calibration"):
        GenerationSettings(ratio=0.2).build_gate()


def test_steers_is_the_one_answer():
    assert GenerationSettings().steers
    assert not GenerationSettings(gate="none").steers
    assert not GenerationSettings(weight=0.0).steers
    assert GenerationSettings(gate="random", q=0.0).steers  # may call the value model; q only makes it unlikely


def test_online_gate_with_ratio_zero_never_steers():
    """Bug: ratio 0 still steered up to two junctions (the +-1 slack)."""
    gate = OnlineRatioGate(0.0, prior_tau=0.0)
    gate.reset(0)
    trace = np.random.default_rng(0).uniform(0, 2.3, 300)
    assert not any(gate.decide(i, h) for i, h in enumerate(trace))


def test_online_gate_catching_up_skips_steps_the_text_finds_certain():
    """Bug: when behind, the online gate steered any step with a signal above 0, however certain. Now a step in
    the lowest quarter of the text's own signals so far is never a junction."""
    rng = np.random.default_rng(3)
    trace = np.concatenate([rng.uniform(1.8, 2.3, 60), rng.uniform(0.0, 0.3, 140)])  # the text grows certain
    gate = OnlineRatioGate(0.2, prior_tau=1.0)
    gate.reset(0)
    chosen = [gate.decide(i, h) for i, h in enumerate(trace)]
    # in the certain stretch the running 0.8-quantile stays high, so every junction there is a catch-up one
    late_lowest_quarter = [i for i in range(60, len(trace)) if trace[i] <= np.quantile(trace[:i], 0.25)]
    assert late_lowest_quarter and not any(chosen[i] for i in late_lowest_quarter)
    assert any(chosen[60:])  # it still catches up, on the steps this text finds least certain


def test_online_gate_holds_a_positive_ratio():
    gate = OnlineRatioGate(0.25, prior_tau=1.0)
    gate.reset(0)
    trace = np.random.default_rng(1).uniform(0, 2.3, 400)
    assert abs(np.mean([gate.decide(i, h) for i, h in enumerate(trace)]) - 0.25) < 0.03


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_an_error_not_a_silent_non_junction(bad):
    """Bug: a NaN full-vocabulary entropy read as 'no junction'. Such a row has no distribution to sample."""
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    logits[17] = bad
    for signal in SIGNALS:
        with pytest.raises(ModelOutputError, match="non-finite"):
            step_stats(logits, 10, signal)
    logits[17] = -np.inf  # a masked token is fine
    assert np.isfinite(step_stats(logits, 10, "full").entropy)


def test_describe_reads_the_signal_label():
    assert "top2-ratio" in GenerationSettings(signal="top2", tau=0.7).describe()
    assert "full-entropy" in GenerationSettings(signal="full").describe()
    with pytest.raises(InvalidSettingError, match="signal must be one of"):
        GenerationSettings(signal="top-p")


def test_weight_defaults_to_the_gates_own(monkeypatch):
    """weight=None means the gate's default w (sparse gates may steer each junction harder than dense); a given
    weight wins; switching gates keeps a given weight and follows the new gate's default otherwise."""
    import dataclasses

    from sia_edge import gate as gate_module

    monkeypatch.setitem(gate_module.GATES, "entropy", dataclasses.replace(gate_module.GATES["entropy"], weight=2.5))
    sparse = GenerationSettings(gate="entropy", tau=1.0)
    assert sparse.weight is None and sparse.w == 2.5 and "value(w=2.5)" in sparse.describe()
    assert sparse.updated(gate="dense").w == gate_module.GATES["dense"].weight
    assert GenerationSettings(gate="entropy", weight=1.5).w == 1.5
    assert GenerationSettings(gate="entropy", weight=1.5).updated(gate="dense").w == 1.5
    assert not GenerationSettings(gate="entropy", weight=0.0).steers
    assert "2.5 for entropy" in gate_module.default_weights_text()


def test_as_ran_reports_the_values_that_ran_and_reads_back():
    """tau and weight as they ran (not None for "the default"); a ratio's looked-up tau reads back as a ratio."""
    ran = GenerationSettings().as_ran("gemma3-270m-sentiment.onnx")
    assert (ran["tau"], ran["weight"], ran["value_model"]) == (DEFAULT_TAU, 4.0, "gemma3-270m-sentiment.onnx")
    assert GenerationSettings(gate="dense").as_ran()["weight"] == 1.0
    assert GenerationSettings(gate="random", q=0.3).as_ran()["tau"] is None  # thresholds nothing
    from_ratio = GenerationSettings(ratio=0.3).with_(calibrated_tau=1.92)
    ran = from_ratio.as_ran()
    assert (ran["tau"], ran["ratio"], ran["calibrated_tau"]) == (1.92, 0.3, 1.92)
    for settings in (from_ratio, GenerationSettings(gate="first-n", first_n=5, stop=("x",)),
                     GenerationSettings(gate="online", ratio=0.2).with_(calibrated_tau=1.5)):
        back = GenerationSettings.from_ran(settings.as_ran())
        assert back.describe() == settings.describe() and back.as_ran() == settings.as_ran()


def test_an_entropy_gate_tau_out_of_the_signals_reach_is_refused():
    """A tau above anything the signal can take would never steer, silently: p2/p1 is at most 1, the entropy of
    k candidates at most ln k. Settings a ratio or another gate still has to complete are left alone."""
    for settings, fits in [
        (GenerationSettings(signal="top2"), False),  # the default 2.02
        (GenerationSettings(signal="top2", tau=1.01), False),
        (GenerationSettings(top_k=7), False),  # ln 7 = 1.95 < 2.02
        (GenerationSettings(top_k=5, tau=1.6), True),  # ln 5 = 1.61
        (GenerationSettings(signal="top2", tau=1.0), True),
        (GenerationSettings(signal="top2", ratio=0.2), True),  # tau comes from top2's calibration
        (GenerationSettings(signal="top2", ratio=0.2).with_(calibrated_tau=0.76), True),
        (GenerationSettings(signal="full"), True),
        (GenerationSettings(signal="top2", gate="dense"), True),
        (GenerationSettings(signal="top2", gate="online", ratio=0.2), True),  # it adapts from any prior
    ]:
        if fits:
            assert settings.check_threshold() is settings
        else:
            with pytest.raises(InvalidSettingError, match="would never steer"):
                settings.check_threshold()


def test_a_value_models_weight_scale_multiplies_only_the_default_weight():
    """The Engine sets weight_scale from the value model: each gate's default w is multiplied by it, a given
    weight is used as given, it is reported as it ran and read back (results from before it existed read as 1)."""
    from types import SimpleNamespace

    scaled = GenerationSettings(gate="dense").with_value_model(SimpleNamespace(weight_scale=2.9))
    assert scaled.with_value_model(None).w == GATES["dense"].weight  # no value model: no scale
    assert scaled.w == GATES["dense"].weight * 2.9 and "value(w=2.9)" in scaled.describe()
    assert scaled.updated(gate="random").w == GATES["random"].weight * 2.9
    assert scaled.updated(weight=1.0).w == 1.0
    ran = scaled.as_ran()
    assert (ran["weight"], ran["weight_scale"]) == (2.9, 2.9)
    assert GenerationSettings.from_ran(ran).w == 2.9
    del ran["weight_scale"]
    assert GenerationSettings.from_ran(ran).weight_scale == 1.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(InvalidSettingError, match="weight_scale must be > 0"):
            GenerationSettings(weight_scale=bad)
