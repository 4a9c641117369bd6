"""What a response reports besides its text: OpenAI's `usage` object and sia-edge's `sia` statistics."""

from __future__ import annotations

from ..gate import DEFAULT_TAU


def sia_object(result, chosen=None) -> dict:
    """What a response reports about steering, in its `sia` field."""
    st, s = result.stats, result.settings
    tau = s.get("calibrated_tau") if s.get("calibrated_tau") is not None else s.get("tau")
    out = {"gate": s.get("gate"), "tau": tau if tau is not None else DEFAULT_TAU, "ratio": s.get("ratio"),
           "junctions": st.junctions, "junction_ratio": st.junction_ratio, "tokens": st.tokens, "seed": st.seed,
           "stop_reason": result.stop_reason, "value_model_calls": st.value_model_calls,
           "tokens_per_second": st.tokens_per_second, "pipeline": result.pipeline, "value_model": result.value_model}
    if chosen is not None:
        out["best_of"] = {"n": len(chosen.results), "best": chosen.best, "scores": chosen.scores,
                          "seeds": [r.stats.seed for r in chosen.results]}
    return out


def usage(prompt_tokens: int, result, chosen=None) -> dict:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: prompt tokens found in a slot's KV cache (the
    conversation so far), so not decoded again (with best_of: summed over the samples, as completion_tokens)."""
    results = chosen.results if chosen else [result]
    done = sum(len(r.token_ids) for r in results)
    cached = sum(r.stats.cached_tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done,
            "prompt_tokens_details": {"cached_tokens": cached}}


def with_final_fields(out: dict, tokens: list[int], result) -> dict:
    """The last chunk of a stream also carries the usage and the `sia` statistics."""
    if result is not None:
        out["sia"] = sia_object(result)
        out["usage"] = usage(len(tokens), result)
    return out
