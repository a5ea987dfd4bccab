"""Which runs the protocol's Figure 3 draws: the paper's figure sets the baseline's confident
mistakes beside the policy gradient's, so a PG row must be drawn whenever one ran."""
from pgdet.protocol.figures import FIGURE_MAX_MODELS, figure_methods
from pgdet.protocol.methods import BASELINE, CONTROL, METHODS, PG_GAMMA1, pg_variant, rs_variant
from pgdet.protocol.runs import Row, Run


def _rows(labels):
    return [Row(label, "greedy", [Run(0, f"out/{i}", {"AP": 50.0})]) for i, label in enumerate(labels)]


def test_a_protocol_that_ran_only_a_named_variant_draws_that_variant():
    variant = pg_variant("swap credit norm c0.5", ["MODEL.PG.REWARD_ESTIMATOR", "swap"])
    rs = rs_variant("lr0.0003", ["SOLVER.BASE_LR", "0.0003"])
    methods = list(METHODS) + [variant, rs]
    rows = _rows([BASELINE, CONTROL, variant.label, rs.label])
    assert figure_methods(methods, rows) == [BASELINE, CONTROL, variant.label]


def test_the_papers_pg_row_comes_first_and_the_figure_is_capped():
    variants = [pg_variant(f"v{i}", ["MODEL.PG.REWARD_SCALE", f"{i}.0"]) for i in range(3)]
    methods = list(METHODS) + variants
    rows = _rows([BASELINE, CONTROL] + [v.label for v in variants] + [PG_GAMMA1.label])
    drawn = figure_methods(methods, rows)
    assert drawn[:3] == [BASELINE, CONTROL, PG_GAMMA1.label]
    assert len(drawn) == FIGURE_MAX_MODELS


def test_rows_that_did_not_run_or_ran_with_soft_nms_are_not_drawn():
    rows = _rows([BASELINE]) + [Row(CONTROL, "greedy", []), Row(PG_GAMMA1.label, "soft", [
        Run(0, "out/soft", {"AP": 50.0})])]
    assert figure_methods(list(METHODS), rows) == [BASELINE]
