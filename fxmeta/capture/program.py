"""torch.export programs -> the torch-level ``fx.GraphModule`` the rest of fxmeta works on.

``from_program(program)`` walks the program's graph once and rewrites every ATen call
through the table in ``fxmeta.capture.aten``: layers with parameters become calls of real
modules (``nn.Conv2d`` owning the program's own weight objects ...), everything else the
torch function or tensor method that runs the same ATen op. Modules are placed where the
model had them (the program's ``nn_module_stack``, else the weight's name), so parameter
names, plans and group keys match what fx tracing gives; tensors no module owns keep
their names as attributes. An op the table does not know stays as it is (the channel
analysis then probes or freezes it) and is listed in ``gm.meta[UNMAPPED_OPS]``.

The result must compute exactly what the program computes: it is run against
``program.module()`` on the example input and any difference, down to the last bit, is
an ``UnsupportedModelError`` instead of a silently different model.
"""
from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils import _pytree as pytree

from ..errors import UnsupportedModelError, first_line
from ..keys import CAPTURE, UNMAPPED_OPS
from .aten import ATEN, Lowered

aten = torch.ops.aten
_STATE = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def _bind(op: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args):
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


def _qualname(t: Any) -> str:
    return t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}"


class _Args:
    """One ATen call as a table handler sees it (``fxmeta.capture.aten.Args``)."""

    def __init__(self, converter: _Converter, node: fx.Node) -> None:
        self.c, self.node = converter, node
        self.raw = _bind(node.target, node.args, node.kwargs)

    def __getitem__(self, name: str) -> Any:
        return self.c.new_arg(self.raw[name])

    def param(self, name: str) -> Tensor | None:
        return self.c.tensor_of(self.raw[name])

    def transposed_param(self, name: str) -> Tensor | None:
        t = self.raw[name]
        if not isinstance(t, fx.Node) or t.op != "call_function":
            return None
        if t.target is aten.t.default or (t.target is aten.permute.default and list(t.args[1]) in ([1, 0], [-1, -2])):
            w = self.c.tensor_of(t.args[0])
            return w if isinstance(w, nn.Parameter) and w.dim() == 2 else None
        return None

    def ndim(self, name: str) -> int:
        return self.raw[name].meta["val"].dim()

    def only_first_output_used(self) -> bool:
        return all(u.target is operator.getitem and u.args[1] == 0 for u in self.node.users)

    def module(self, module: nn.Module, *inputs: str) -> Lowered | None:
        path = self.c.place(module, self.node, [self.raw[n] for n in self.raw])
        return None if path is None else Lowered("call_module", path, tuple(self[n] for n in inputs))


class _Converter:
    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.fqn_of: dict[fx.Node, str] = {}  # placeholder of the program -> name of the tensor it reads
        self.tensors: dict[str, Tensor] = {**program.state_dict, **program.constants}
        self.persistent: dict[str, bool] = {}
        self.modules: dict[str, nn.Module] = {}
        self.attrs: dict[str, fx.Node] = {}
        self.collapsed: set[fx.Node] = set()  # tuple-returning calls lowered to their item 0
        self.unmapped: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}  # get_attr targets of the program itself (subgraphs of cond ...)

    # -- arguments
    def tensor_of(self, arg: Any) -> Tensor | None:
        fqn = self.fqn_of.get(arg) if isinstance(arg, fx.Node) else None
        return None if fqn is None else self.tensors[fqn]

    def new_arg(self, arg: Any) -> Any:
        def one(n: fx.Node) -> Any:
            if n in self.fqn_of:
                return self.get_attr(self.fqn_of[n])
            return self.env[n]

        return fx.node.map_arg(arg, one)

    def get_attr(self, fqn: str) -> fx.Node:
        if fqn not in self.attrs:
            self.attrs[fqn] = self.graph.get_attr(fqn)
        return self.attrs[fqn]

    # -- module placement
    def used_fqns(self) -> set[str]:
        return {fqn for n, fqn in self.fqn_of.items() if n.users}

    def place(self, module: nn.Module, node: fx.Node, raw_args: list[Any]) -> str | None:
        """Where ``module`` lives: the model's own module path if the program ran this op in a
        module of the same class, else the owner of its weight's name; None if neither fits."""
        candidates = []
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, kind = list(stack.values())[-1]
            if _qualname(kind) == _qualname(type(module)):
                candidates.append(path)
        own = {id(t): name for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]}
        for arg in raw_args:
            fqn = self.fqn_of.get(arg) if isinstance(arg, fx.Node) else None
            if fqn and "." in fqn:
                owner, _, name = fqn.rpartition(".")
                if own.get(id(self.tensors[fqn])) == name:
                    candidates.append(owner)
        for path in candidates:
            placed = self._fit(module, path)
            if placed is not None:
                self.modules[path] = placed
                return path
        return None

    def _fit(self, module: nn.Module, path: str) -> nn.Module | None:
        if not path or not all(p.isidentifier() or p.isdigit() for p in path.split(".")) or path in self.tensors:
            return None
        if path in self.modules:  # the same module called again: same class, settings and tensors
            old = self.modules[path]
            same = type(old) is type(module) and repr(old) == repr(module) and all(
                a is b for a, b in zip(_tensors(old).values(), _tensors(module).values()))
            return old if same else None
        if any(p.startswith(path + ".") or path.startswith(p + ".") for p in self.modules):
            return None
        used = self.used_fqns()
        for name, t in _tensors(module).items():
            fqn = f"{path}.{name}"
            theirs = self.tensors.get(fqn)
            if theirs is None or theirs is t:
                continue
            if fqn in used:
                return None  # the program reads another tensor under this module's name
            if not any(t is v for v in self.tensors.values()):
                setattr(module, name, theirs)  # a tensor the op does not read (BatchNorm's counter): the model's own
            # else: an unused copy of a tied weight; the module's tensor (the one the program reads) wins
        return module

    # -- the walk
    def run(self) -> fx.GraphModule:
        sig = self.program.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs}
        for spec in sig.output_specs:
            if spec.kind != OutputKind.USER_OUTPUT:
                raise UnsupportedModelError(
                    f"the program mutates {spec.target or 'an input'} ({spec.kind.name}); export the model in eval "
                    "mode, without in-place updates of its inputs or buffers")
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                spec = specs.get(node.name)
                if spec is not None and spec.kind in _STATE:
                    self.fqn_of[node] = spec.target
                    self.persistent[spec.target] = spec.persistent is not False
                elif spec is None or spec.kind == InputKind.USER_INPUT:
                    self.env[node] = self.graph.placeholder(node.name)
                else:
                    raise UnsupportedModelError(f"the program takes a {spec.kind.name} input ({spec.arg.name}), which "
                                                "fxmeta cannot capture; export a model with tensor inputs only")
            elif node.op == "get_attr":
                self.extra[node.target] = getattr(self.program.graph_module, node.target)
                self.env[node] = self.get_attr(node.target)
            elif node.op == "call_function":
                self.env[node] = self.call(node)
            elif node.op == "output":
                self.output(node)
            else:
                raise UnsupportedModelError(f"unexpected {node.op} node {node.name} in the program")
        return self.finish()

    def call(self, node: fx.Node) -> Any:
        if node.target is operator.getitem and node.args[0] in self.collapsed:
            return self.env[node.args[0]]
        for handler in ATEN.get(node.target, ()):
            low = handler(_Args(self, node))
            if low is not None:
                if low.item0:
                    self.collapsed.add(node)
                new = getattr(self.graph, low.op)(low.target, low.args, low.kwargs)
                new.meta["stack_trace"] = node.meta.get("stack_trace")
                return new
        if isinstance(node.target, torch._ops.OpOverload):
            self.unmapped[str(node.target)] += 1
        return self.graph.call_function(node.target, self.new_arg(node.args), self.new_arg(node.kwargs))

    def output(self, node: fx.Node) -> None:
        # The graph returns the flat leaves and its generated forward rebuilds the program's own
        # output structure (a ModelOutput stays a ModelOutput, not the dict fx would write).
        spec = self.program.call_spec
        self.graph.output([self.new_arg(v) for v in node.args[0]])
        names = [n.name for n in self.graph.nodes if n.op == "placeholder"]
        self.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, spec.in_spec, spec.out_spec))

    def finish(self) -> fx.GraphModule:
        for n in reversed(list(self.graph.nodes)):  # weights absorbed by modules, and their transposes
            if not n.users and (n.op == "get_attr" or (n.op == "call_method" and n.target in ("t", "permute"))):
                self.graph.erase_node(n)
        root = nn.Module()
        # In the order of the program's state dict (the model's own order), modules as they come
        for fqn, t in self.tensors.items():
            owner = fqn.rpartition(".")[0]
            if owner in self.modules and not _has(root, owner):
                _put(root, owner, self.modules[owner])
            if not _has(root, fqn):
                _put(root, fqn, t, persistent=self.persistent.get(fqn, fqn in self.program.state_dict))
        for path, module in self.modules.items():
            if not _has(root, path):
                _put(root, path, module)
        for name, obj in self.extra.items():
            _put(root, name, obj)
        self.graph.lint()
        gm = fx.GraphModule(root, self.graph, class_name=_class_name(self.program))
        # GraphModule copies only what the graph reads; keep all the model's state, under its names
        for name, child in root.named_children():
            setattr(gm, name, child)
        for name, t in [*root._parameters.items(), *root._buffers.items()]:
            _put(gm, name, t, persistent=name not in root._non_persistent_buffers_set)
        gm.eval()
        gm.meta[CAPTURE] = "export"
        gm.meta[UNMAPPED_OPS] = dict(self.unmapped)
        return gm


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    return {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}


def _has(root: nn.Module, fqn: str) -> bool:
    obj: Any = root
    for part in fqn.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _put(root: nn.Module, fqn: str, obj: Any, persistent: bool = True) -> None:
    """Set ``obj`` at ``fqn``, creating plain container modules on the way."""
    *parents, name = fqn.split(".")
    owner = root
    for part in parents:
        if not isinstance(getattr(owner, part, None), nn.Module):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if isinstance(obj, nn.Parameter):
        owner.register_parameter(name, obj)
    elif isinstance(obj, Tensor):
        owner.register_buffer(name, obj, persistent=persistent)
    else:
        setattr(owner, name, obj)


def _class_name(program: ExportedProgram) -> str:
    for node in program.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            if path == "":
                return _qualname(kind).rpartition(".")[2]
    return "CapturedProgram"


def _check_inputs(program: ExportedProgram) -> None:
    spec = program.call_spec.in_spec
    n = spec.num_leaves
    args, kwargs = pytree.tree_unflatten(list(range(n)), spec)
    if kwargs or list(args) != list(range(n)):
        raise UnsupportedModelError("the program takes keyword or nested inputs; fxmeta passes the example input as "
                                    "positional tensors: export the model with positional tensor arguments only")


def _check_exact(program: ExportedProgram, gm: fx.GraphModule, args: tuple) -> None:
    with torch.no_grad():
        want, got = program.module()(*args), gm(*args)
    flat_want, spec_want = pytree.tree_flatten(want)
    flat_got, spec_got = pytree.tree_flatten(got)
    same = spec_want == spec_got and all(
        torch.equal(w, g) if isinstance(w, Tensor) else w == g for w, g in zip(flat_want, flat_got))
    if not same:
        raise UnsupportedModelError(
            "the captured graph does not reproduce the torch.export program exactly (an entry of "
            "fxmeta.capture.aten is wrong for this program); capture it with capture='fx' instead")


def from_program(program: ExportedProgram, example_input: Any = None, *, check: bool = True) -> fx.GraphModule:
    """The torch-level ``fx.GraphModule`` of ``program``; with ``check``, run on ``example_input``
    (else the program's own example inputs) it must give exactly the program's output."""
    if not isinstance(program, ExportedProgram):
        raise UnsupportedModelError(f"expected a torch.export ExportedProgram, got {type(program).__name__}")
    _check_inputs(program)
    try:
        gm = _Converter(program).run()
    except UnsupportedModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a program shape the converter does not expect: one line
        raise UnsupportedModelError(f"cannot capture the torch.export program: {type(exc).__name__}: "
                                    f"{first_line(exc)}") from exc
    if check:
        if example_input is None and program.example_inputs is not None:
            example_input = program.example_inputs[0]
        if example_input is not None:
            args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
            _check_exact(program, gm, args)
    return gm
