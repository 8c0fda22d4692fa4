"""The reference docs describe what the code does today."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

from prometheus_client import CollectorRegistry

from watcher.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_matches_the_models() -> None:
    """docs/configuration.md embeds exactly what scripts/config-reference.py generates
    from the pydantic models (regenerate with `--write`)."""
    script = runpy.run_path(str(ROOT / "scripts" / "config-reference.py"))
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    generated = doc.split(script["BEGIN"])[1].split(script["END"])[0].strip()
    assert generated == script["render"]().strip()


def test_metrics_reference_lists_every_metric() -> None:
    """Every metric the watcher registers is documented in docs/metrics.md, and the
    document names no metric that does not exist."""
    registry = CollectorRegistry()
    Metrics(registry=registry)
    registered = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    table = {m for m in re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.MULTILINE)}
    assert table == registered
