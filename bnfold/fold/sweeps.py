"""The fold pass, written once for every graph adapter: each per-channel affine ends folded, removed, frozen
as an affine or kept, with the reasons the rules gave.

Four sweeps, so that one fold can enable the next:

1. in graph order, a BN whose output nothing reads is removed; the others fold forward into the layers that
   compute their input where they can (a chain conv → BN → BN folds completely, since the conv then computes
   the first BN's output);
2. in graph order, identity branches ``conv(x) + bn(x)`` into the conv beside them (whose own BN folded in
   sweep 1);
3. in reverse graph order, backward into the layers that read the output (BN → BN → conv folds completely);
4. what is left is frozen as ``x·s + t`` by the adapter (a Mul/Add already is one), with every reason.

The affines may be given lazily: an adapter that recognises an affine only once the folds before it are
done (a Mul/Add after a BN that folded into a conv) yields them as the first sweep reaches them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bnfold.fold.reasons import explain, reason
from bnfold.fold.records import AFFINE, FOLDED, KEPT, Action
from bnfold.fold.rules import backward, forward, identity
from bnfold.fold.rules.graph import Affine, FoldGraph, Match, N, Plan, V

AFFINE_FORMS = ("batchnorm", "muladd")


@dataclass
class Outcome:
    """What became of one affine: the fields of its record."""

    action: Action
    how: str | None = None
    into: list[str] = field(default_factory=list)
    reason: str | None = None


def fold_affines(graph: FoldGraph[N, V], affines: Iterable[Affine[N, V]], form: str) -> list[Outcome]:
    """Run the sweeps over ``affines`` (in graph order); one outcome per affine, in that order."""
    if form not in AFFINE_FORMS:
        raise ValueError(f"affine_form must be one of {AFFINE_FORMS}, not {form!r}")
    found: list[Affine[N, V]] = []
    outcomes: list[Outcome | None] = []
    reasons: list[list[str]] = []
    for affine in affines:
        found.append(affine)
        reasons.append([])
        outcomes.append(_removed(graph, affine) or _apply(forward.match(graph, affine), reasons[-1]))
    for index in [i for i, o in enumerate(outcomes) if o is None]:
        outcomes[index] = _apply(identity.match(graph, found[index]), reasons[index])
    for index in reversed([i for i, o in enumerate(outcomes) if o is None]):
        affine = found[index]
        outcomes[index] = _removed(graph, affine) or _apply(backward.match(graph, affine), reasons[index])
    return [o or _keep(graph, found[i], reasons[i], form) for i, o in enumerate(outcomes)]


def _removed(graph: FoldGraph[N, V], affine: Affine[N, V]) -> Outcome | None:
    """A BN whose output nothing reads computes nothing the model returns: it is removed."""
    if graph.readers(affine.output) or graph.is_output(affine.output):
        return None
    graph.remove(affine)
    return Outcome(FOLDED, "removed", reason=reason("unused"))


def _apply(match: Match, reasons: list[str]) -> Outcome | None:
    """Rewrite a plan and say so; note the reason of a refusal."""
    if isinstance(match, Plan):
        match.rewrite()
        return Outcome(FOLDED, match.how, match.into)
    if match is not None:
        reasons.append(match)
    return None


def _keep(graph: FoldGraph[N, V], affine: Affine[N, V], reasons: list[str], form: str) -> Outcome:
    why = explain(reasons)
    problem = graph.freeze(affine, form)
    return Outcome(AFFINE, reason=why) if problem is None else Outcome(KEPT, reason=f"{why}; {problem}")
