"""The table order of the methods names every registered method, once."""

from mmvm.aggregation import available_methods
from mmvm.method_names import TABLE_ORDER


def test_the_table_order_is_the_registry():
    assert sorted(TABLE_ORDER) == available_methods() and len(set(TABLE_ORDER)) == 7
