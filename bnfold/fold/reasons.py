"""Why a BatchNorm did not fold: the wording both fold engines use, so that one network gives the same reasons
whether it came as a ``.pt2`` archive, a TorchScript archive or an ONNX file.

Each reason is a template; the engines fill in the names they know (a module path, ``the model input 'x'``,
an ONNX node). :func:`explain` joins what the fold rules said into one record reason; :func:`kinds` reads the
templates back out of a reason, which is how the conformance test compares reasons whose names differ
between formats (a torch.fx node ``relu_1`` is the ONNX node ``/layers.0/Relu``).
"""

from __future__ import annotations

import re

TEMPLATES: dict[str, str] = {
    "no_weights": "{what} comes from {source}, which has no weights to fold into",
    "shared": "the output of {node} also feeds {others}",
    "not_a_layer": "its output feeds {node}, which is not a conv or linear",
    "transposed_consumer": "its output feeds the transposed conv {layer}, which would spread the shift unevenly",
    "zero_padding": "{layer} pads its input with zeros ({padding}): folded backward, the shift would be missing "
    "at the border",
    "model_output": "its output is a model output",
    "joined": "{node} joins its output with other values",
    "not_whole": "{node} does not keep the channel axis whole (it slices, merges, splits or resizes it)",
    "shape_unknown": "the shapes around {node} are unknown",
    "pad_values": "{pad} pads with {mode} values: folding backward would change the border",
    "pad_channels": "{pad} pads the channel axis",
    "identity": "as an identity branch: {problems}",
    "no_running_stats": "track_running_stats=False: it normalises each batch with that batch's own statistics at "
    "inference, so it is not a fixed affine",
    "batch_stats": "normalises each batch with that batch's own statistics",
    "unused": "its output is unused",
    "nothing_applies": "no fold pattern applies",
}


def reason(kind: str, **names: object) -> str:
    """The reason ``kind`` with its names filled in."""
    return TEMPLATES[kind].format(**names)


def explain(reasons: list[str]) -> str:
    """One record reason from what each fold rule said, in the order the rules ran (forward first, backward
    last): ``cannot fold forward: A; B; cannot fold backward: C``, or the one reason there is."""
    unique = list(dict.fromkeys(reasons))
    if not unique:
        return reason("nothing_applies")
    if len(unique) == 1:
        return unique[0]
    middle = "".join(f"; {r}" for r in unique[1:-1])
    return f"cannot fold forward: {unique[0]}{middle}; cannot fold backward: {unique[-1]}"


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts))


_PATTERNS = {kind: _pattern(template) for kind, template in TEMPLATES.items()}


def kinds(text: str | None) -> list[str]:
    """The templates ``text`` is made of, in order (``[]`` for None); a part no template matches is ``?``."""
    if not text:
        return []
    body = re.sub(r"^cannot fold forward: |; cannot fold backward: ", "; ", text).removeprefix("; ")
    found: list[str] = []
    for part in body.split("; "):
        kind = next((k for k, p in _PATTERNS.items() if p.fullmatch(part)), None)
        if kind is None and found and found[-1] == "identity":
            continue  # a further problem listed inside an identity-branch reason
        found.append(kind or "?")
    return found
