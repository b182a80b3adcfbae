"""The methods in the order the paper's tables list them: the independent VAEs, MMVM,
then the aggregated baselines. Torch-free, for command lines' choices (``mmvm --help``
imports no torch); ``tests/test_method_names.py`` keeps it the registry's names."""

from __future__ import annotations

TABLE_ORDER = ("independent", "mmvm", "avg", "poe", "moe", "mopoe", "mmvaeplus")
