"""Unknown keys in the ``key=value`` overrides of a LazyConfig, named with the nearest valid keys.

Why: OmegaConf adds whatever key an override names, so ``train.max_itr=2`` is accepted silently
(and the run trains for ``train.max_iter``, 22,500 iterations), and a misspelled argument of a
model part (``model.pg.settings.reward_estimatr=swap``) surfaces as instantiate's TypeError
traceback. An override's key is valid if the loaded config has it, or if it is an argument of
the callable its parent node instantiates (``_target_``): a LazyConfig node lists only the
arguments it sets.
"""
import difflib
import inspect
from typing import Iterable, List, Optional, Set

from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..config_error import ConfigError

_ABSENT = object()
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def override_key(override: str) -> str:
    """The dotted key of a ``key=value`` override (hydra's ``+key=value`` / ``++key=value`` too)."""
    return override.split("=", 1)[0].lstrip("+")


def missing_keys(cfg, overrides: Iterable[str]) -> List[str]:
    """The keys of `overrides` that `cfg` (before the overrides) does not have."""
    keys = [override_key(o) for o in overrides]
    return [k for k in keys if OmegaConf.select(
        cfg, k, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT]


def _arguments(target) -> Optional[Set[str]]:
    """Names of the keyword arguments callable `target` accepts; None if it takes any (a
    ``**kwargs`` that no ``__init__`` further up a class's MRO closes) or cannot be inspected."""
    chain = [c for c in target.__mro__ if c is not object] if inspect.isclass(target) else [target]
    names = set()
    for member in chain:
        try:
            params = inspect.signature(member).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind not in _VARIADIC}
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def _target_arguments(node) -> Optional[Set[str]]:
    """The arguments of the callable config node `node` instantiates: an empty set for a node
    without ``_target_`` (it takes only the keys it has), None if the callable takes any."""
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if target is None:
        return set()
    return _arguments(locate(target) if isinstance(target, str) else target)


def _valid_keys(node, prefix: str = "") -> Iterable[str]:
    """Every dotted key of a plain (``to_container``) config, and every argument its nodes'
    callables take, for suggestions."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from _valid_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"
    if isinstance(node, dict):
        yield from (prefix + name for name in sorted(_target_arguments(node) or ()))


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def check_override_keys(loaded, overridden, keys: Iterable[str]) -> None:
    """Raise ConfigError for the first of `keys` (missing from the `loaded` config, see
    :func:`missing_keys`) that is no argument of its parent's ``_target_`` in the `overridden`
    config, naming the closest valid keys (difflib)."""
    for key in keys:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(overridden, parent_key, default=None) if parent_key else None
        arguments = _target_arguments(parent)
        if arguments is None or leaf in arguments:
            continue
        candidates = dict.fromkeys(_valid_keys(OmegaConf.to_container(loaded, resolve=False)))
        valid = [k for k in candidates if not k.rpartition(".")[2].startswith("_")]  # _target_
        close = [k for k in difflib.get_close_matches(key, valid, n=10, cutoff=0.6)
                 if _similar(leaf, k.rpartition(".")[2])][:3]  # not just the same parent
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown config key {key!r} in the command-line overrides.{hint}")
