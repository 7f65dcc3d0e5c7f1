"""Presets: named wrapper stacks per kind of loss, resolved against the device they run on (timm-style registry).

``preset(name, loss)`` returns a :class:`PresetLoss`: a wrapper around a *copy* of ``loss`` whose stack
is built at its first call, for the input's device, by the preset's *policy* (a builder that sees the
device's :class:`~fastloss.hardware.Capabilities`). A perceptual ``balanced`` preset, for example, casts
the backbone to bfloat16 once on a CPU with native bfloat16 and keeps float32 on an AVX2-only CPU,
where bfloat16 is emulated and tens of times slower. The resolved stack is visible (``repr``,
:meth:`PresetLoss.describe`) and saved in ``state_dict`` (the capabilities it was resolved for), so a
resumed run resolves the same way; a stack that moves to another device is resolved again.

``list_presets()`` lists what is known; ``register_preset(name, kind, builder)`` adds one (``builder``
takes the loss, or the loss and the capabilities). A loss's kind is its ``preset_kind`` attribute
(``"topology"`` for :class:`TopologicalLoss`, ``"perceptual"`` for :class:`PerceptualLoss` and
:class:`LPIPSLoss`); set it on your own loss class to use the presets of that kind. ``"auto"`` picks a
stack by measurement on the user's machine and batch (:func:`fastloss.autotune`).

Presets never override a setting the user gave explicitly (``workers``, ``backend``,
``channels_last``, ``compute_dtype``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import hardware
from .hardware import Capabilities
from .losses import BettiMatchingLoss, TopologicalLoss
from .losses._feature import FeatureLoss
from .wrappers import CachedPH, CachedTarget, DownsampledLoss, IntervalLoss, LossWrapper

__all__ = ["PresetLoss", "list_presets", "preset", "preset_kind", "register_preset", "unregister_preset"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class PresetEntry:
    name: str
    kind: str
    builder: Builder
    description: str

    def build(self, loss: nn.Module, caps: Capabilities) -> nn.Module:
        return self.builder(loss, caps) if _takes_capabilities(self.builder) else self.builder(loss)


def _takes_capabilities(builder: Builder) -> bool:
    """Whether ``builder`` takes the capabilities: a second positional parameter without a default (or one
    named ``caps``/``capabilities``); ``lambda loss, n=n: ...`` takes only the loss."""
    try:
        params = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.name in ("caps", "capabilities") for p in params):
        return True
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


_REGISTRY: dict[tuple[str, str], PresetEntry] = {}


def register_preset(name: str, kind: str, builder: Builder, description: str = "", *, overwrite: bool = False) -> None:
    """Register ``builder`` as preset ``name`` for loss kind ``kind``.

    ``builder(loss)`` or ``builder(loss, capabilities)`` returns the wrapped stack for a copy of the
    loss; with the second form the stack can depend on the device (:mod:`fastloss.hardware`).
    """
    if not isinstance(name, str) or not name or not isinstance(kind, str) or not kind:
        raise ValueError(f"`name` and `kind` must be non-empty strings, got {name!r} and {kind!r}")
    if name == "auto":
        raise ValueError("`name` 'auto' is reserved: it is resolved by fastloss.autotune")
    if not callable(builder):
        raise TypeError(f"`builder` must be callable (loss -> wrapped loss), got {type(builder).__name__}")
    if (name, kind) in _REGISTRY and not overwrite:
        raise ValueError(f"preset {name!r} for kind {kind!r} is already registered (pass overwrite=True)")
    _REGISTRY[name, kind] = PresetEntry(name, kind, builder, description)


def unregister_preset(name: str, kind: str) -> None:
    """Remove a registered preset (``KeyError`` if unknown)."""
    del _REGISTRY[name, kind]


def list_presets(kind: str | None = None) -> list[str]:
    """Preset names, for one loss kind or for all."""
    return sorted({n for n, k in _REGISTRY if kind is None or k == kind})


def preset_kind(loss: nn.Module) -> str:
    kind = getattr(loss, "preset_kind", None)
    if not isinstance(kind, str):
        kinds = sorted({k for _, k in _REGISTRY})
        raise TypeError(
            f"`loss` of type {type(loss).__name__} has no `preset_kind`; set it to one of {kinds} to use presets"
        )
    return kind


def describe(name: str, kind: str) -> str:
    return _REGISTRY[name, kind].description


def entry(name: str, kind: str) -> PresetEntry:
    if (name, kind) not in _REGISTRY:
        raise ValueError(f"unknown preset {name!r} for {kind} losses; known: {list_presets(kind)}")
    return _REGISTRY[name, kind]


def _check_unwrapped(loss: object) -> nn.Module:
    if not isinstance(loss, nn.Module):
        raise TypeError(f"`loss` must be an nn.Module, got {type(loss).__name__}")
    if isinstance(loss, LossWrapper):
        raise TypeError(
            f"`loss` is already wrapped ({type(loss).__name__} around {type(loss.innermost()).__name__}); a preset "
            "builds its own stack: pass the unwrapped loss (e.g. `stack.innermost()`)"
        )
    return loss


def _short(module: nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, FeatureLoss):
        return (f"{name}({module.backbone_name}, {str(module.compute_dtype).replace('torch.', '')}"
                f"{', channels_last' if module.channels_last else ''})")
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "workers"):
        knobs = [f"workers={config.workers}"]
        if getattr(config, "backend", None) is not None:
            knobs.append(f"backend={config.backend}")
        return f"{name}({', '.join(knobs)})"
    if isinstance(module, PresetLoss):
        return f"preset {module.name!r}"
    if isinstance(module, CachedPH):
        return f"{name}(refresh_every={module.refresh_every})"
    if isinstance(module, CachedTarget):
        return f"{name}({module.max_bytes / 2**20:.0f} MiB{', host' if module.storage else ''})"
    if isinstance(module, IntervalLoss):
        return f"{name}({module.every})"
    if isinstance(module, DownsampledLoss):
        return f"{name}({module.factor if module.size is None else module.size}, {module.mode})"
    return name


def stack_description(module: nn.Module) -> str:
    """``IntervalLoss(4) o CachedPH(refresh_every=1) o TopologicalLoss(workers=None)``: a stack in one line."""
    parts = []
    while True:
        parts.append(_short(module))
        if not isinstance(module, LossWrapper):
            return " o ".join(parts)
        module = module.loss


class PresetLoss(LossWrapper):
    r"""A preset's stack, resolved for the device of the first call (and again if the device changes).

    Built by :func:`preset`; its ``loss`` is the loss itself until the first call, then the resolved
    stack around it. It is the stack's outermost wrapper, so it holds the stack's clock.

    Example:
        >>> topo = preset("balanced", __import__("fastloss").TopologicalLoss())
        >>> topo.describe()
        "preset 'balanced' (topology): not resolved yet (resolves at the first call, for the input's device)"
    """

    def __init__(self, name: str, kind: str, loss: nn.Module) -> None:
        entry(name, kind)
        super().__init__(loss)
        self.name = name
        self.kind = kind
        self.resolved_for: Capabilities | None = None
        # The loss as given, on the CPU, to resolve from again on another device. A plain attribute:
        # not a submodule, so neither in state_dict nor moved or cast with the stack.
        object.__setattr__(self, "_pristine", copy.deepcopy(loss).to("cpu"))

    @property
    def preset_kind(self) -> str:
        return self.kind

    def _current_device(self) -> torch.device:
        for t in (*self.loss.parameters(), *self.loss.buffers()):
            return t.device
        return torch.device("cpu")

    def resolve(self, device: torch.device | str | Capabilities) -> PresetLoss:
        """Build the stack for ``device`` now (or for recorded capabilities, where the stack is now); returns ``self``."""
        if isinstance(device, Capabilities):
            caps, place = device, self._current_device()
        else:
            place = _normalise(torch.device(device))
            caps = hardware.capabilities(place)
        base = copy.deepcopy(self._pristine).to(place)
        step = int(self.step)
        stack = entry(self.name, self.kind).build(base, caps)
        self.loss = stack
        self._root._adopt()  # the whole stack's root: this preset may itself sit inside other wrappers
        self.step.fill_(step)
        self.resolved_for = caps
        return self

    @torch.compiler.disable
    def _ensure_resolved(self, input: Tensor) -> None:
        caps = self.resolved_for
        if caps is None or torch.device(caps.device) != _normalise(input.device):
            self.resolve(input.device)

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        self._ensure_resolved(input)
        return self.loss(input, target)

    def describe(self) -> str:
        """What this preset became: the device it was resolved for and the resolved stack."""
        head = f"preset {self.name!r} ({self.kind})"
        if self.resolved_for is None:
            return f"{head}: not resolved yet (resolves at the first call, for the input's device)"
        return f"{head} on {self.resolved_for.describe()}: {stack_description(self.loss)}"

    def get_extra_state(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "resolved_for": None if self.resolved_for is None else self.resolved_for.as_dict()}

    def set_extra_state(self, state: dict) -> None:
        if (state["name"], state["kind"]) != (self.name, self.kind):
            raise ValueError(
                f"the checkpoint holds preset {state['name']!r} ({state['kind']}), this is {self.name!r} ({self.kind})"
            )
        saved = state.get("resolved_for")
        if saved is not None:  # rebuild the stack the checkpoint was resolved to, so its state loads into it
            self.resolve(hardware.Capabilities.from_dict(saved))

    def extra_repr(self) -> str:
        where = "unresolved" if self.resolved_for is None else self.resolved_for.device
        return f"name={self.name!r}, kind={self.kind!r}, resolved_for={where!r}"


def _normalise(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def preset(name: str, loss: nn.Module, *, example: tuple[Tensor, Tensor] | None = None, **autotune_kwargs) -> nn.Module:
    """A wrapped copy of ``loss`` following preset ``name`` (``"exact"``, ``"balanced"``, ``"fastest"``, ``"auto"``).

    The stack is resolved for the device of the first call (see :class:`PresetLoss`). ``"auto"`` measures
    the candidates on ``example=(input, target)`` with :func:`fastloss.autotune` (keyword arguments are
    passed to it) and returns the chosen stack.
    """
    loss = _check_unwrapped(loss)
    kind = preset_kind(loss)
    if name == "auto":
        if example is None:
            raise ValueError("preset 'auto' measures on your data: pass example=(input, target)")
        from .autotune import autotune

        return autotune(loss, *example, **autotune_kwargs).loss
    if example is not None or autotune_kwargs:
        raise TypeError(f"`example` and autotune arguments are for preset 'auto' only, not {name!r}")
    entry(name, kind)
    return PresetLoss(name, kind, copy.deepcopy(loss))


# --- the built-in policies --------------------------------------------------------------------------
def _cheap_target_side(loss: nn.Module) -> bool:
    """Whether the loss's target side costs less than caching it would: rank matching on the native
    engine labels a mask in O(n) (0.3 ms at 256², 0.5 ms at 512²) — less than hashing it for the cache."""
    from . import ph

    return isinstance(loss, TopologicalLoss) and loss.config.backend != "cripser" and ph.HAVE_NUMBA


def _topology_balanced(loss: nn.Module) -> nn.Module:
    # Exact. The target's side is cached only where it pays: measured on the suite (256², batch 4), a
    # CachedPH(refresh_every=1) around rank matching on the native engine ran at 0.92x of the bare loss,
    # around Betti matching at 1.09x, around the cripser backend at 1.29x. Reusing a prediction's pairing
    # (refresh_every > 1) measured a median gradient cosine of 0.10-0.17: it fails the contract. The maps'
    # PH already runs on every core by default (workers=None); a user's workers=1 is kept.
    if not isinstance(loss, (TopologicalLoss, BettiMatchingLoss)):  # a user's loss of kind "topology"
        return loss
    return loss if _cheap_target_side(loss) else CachedPH(loss, refresh_every=1)


def _topology_fastest(loss: nn.Module) -> nn.Module:
    # The fastest stack that meets the end-to-end goal (validation Dice within 2% of exact and no worse
    # Betti error, 3 seeds, `python -m benchmarks.e2e`): with the native engine none of IntervalLoss(2, 3,
    # 4), compensated or not, did (README), so fastest adds no approximation to balanced.
    return _topology_balanced(loss)


def perceptual_fast_path(loss: nn.Module, caps: Capabilities) -> nn.Module:
    """The backbone's fast path for ``caps``: weights cast once to the native low precision (none where
    it would be emulated) and laid out channels-last, unless the user set either explicitly."""
    if not isinstance(loss, FeatureLoss):
        return loss
    low = caps.low_precision
    if "compute_dtype" not in loss.explicit and low is not None:
        loss.use_dtype(low)
    if "channels_last" not in loss.explicit and low is not None:
        loss.use_channels_last(True)
    return loss


def target_cache_bytes(caps: Capabilities) -> int:
    """The target cache's bound in presets: 1 GiB of host memory; on a GPU at most 5% of its memory."""
    limit = 1 << 30
    if caps.device_type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(caps.device)).total_memory
        limit = min(limit, total // 20)
    return limit


def _perceptual_balanced(loss: nn.Module, caps: Capabilities) -> nn.Module:
    # Exact: the target's features are cached (training targets repeat every epoch); the backbone
    # runs in the native low precision where there is one (gradient cosine >= 0.95 measured), float32 elsewhere.
    loss = perceptual_fast_path(loss, caps)
    return CachedTarget(loss, max_bytes=target_cache_bytes(caps)) if isinstance(loss, FeatureLoss) else loss


def _perceptual_fastest(loss: nn.Module, caps: Capabilities) -> nn.Module:
    return IntervalLoss(DownsampledLoss(_perceptual_balanced(loss, caps), factor=2), every=4)


# How the built-in presets are chosen (figures: README, `python -m benchmarks`):
# - balanced: the fastest stack that computes the loss on every step with median gradient cosine >= 0.85
#   and median loss error <= 2%, using low precision only where the device computes it natively;
# - fastest: the balanced stack plus every wrapper that keeps the Spearman correlation with the exact
#   loss >= 0.9 over the degradation ladder (and, for topology, the end-to-end goal).
register_preset("exact", "topology", lambda loss: loss, "no wrapper: the reference loss")
register_preset("balanced", "topology", _topology_balanced,
                "exact: CachedPH(refresh_every=1) where the target's side is costly (Betti matching, the cripser "
                "backend); the bare loss for rank matching on the native engine")
register_preset("fastest", "topology", _topology_fastest,
                "= balanced: no IntervalLoss period met the end-to-end goal (README)")
register_preset("exact", "perceptual", lambda loss: loss, "no wrapper: the reference loss")
register_preset(
    "balanced", "perceptual", _perceptual_balanced,
    "CachedTarget o backbone cast once to the native low precision + channels_last (float32 where none is native)",
)
register_preset("fastest", "perceptual", _perceptual_fastest, "IntervalLoss(4) o DownsampledLoss(2, area) o balanced")
