"""The fine-tuning methods of Table 1 (the paper's rows and, beyond the paper, RS loss) and the
variants a user adds (``--variants``, ``--grid``, ``--rs-variants``): each a label, a folder
name and the fine-tune config's overrides."""
import itertools
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..engine import ConfigError
from ..modeling.pg.pg_options import check_pg_config

BASELINE, CONTROL = "standard (baseline)", "standard fine-tune"


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its table label, its folder name, its fine-tune config overrides."""

    label: str
    slug: str
    opts: Tuple[str, ...]
    base: Optional["Method"] = None  # for a variant: the method whose overrides it extends


PG_GAMMA1 = Method("PG γ=1", "pg_gamma1", ("MODEL.PG.ENABLED", "True", "MODEL.PG.GAMMA", "1.0"))
# beyond the paper: the ranking loss a user would pick today to train toward AP
RS_LOSS = Method("RS loss", "rs_loss", ("MODEL.PG.ENABLED", "False", "MODEL.ROI_HEADS.NAME",
                                        "RSROIHeads", "MODEL.RS_LOSS.ENABLED", "True"))
METHODS = (
    Method(CONTROL, "finetune_standard", ("MODEL.PG.ENABLED", "False")),
    Method("OHEM", "ohem", ("MODEL.PG.ENABLED", "False", "MODEL.ROI_HEADS.NAME", "OHEMROIHeads")),
    Method("PG γ=0", "pg_gamma0", ("MODEL.PG.ENABLED", "True", "MODEL.PG.GAMMA", "0.0")),
    PG_GAMMA1,
    RS_LOSS,
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def pg_variant(name: str, opts: Sequence[str]) -> Method:
    """PG γ=1 with extra overrides, labelled and filed under `name`.

    The label names the γ the run uses, so a variant overriding MODEL.PG.GAMMA (e.g. the γ = 0
    counterpart of an estimator) is not mislabelled "PG γ=1".
    """
    overrides = dict(zip(opts[::2], opts[1::2]))
    gamma = overrides.get("MODEL.PG.GAMMA")
    gamma = "1" if gamma is None else f"{float(gamma):g}"
    return Method(f"PG γ={gamma}, {name}", "pg_" + _slug(name), PG_GAMMA1.opts + tuple(opts),
                  PG_GAMMA1)


def rs_variant(name: str, opts: Sequence[str]) -> Method:
    """RS loss with extra overrides (e.g. its own SOLVER.BASE_LR), filed under `name`."""
    return Method(f"{RS_LOSS.label}, {name}", "rs_" + _slug(name), RS_LOSS.opts + tuple(opts),
                  RS_LOSS)


def parse_variant(text: str, make=pg_variant, option: str = "--variants") -> Method:
    """``"NAME=KEY VALUE [KEY VALUE ...]"`` -> PG γ=1 (or, with `make` rs_variant, RS loss)
    plus those overrides."""
    name, sep, rest = text.partition("=")
    opts = rest.split()
    if not (sep and name.strip() and opts and len(opts) % 2 == 0):
        raise ConfigError(f"{option} entry {text!r} is not 'NAME=KEY VALUE [KEY VALUE ...]', "
                          "e.g. 'conditional=MODEL.PG.REWARD_ESTIMATOR conditional'.")
    return make(name.strip(), opts)


def grid_variants(specs: Sequence[str]) -> List[Method]:
    """Every combination of ``KEY=V1,V2,...`` entries, each a PG γ=1 variant named by its values.

    No entries, no variants (itertools.product of no axes would yield one empty combination).
    """
    if not specs:
        return []
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not (sep and key and values):
            raise ConfigError(f"--grid entry {spec!r} is not 'KEY=V1,V2,...', "
                              "e.g. 'MODEL.PG.REWARD_ESTIMATOR=joint,conditional'.")
        axes.append([(key, v) for v in values.split(",")])
    return [
        pg_variant(", ".join(f"{key.split('.')[-1]}={value}" for key, value in point),
                   [item for pair in point for item in pair])
        for point in itertools.product(*axes)
    ]


def select_methods(slugs: Sequence[str]) -> List[Method]:
    """The standard methods named by folder (``--methods``); the control is always kept, since
    every row's ΔAP is measured against it."""
    known = {m.slug: m for m in METHODS}
    unknown = [s for s in slugs if s not in known]
    if unknown:
        raise ConfigError(f"--methods {unknown} unknown; choose from {list(known)}.")
    return [m for m in METHODS if m.slug in slugs or m.label == CONTROL]


def distinct_methods(variants: Sequence[Method], finetune_cfg,
                     standard: Sequence[Method] = METHODS,
                     skippable: Sequence[Method] = ()) -> List[Method]:
    """`standard` plus the variants that configure a run different from every method before them.

    `finetune_cfg(opts)` builds the fine-tune config with `opts`, which also rejects unknown keys
    before anything trains. So are MODEL.PG options that cannot work together (e.g. ``joint``
    with ``BASELINE sampled_mean``, pgdet.modeling.pg.pg_options): a method with such options
    stops the run with one line naming it, except one of `skippable` (a ``--grid``
    combination, which the user did not write out), which is left out with a note.
    """
    methods, configs = [], []
    for method in (*standard, *variants):
        cfg = finetune_cfg(method.opts)
        try:
            check_pg_config(cfg)
        except ConfigError as e:
            if method not in skippable:
                raise ConfigError(f"{method.label}: {e}") from None
            print(f"[table1] {method.label}: not run, {e}", flush=True)
            continue
        if cfg in configs:
            print(f"[table1] {method.label}: same config as "
                  f"{methods[configs.index(cfg)].label}; not run twice", flush=True)
            continue
        if method.slug in {m.slug for m in methods}:
            raise ConfigError(f"Two methods would share the folder {method.slug!r}; rename one.")
        methods.append(method)
        configs.append(cfg)
    return methods
