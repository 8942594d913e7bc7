"""Named sets of decoding options (`--preset NAME`, `model.generate(..., preset=NAME)`).

    osum   what OSUM's own `generate` does: beam search of 4 with sampling (top-k 5, top-p 0.9), repetition
           penalty 1.05, up to 400 new tokens. Not deterministic: two runs may differ.

osum's default stays deterministic (greedy); a preset is asked for by name, and options given beside it win.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "osum": {"num_beams": 4, "do_sample": True, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.05,
             "max_new_tokens": 400},
}


def with_preset(preset: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The preset's options updated with `options` (explicit options win); no preset: `options` as given."""
    if preset is None:
        return dict(options)
    if preset not in PRESETS:
        raise ValueError(f"unknown decoding preset {preset!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[preset], **options}
