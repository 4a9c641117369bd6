"""Steering maths, sampling, settings validation, UTF-8 streaming and stop strings (no model needed)."""

import numpy as np
import pytest

from sia_edge.decoder import StopMatcher
from sia_edge.errors import InvalidSettingError
from sia_edge.settings import GenerationSettings
from sia_edge.steering import choose, sampling_probs, steered_scores
from sia_edge.text_stream import Utf8Stream

LOGITS = np.array([2.0, 1.0, 0.5, -1.0])
REWARDS = np.array([-3.0, 0.0, 4.0, 1.0])


def test_zero_weight_reproduces_base_top_k_distribution():
    base = np.exp(LOGITS - LOGITS.max())
    base /= base.sum()
    np.testing.assert_allclose(sampling_probs(steered_scores(LOGITS, REWARDS, 0.0), 1.0), base, rtol=0, atol=0)


def test_steered_distribution_matches_closed_form():
    w, T = 0.7, 1.3
    expected = np.exp((LOGITS + w * REWARDS) / T)
    expected /= expected.sum()
    np.testing.assert_allclose(sampling_probs(steered_scores(LOGITS, REWARDS, w), T), expected, rtol=1e-12)


def test_huge_weight_picks_reward_argmax():
    scores = steered_scores(LOGITS, REWARDS, 1e6)
    picks = {choose(scores, 1.0, u) for u in np.linspace(0, 0.999, 50)}
    assert picks == {int(np.argmax(REWARDS))}


def test_zero_temperature_is_argmax_whatever_the_uniform():
    assert {choose(LOGITS, 0.0, u) for u in (0.0, 0.5, 0.999)} == {0}


def test_choose_is_inverse_cdf():
    probs = sampling_probs(LOGITS, 1.0)
    cdf = np.cumsum(probs)
    assert choose(LOGITS, 1.0, 0.0) == 0
    assert choose(LOGITS, 1.0, float(cdf[0]) + 1e-9) == 1
    assert choose(LOGITS, 1.0, float(cdf[2]) + 1e-9) == 3
    assert choose(LOGITS, 1.0, 0.999999999) == 3


def test_sampling_frequencies_match_probabilities():
    rng = np.random.default_rng(0)
    draws = np.bincount([choose(LOGITS, 1.0, rng.random()) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, sampling_probs(LOGITS, 1.0), atol=0.01)


def test_steered_scores_does_not_mutate_inputs():
    logits, rewards = LOGITS.copy(), REWARDS.copy()
    steered_scores(logits, rewards, 2.0)
    np.testing.assert_array_equal(logits, LOGITS)
    np.testing.assert_array_equal(rewards, REWARDS)


@pytest.mark.parametrize("changes, message", [
    ({"top_k": 0}, "top_k must be >= 1, got 0"),
    ({"tau": -1.0}, "tau"),
    ({"temperature": -0.5}, "temperature"),
    ({"q": 1.5}, "q must be in [0, 1]"),
    ({"ratio": -0.1}, "ratio"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"gate": "sometimes"}, "gate must be one of"),
    ({"gate": "online"}, "online gate needs a target ratio"),
    ({"weight": float("inf")}, "weight"),
    ({"stop": ("",)}, "stop strings"),
])
def test_invalid_settings_name_the_argument(changes, message):
    with pytest.raises(InvalidSettingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GenerationSettings(**changes)


def test_describe_names_the_pipeline():
    line = GenerationSettings(tau=1.7).describe()  # the entropy gate's own default w (gate.SPARSE_WEIGHT)
    assert line == "logits -> top-k(10) -> entropy -> entropy-gate(tau=1.7) -> value(w=4) -> sample(T=1)"
    assert "value(w=1)" in GenerationSettings(gate="dense").describe()


def test_utf8_stream_holds_split_multibyte_characters():
    data = "a😀é漢".encode()
    stream = Utf8Stream()
    pieces = [stream.push(data[i:i + 1]) for i in range(len(data))]
    assert "".join(pieces) + stream.flush() == "a😀é漢"
    assert pieces[1:4] == ["", "", ""]  # the emoji's first three bytes release nothing
    assert pieces[4] == "😀"


def test_utf8_stream_replaces_invalid_bytes_and_unfinished_tail():
    stream = Utf8Stream()
    assert stream.push(b"ok\xff") == "ok\ufffd"
    assert stream.push(b"\xe6\xbc") == ""
    assert stream.flush() == "\ufffd"


def test_stop_matcher_holds_back_partial_stop_and_cuts_at_it():
    matcher = StopMatcher(("\nUser:",))
    out = []
    for piece in ["Hello", " there", "\nUs", "er:", " more"]:
        released, hit = matcher.push(piece)
        out.append(released)
        if hit:
            break
    assert out == ["Hello", " there", "", ""]
    assert hit
    assert matcher.text == "Hello there"


def test_stop_matcher_releases_false_alarm_and_tail():
    matcher = StopMatcher(("STOP",))
    assert matcher.push("abc ST") == ("abc ", False)
    assert matcher.push("ART") == ("START", False)
    assert matcher.push(" S") == (" ", False)
    assert matcher.finish("") == "abc START S"
    assert matcher.tail == "S"


def reference_norm(rewards, norm):
    r = [float(x) for x in rewards]
    mean = sum(r) / len(r)
    if norm == "none":
        return r
    if norm == "center":
        return [x - mean for x in r]
    sd = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
    return [(x - mean) / sd if sd > 0 else 0.0 for x in r]


@pytest.mark.parametrize("norm", ["none", "center", "zscore"])
def test_reward_normalisation_matches_a_float64_reference(norm):
    from sia_edge.steering import normalised_rewards

    for rewards in (REWARDS, np.array([0.5, 0.5, 0.5]), np.array([1e-3, -2e-3, 4e-3, 0.0]), np.array([7.0])):
        before = rewards.copy()
        np.testing.assert_allclose(normalised_rewards(rewards, norm), reference_norm(rewards, norm), atol=1e-12)
        np.testing.assert_array_equal(rewards, before)  # the input is not mutated
    got = steered_scores(LOGITS, REWARDS, 2.0, norm)
    np.testing.assert_allclose(got, LOGITS + 2.0 * np.array(reference_norm(REWARDS, norm)), atol=1e-12)


def test_centring_changes_no_probability_and_zscore_makes_w_scale_free():
    base = sampling_probs(steered_scores(LOGITS, REWARDS, 1.5), 1.0)
    np.testing.assert_allclose(sampling_probs(steered_scores(LOGITS, REWARDS, 1.5, "center"), 1.0), base, atol=1e-12)
    small = sampling_probs(steered_scores(LOGITS, REWARDS * 0.1, 1.5, "zscore"), 1.0)
    large = sampling_probs(steered_scores(LOGITS, REWARDS * 10, 1.5, "zscore"), 1.0)
    np.testing.assert_allclose(small, large, atol=1e-12)
    assert "norm=zscore" in GenerationSettings(reward_norm="zscore").describe()
    with pytest.raises(InvalidSettingError, match="reward_norm"):
        GenerationSettings(reward_norm="minmax")


def test_a_value_models_weight_scale_is_read_from_its_metadata_or_refused():
    """Metadata sia_edge.weight_scale: absent means 1; a positive number is taken; anything else is refused in one
    line that names the file and the key, never silently read as 1."""
    from sia_edge.errors import ValueModelError
    from sia_edge.steering import weight_scale

    assert weight_scale(None, "m.onnx") == 1.0
    assert weight_scale("2.9", "m.onnx") == 2.9
    assert weight_scale("0.5", "m.onnx") == 0.5
    for bad in ("0", "-1", "nan", "inf", "", "three"):
        with pytest.raises(ValueModelError, match=r"m\.onnx: metadata 'sia_edge\.weight_scale' must be a number > 0"):
            weight_scale(bad, "m.onnx")
