"""The table order of the methods names every registered method, once."""

from mmvm.aggregation import available_methods
from mmvm.method_names import TABLE_ORDER


def test_the_table_order_is_the_registry():
    assert sorted(TABLE_ORDER) == available_methods() and len(set(TABLE_ORDER)) == 7


def test_joint_methods_impute_from_their_subsets_posterior_and_mixtures_do_not():
    from mmvm.aggregation import subset_rule

    assert {m: subset_rule(m) for m in TABLE_ORDER} == {
        "independent": None, "mmvm": None, "avg": "avg", "poe": "poe", "moe": None,
        "mopoe": "poe", "mmvaeplus": None}
