"""A process that keeps its site parses the run config once per run, not per message."""

from __future__ import annotations

import pytest

from client import site_node
from mmvm.config import ConfigError
from mmvm.federation.settings import app_run_config


def test_the_run_config_is_parsed_once_per_process_and_config(monkeypatch):
    parsed = []
    real = site_node.load_settings
    monkeypatch.setattr(site_node, "load_settings", lambda rc: parsed.append(rc) or real(rc))
    monkeypatch.setattr(site_node, "_SETTINGS", {})
    rc = app_run_config()
    first = site_node.run_settings(rc, 7)
    assert site_node.run_settings(dict(rc), 7) is first and len(parsed) == 1
    other = site_node.run_settings({**rc, "float16": not rc["float16"]}, 7)
    assert other.float16 != first.float16 and len(parsed) == 2
    for _ in range(2):  # a bad config is refused every time, never remembered
        with pytest.raises(ConfigError, match="exchange"):
            site_node.run_settings({**rc, "exchange": "sometimes"}, 7)
    assert len(parsed) == 4
    assert site_node.run_settings({**rc, "float16": not rc["float16"]}, 7) is other
    assert site_node.run_settings(rc, 8) is not first and len(parsed) == 5  # a new run
