"""The base every wrapper stands on: one explicit, compile-safe step clock per stack.

A *stack* is an outermost wrapper and every wrapper inside it. It has exactly one clock: the outermost
wrapper's ``step`` buffer (int64, saved in ``state_dict``, kept on the CPU whatever device the stack
moves to, so reading it never synchronises a GPU). Inner wrappers read that same buffer
(``inner.step is stack.step``), and writing it (``stack.step.fill_(n)`` or ``stack.set_step(n)``) takes
effect at the next call. The buffer is the clock's only state (a lock and per-thread bookkeeping make
it exact when several threads train through one stack; neither is saved or copied), and stacks work
under ``torch.compile`` (the clock is read in small eager functions: graph breaks, never wrong values).

The clock counts *training steps*. How it advances is the stack's ``clock`` mode:

- ``"backward"`` (the default): once per backward pass that reaches the stack's output. Several calls
  before one backward (deep supervision, several heads) share one step; with several threads, each
  thread's calls before its backward share one step (two threads: two steps).
- ``"optimizer"`` (set by :meth:`LossWrapper.attach`): once per ``optimizer.step()``. Right for
  gradient accumulation (several backward passes per step).
- ``"calls"``: once per training call (for loops with exactly one call per step).
- ``"manual"``: only :meth:`~LossWrapper.advance`, :meth:`~LossWrapper.set_step` or writing the buffer.

Calls in eval mode or under ``torch.no_grad()`` never advance the clock.

Each wrapper sees the clock through the wrappers around it: ``ScheduledWeight`` reads the training step;
``IntervalLoss`` reads its *phase*, which an enclosing ``IntervalLoss(every=a, offset=o)`` turns into
``(phase - o) // a`` (the index of the outer's computed steps). Nested intervals therefore compose:
``every=a`` around ``every=b`` computes one step in ``a * b`` with gain ``a * b``, mean gain 1.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_tensor, upcast
from .._warnings import warn

__all__ = ["CLOCKS", "LossWrapper", "ShapeUnknown", "describe_stack", "loss_output_shape", "summary", "zero_loss"]

CLOCKS = ("backward", "optimizer", "calls", "manual")
# makes the clock's read-compare-advance atomic across threads (one lock for all stacks: it is held for
# a few integer operations)
_CLOCK_LOCK = threading.Lock()

# torch losses whose reduction="none" output has the broadcast shape of input and target
_ELEMENTWISE = (
    nn.L1Loss, nn.MSELoss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss, nn.KLDivLoss,
    nn.SoftMarginLoss, nn.PoissonNLLLoss,
)


def zero_loss(input: Tensor, shape: torch.Size | tuple = ()) -> Tensor:
    """A zero of ``shape`` that is safe to add and to backpropagate: it is attached to ``input``'s graph.

    Being attached keeps every parameter "used" on skipped steps (DistributedDataParallel needs no
    ``find_unused_parameters``), and ``nan_to_num`` keeps a non-finite input from turning it into NaN.
    Half-precision inputs give a float32 zero, like the losses' own (float32) results.
    """
    anchor = upcast(torch.nan_to_num(input.sum()) * 0)  # finite (NaN -> 0, inf -> the largest float) times 0
    return anchor.expand(tuple(shape)) if len(shape) else anchor


def _meta(shape: torch.Size | tuple, like: Tensor) -> Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def loss_output_shape(loss: nn.Module, input: Tensor, target: Tensor | None) -> torch.Size:
    """The shape ``loss(input, target)`` returns, derived from the inputs without computing the loss.

    Rules, in order: the loss's own ``output_shape(input, target)`` (every fastloss loss and wrapper
    has one; it only reads shapes); torch's element-wise losses (``()`` when reduced, else the broadcast
    shape); any other module is run on fake tensors (no computation, no data) — define
    ``output_shape`` on such a loss to avoid that call. (A wrapper remembers the shapes its computed
    steps returned, so its skipped steps reach this function at most once per input signature: see
    :meth:`LossWrapper.skipped`.)
    """
    own = getattr(loss, "output_shape", None)
    if callable(own):
        return torch.Size(own(input, target))
    reduction = getattr(loss, "reduction", None)
    if isinstance(loss, nn.modules.loss._Loss) and reduction in ("mean", "sum", "batchmean"):
        return torch.Size(())
    if isinstance(loss, _ELEMENTWISE) and reduction == "none" and target is not None:
        return torch.broadcast_shapes(input.shape, target.shape)
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_input = mode.from_tensor(input if input.device.type != "meta" else torch.empty_like(input, device="cpu"))
            fake_target = None
            if target is not None:
                fake_target = mode.from_tensor(
                    target if target.device.type != "meta" else torch.empty_like(target, device="cpu"))
            return torch.Size(loss(fake_input, fake_target).shape)
    except Exception as exc:  # a loss that leaves torch (numpy, C++) cannot run on fake tensors
        raise ShapeUnknown(
            f"cannot derive the output shape of {type(loss).__name__} for a skipped step: give it a method "
            f"`output_shape(input, target)` returning the shape its forward returns ({type(exc).__name__}: {exc})"
        ) from exc


class ShapeUnknown(TypeError):
    """The output shape of a loss cannot be derived without computing it (it leaves torch)."""


def _reduction(loss: nn.Module) -> object:
    """The loss's ``reduction`` (or its config's), part of a skipped step's shape signature."""
    reduction = getattr(loss, "reduction", None)
    if reduction is None:
        reduction = getattr(getattr(loss, "config", None), "reduction", None)
    return reduction if isinstance(reduction, str) else None


def _signature(loss: nn.Module, input: Tensor, target: Tensor | None) -> tuple:
    def of(x: Tensor | None) -> tuple | None:
        return None if x is None else (tuple(x.shape), x.dtype, x.device.type)

    return of(input), of(target) if isinstance(target, Tensor) else target, _reduction(loss)


def summary(module: nn.Module) -> str:
    """One module in a few words: its own ``summary()`` (every fastloss loss and wrapper has one), else
    its class name."""
    own = getattr(type(module), "summary", None)
    return module.summary() if callable(own) else type(module).__name__


def describe_stack(module: nn.Module) -> str:
    """``IntervalLoss(4) o CachedPH(refresh_every=1) o TopologicalLoss(workers=None)``: a stack in one line."""
    parts = [summary(module)]
    while isinstance(module, LossWrapper):
        module = module.loss
        parts.append(summary(module))
    return " o ".join(parts)


def _walk_wrappers(module: nn.Module, enclosing: tuple, found: list) -> None:
    """Every wrapper under ``module`` with the wrappers enclosing it (repeats kept, to detect sharing)."""
    if isinstance(module, LossWrapper):
        found.append((module, enclosing))
        enclosing = (*enclosing, module)
    for child in module._modules.values():
        if child is not None:
            _walk_wrappers(child, enclosing, found)


class LossWrapper(nn.Module):
    """Base class of the wrappers: holds ``loss``, the stack's clock, and the stepping rules.

    Subclasses implement :meth:`compute`, and :meth:`gain` / :meth:`inner_phase` where they change the
    value or the phase of the wrappers inside them. One that can skip the loss (return :meth:`skipped`)
    sets ``can_skip = True``: its calls then remember their output shape per input signature.
    """

    #: whether :meth:`compute` may return :meth:`skipped` instead of calling the loss
    can_skip = False
    #: input signatures whose output shape a skipping wrapper remembers (least recently used dropped beyond it)
    max_shapes = 64
    #: whether this wrapper computes exactly what its ``loss`` computes (no change of value, gradient or
    #: work): a preset's or autotune's outer layer; benchmarks see through it
    transparent: bool = False

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be an nn.Module (a loss to wrap), got {type(loss).__name__}")
        self.loss = loss
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._clock = "backward"
        self._optimizer_hooks: list = []
        object.__setattr__(self, "_root", self)  # plain attributes: not submodules, not in state_dict
        object.__setattr__(self, "_enclosing", ())
        self._adopt()

    # --- the stack ----------------------------------------------------------------------------
    def _adopt(self) -> None:
        """Make every wrapper inside ``self.loss`` part of this stack: one clock, known enclosing wrappers."""
        found: list = []
        _walk_wrappers(self, (), found)
        inside = {id(w) for w, _ in found}
        seen: dict[int, LossWrapper] = {}
        modes = set()
        for w, _ in found:
            if id(w) in seen:
                raise ValueError(
                    f"{type(w).__name__} appears twice in the stack of {type(self).__name__}: one wrapper instance "
                    "would be stepped and gated twice per step; use two instances"
                )
            seen[id(w)] = w
            if w is not self and id(w._root) not in inside:
                raise ValueError(
                    f"{type(w).__name__} already belongs to the stack of {type(w._root).__name__}: a wrapper is in "
                    f"one stack only (one clock); build a new {type(w).__name__} for {type(self).__name__}"
                )
            if w is not self and w._root is w and w._clock != "backward":
                modes.add(w._clock)
        if len(modes) > 1:
            raise ValueError(f"the wrapped stacks use different clocks {sorted(modes)}; set one with set_clock()")
        for w, enclosing in found:
            if w is not self:
                w._buffers.pop("step", None)
                object.__setattr__(w, "_root", self)
            object.__setattr__(w, "_enclosing", enclosing)
        if modes:
            self._clock = modes.pop()

    def __getattr__(self, name: str):
        if name == "step":  # an inner wrapper's step is its stack's
            root = self.__dict__.get("_root")
            if root is not None and root is not self:
                return root.step
        return super().__getattr__(name)

    @property
    def root(self) -> LossWrapper:
        """The outermost wrapper of this wrapper's stack (itself when it is not wrapped)."""
        return self._root

    def wrappers(self) -> list[LossWrapper]:
        """Every wrapper in this stack below and including this one (also inside composite losses), outermost first."""
        return [m for m in self.modules() if isinstance(m, LossWrapper)]

    def innermost(self) -> nn.Module:
        """The loss at the bottom of the stack (following ``.loss``)."""
        loss = self.loss
        while isinstance(loss, LossWrapper):
            loss = loss.loss
        return loss

    @property
    def preset_kind(self) -> str | None:
        return getattr(self.loss, "preset_kind", None)

    # --- the clock ----------------------------------------------------------------------------
    @property
    def clock(self) -> str:
        """How the stack's step advances: ``"backward"``, ``"optimizer"``, ``"calls"`` or ``"manual"``."""
        return self._root._clock

    def set_clock(self, mode: str) -> LossWrapper:
        """Choose how the stack's step advances (see the module docstring); returns ``self``."""
        check_choice("mode", mode, CLOCKS)
        if mode == "optimizer" and not self._root._optimizer_hooks:
            raise ValueError("clock 'optimizer' needs an optimizer: call attach(optimizer)")
        if mode != "optimizer":
            self.detach()
        self._root._clock = mode
        return self

    def attach(self, optimizer: torch.optim.Optimizer) -> LossWrapper:
        """Advance the stack once per ``optimizer.step()`` (and no longer on backward); returns ``self``.

        The optimizer holds only a weak reference to the stack. :meth:`detach` undoes it. A copy of the
        stack (``copy.deepcopy``, a preset, the benchmark harness) is not attached.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        root = self._root
        ref = weakref.ref(root)

        @torch.compiler.disable
        def hook(opt, args, kwargs) -> None:
            stack = ref()
            if stack is not None:
                stack.advance()

        root._optimizer_hooks.append(optimizer.register_step_post_hook(hook))
        root._clock = "optimizer"
        return self

    def detach(self) -> LossWrapper:
        """Remove every optimizer hook of :meth:`attach`; the clock goes back to ``"backward"``."""
        root = self._root
        for handle in root._optimizer_hooks:
            handle.remove()
        root._optimizer_hooks = []
        if root._clock == "optimizer":
            root._clock = "backward"
        return self

    @torch.compiler.disable
    def advance(self, steps: int = 1) -> None:
        """Advance the stack's clock by ``steps`` (atomic: safe from several threads)."""
        with _CLOCK_LOCK:
            self._root.step.add_(steps)

    def set_step(self, step: int) -> None:
        """Set the stack's step (resume, or drive schedules by the training loop's own step)."""
        self._root.step.fill_(check_int("step", step, 0, expected="a non-negative int"))

    @torch.compiler.disable
    def current_step(self) -> int:
        """The stack's training step (read from the one ``step`` buffer)."""
        return int(self._root.step)

    @torch.compiler.disable
    def phase(self, step: int | None = None) -> int:
        """This wrapper's phase at training step ``step`` (default: now): the step as seen through the
        enclosing wrappers (each enclosing :class:`IntervalLoss` divides it by its ``every``)."""
        phase = int(self._root.step) if step is None else step
        for outer in self._enclosing:
            phase = outer.inner_phase(phase)
        return phase

    def inner_phase(self, phase: int) -> int:
        """The phase the wrappers inside this one see when this one is at ``phase`` (default: the same)."""
        return phase

    @property
    def counting(self) -> bool:
        """Whether a call now is a training call (training mode and grad enabled)."""
        return self.training and torch.is_grad_enabled()

    @torch.compiler.disable
    def _tick(self, out: Tensor) -> Tensor:
        """After a training call of the stack: advance the clock as its mode says."""
        if not (self.training and torch.is_grad_enabled()):
            return out
        mode = self._clock
        if mode == "calls" or (mode == "backward" and not (isinstance(out, Tensor) and out.requires_grad)):
            self.advance()
        elif mode == "backward":
            with _CLOCK_LOCK:
                group = self._open_group()
            ref = weakref.ref(self)

            @torch.compiler.disable
            def on_backward(grad: Tensor) -> None:
                stack = ref()
                if stack is not None:
                    with _CLOCK_LOCK:
                        stack._close_group(group)

            out.register_hook(on_backward)
        return out

    # One step's outputs form a *group*: the outputs one thread produced since its last backward pass
    # through the stack. The first backward through any output of a group advances the clock once, unless
    # the step was written meanwhile (set_step, advance, fill_) other than by other threads' groups. So
    # several heads before one backward share a step, and two threads training through one stack each
    # count their own steps (4000 backward passes from two threads: 4000 steps). Called under _CLOCK_LOCK.
    def _open_group(self) -> list:
        local = self.__dict__.get("_thread_groups")
        if local is None:  # a plain attribute: never in state_dict; copies and unpickled stacks make their own
            local = self.__dict__["_thread_groups"] = threading.local()
        group = getattr(local, "group", None)
        advances = self.__dict__.get("_group_advances", 0)
        if group is None or group[2] or int(self.step) != group[0] + advances - group[1]:
            # [step when opened, backward advances of the stack then, closed]
            group = local.group = [int(self.step), advances, False]
        return group

    def _close_group(self, group: list) -> None:
        if group[2]:
            return
        group[2] = True
        advances = self.__dict__.get("_group_advances", 0)
        if int(self.step) == group[0] + advances - group[1]:  # moved only by other groups since it opened
            self.step.add_(1)
            self.__dict__["_group_advances"] = advances + 1

    # --- state --------------------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        step = self._buffers.get("step")
        result = super()._apply(fn, recurse)
        if step is not None:  # the clock stays a CPU int64: reading it never synchronises a device
            self._buffers["step"] = step
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self._root is not self:  # fastloss 0.1 saved a step per wrapper: the stack's is the outermost's
            state_dict.pop(prefix + "step", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- calling ------------------------------------------------------------------------------
    def forward(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        check_tensor("input", input)
        out = self.compute(input, target)
        if self.can_skip:
            self._remember_shape(input, target, out)
        if self._root is self:
            out = self._tick(out)
        return out

    # --- skipped steps: the output shape, remembered per input signature ------------------------
    def _shapes(self) -> OrderedDict:
        shapes = self.__dict__.get("_output_shapes")
        if shapes is None:  # a plain attribute: not in state_dict; copies and unpickled stacks start empty
            shapes = self.__dict__["_output_shapes"] = OrderedDict()
        return shapes

    @torch.compiler.disable
    def _remember_shape(self, input: Tensor, target: Tensor | None, out: object) -> None:
        if isinstance(out, Tensor) and input.device.type != "meta":
            self._store_shape(_signature(self.innermost(), input, target), out.shape, out.dtype)

    def _store_shape(self, key: tuple, shape: torch.Size, dtype: torch.dtype | None = None) -> None:
        """Remember ``shape`` (and the dtype a computed step returned; ``None`` when only derived)."""
        shapes = self._shapes()
        shapes[key] = (torch.Size(shape), dtype)
        shapes.move_to_end(key)
        while len(shapes) > self.max_shapes:
            shapes.popitem(last=False)

    @torch.compiler.disable
    def _known(self, input: Tensor, target: Tensor | None) -> tuple[torch.Size, torch.dtype | None] | None:
        shapes = self._shapes()
        key = _signature(self.innermost(), input, target)
        known = shapes.get(key)
        if known is not None:
            shapes.move_to_end(key)
        return known

    def known_shape(self, input: Tensor, target: Tensor | None) -> torch.Size | None:
        """The output shape remembered for this input signature (input and target shape, dtype and device
        type, the loss's reduction), or ``None``."""
        known = self._known(input, target)
        return None if known is None else known[0]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for transient in ("_output_shapes", "_thread_groups", "_group_advances"):
            state.pop(transient, None)
        if state.get("_optimizer_hooks"):  # a copy is not attached to the original's optimizer
            state["_optimizer_hooks"] = []
            state["_clock"] = "backward"
        return state

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        raise NotImplementedError

    # --- describing and preparing --------------------------------------------------------------
    def summary(self) -> str:
        """This wrapper alone in a few words (its class name; subclasses add their settings)."""
        return type(self).__name__

    def describe(self) -> str:
        """The stack from this wrapper down, in one line (``IntervalLoss(4) o DownsampledLoss(2, area) o ...``)."""
        return describe_stack(self)

    def materialise(self, device: torch.device) -> None:
        """Build whatever this wrapper builds lazily, for ``device``, now (a harness calls it on every
        wrapper of a stack before timing, so no timed step pays for it). Default: nothing to build."""

    def output_shape(self, input: Tensor, target: Tensor | None) -> torch.Size:
        """The shape :meth:`forward` returns for these inputs: the one remembered for their signature, else
        the wrapped loss's (:func:`loss_output_shape`)."""
        known = self.known_shape(input, target)
        return known if known is not None else loss_output_shape(self.loss, input, target)

    def skipped(self, input: Tensor, target: Tensor | None) -> Tensor:
        """The value of a skipped step: a zero shaped like a computed one, attached to ``input``.

        The shape and dtype come, without calling the wrapped loss, from the steps this wrapper computed with
        the same input signature (input and target shape, dtype, device type, the loss's ``reduction``; the
        last :attr:`max_shapes` signatures are kept). For a signature not seen yet: the loss's own
        ``output_shape``, torch's element-wise rules, else one run on fake tensors (then remembered). A
        loss that cannot run on fake tensors (numpy, C++) and declares no ``output_shape`` is a
        ``TypeError`` if this is the wrapper's first call; after computed steps, a new signature (a
        smaller last batch) is computed once for real under ``no_grad`` to learn its shape, with a
        one-time warning, instead of failing mid-training.
        """
        known = self._known(input, target)
        if known is None:
            try:
                shape = self.output_shape(input, target)
            except ShapeUnknown:
                if not self._shapes():
                    raise
                shape = self._shape_by_computing(input, target)
            known = (shape, None)
            self._store_shape(_signature(self.innermost(), input, target), shape)
        shape, dtype = known
        zero = zero_loss(input, shape)
        # the dtype a computed step returned (a feature loss gives float32 for a float64 input)
        return zero if dtype is None or zero.dtype == dtype else zero.to(dtype)

    def _shape_by_computing(self, input: Tensor, target: Tensor | None) -> torch.Size:
        if not self.__dict__.get("_warned_real_shape"):
            self.__dict__["_warned_real_shape"] = True
            warn(
                f"{type(self).__name__}: {type(self.loss).__name__} cannot run on fake tensors, so a skipped step "
                f"with a new input shape {tuple(input.shape)} computed it once (no_grad) to learn its output "
                "shape; give the loss a method `output_shape(input, target)` to skip that call"
            )
        with torch.no_grad():
            return torch.Size(self.loss(input, target).shape)

    def gain(self) -> float:
        """The factor this wrapper applies at the current training step (0: the loss is skipped)."""
        return 1.0

    def mean_gain(self) -> float:
        """The documented factor of this wrapper averaged over its window (the nesting contract)."""
        return 1.0

    def stack_gain(self) -> float:
        """Product of :meth:`gain` over the stack: what a training step's value is multiplied by."""
        g = 1.0
        for w in self.wrappers():
            g *= w.gain()
        return g
