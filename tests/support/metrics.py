"""Reading the bridge's metrics the way a scraper does: through the registry's
public API, by exposed name and labels, never through the private value
holders of prometheus_client's metric objects."""

from __future__ import annotations

from bridge.observability.metrics import Metrics

__all__ = ["sample"]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of the series ``name{labels}`` in ``metrics``' registry.

    ``name`` is the exposed sample name: counters end in ``_total``,
    histograms have ``_count``/``_sum``/``_bucket``. A series that does not
    exist (a renamed metric or label, a label value never counted) fails with
    an AssertionError rather than reading as 0, so a rename cannot make a test
    pass silently.
    """
    value = metrics.registry.get_sample_value(name, labels)
    if value is None:
        raise AssertionError(f"no series {name}{labels or ''} in the registry")
    return value
