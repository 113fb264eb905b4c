"""The keys fxmeta stores state under in ``gm.meta`` and ``node.meta``, defined once.

Passes hand state to each other through these (see ``passes``): the example input, the
IR, the pruning plan. ``TENSOR_META`` is torch's own key, written by shape propagation.
"""

EXAMPLE_INPUT = "fxmeta.example_input"  # gm.meta: the input shapes were propagated with
IR = "fxmeta.ir"  # gm.meta: the WeightGraph lowered from this module (LowerPass, MetanetPass)
PLAN = "fxmeta.plan"  # gm.meta: the pruning plan that produced this module
PRUNE_IMPORTANCE = "fxmeta.prune_importance"  # gm.meta: the importance a conditioned metanetwork's output is pruned with
PREPARED = "fxmeta.prepared"  # gm.meta: the weights were trained / rewritten for a weight-importance prune
SPEEDUP = "fxmeta.speedup"  # gm.meta: measured FLOPs ratio original / pruned
TRACED = "fxmeta.traced"  # gm.meta: set on modules traced by fxmeta.trace (shapes may be re-propagated)
AUTO_LEAVES = "fxmeta.auto_leaves"  # gm.meta: {module name: why it could not be traced through}
TENSOR_META = "tensor_meta"  # node.meta: TensorMetadata of the node's output (torch.fx ShapeProp)
CAPTURE = "fxmeta.capture"  # gm.meta: how the graph was captured, "fx" (symbolic tracing) or "export" (torch.export)
UNMAPPED_OPS = "fxmeta.unmapped_ops"  # gm.meta: {ATen op: count} kept as they are by capture (probed or frozen)
