"""What ``aif usage`` prints: a usage report (:mod:`api.services.usage`) as a table.

The command itself is in :mod:`api.cli`, beside ``aif keys``: both work on the store directly.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from api.schemas_usage import UsageReport

COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
# Each grouped field's columns, in the report's order.
GROUP_COLUMNS = {"key": ("key_id", "key_name"), "model": ("model",), "hour": ("hour",)}


def usage_data(report: UsageReport) -> dict[str, Any]:
    """The report as ``GET /v1/usage`` answers it, for ``-o json|yaml``."""
    data: dict[str, Any] = report.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def usage_table(report: UsageReport) -> Table:
    data = usage_data(report)
    columns = [c for group in report.group_by for c in GROUP_COLUMNS[group]]
    table = Table(*columns, *COUNTS, title=f"usage from {data['from']} to {data['to']}")
    for row in data["data"]:
        table.add_row(*(str(row[c]) for c in columns), *(f"{row[c]:,}" for c in COUNTS))
    totals = data["totals"]
    table.add_row(
        "total", *([""] * (len(columns) - 1)), *(f"{totals[c]:,}" for c in COUNTS),
        style="bold",
    )  # fmt: skip
    return table
