"""The fold rules, one per module, each written once against :class:`~bnfold.fold.rules.graph.FoldGraph`
and run on torch FX graphs (:mod:`bnfold.fold.fx_graph`) and ONNX graphs (:mod:`bnfold.fold.onnx.adapter`)
alike, so that one network gives the same folds whatever format it came in.

Each rule module states its formula in its docstring and has a ``match(graph, affine)`` that finds its
pattern, checks it (returning the reason as a string when it refuses, ``None`` when the pattern does not
apply) and returns a :class:`~bnfold.fold.rules.graph.Plan` whose ``rewrite`` edits the graph:

* :mod:`.forward`: into the layers that compute the affine's input, through bias adds, branch sums,
  concatenations and moves (permutes, slices, reshapes, ...: see :mod:`.graph`).
* :mod:`.identity`: a RepVGG identity branch ``conv(x) + bn(x)`` into the conv beside it.
* :mod:`.backward`: into every layer that reads the affine's output, through moves and pads that copy
  values.
"""
