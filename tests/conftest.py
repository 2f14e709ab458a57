"""Shared fixtures: paths to sample data and small helpers for reading stores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUOY = ROOT / "data" / "buoy_sst.parquet"
BUOY_MAP = "source=source_id,time=event_time"


@pytest.fixture
def buoy() -> Path:
    return BUOY


def sorted_frame(df: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """A frame in a canonical row order, for comparing outputs regardless of arrival order."""
    keys = keys or ["source", "channel", "time", "seq"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)
