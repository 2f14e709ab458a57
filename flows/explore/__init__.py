"""The notebook API: the Explorer, plots, analysis and lineage.

``from obsflow.flows.explore import open_store`` is how notebooks begin."""

from obsflow.flows.explore.explorer import Explorer, open_store

__all__ = ["Explorer", "open_store"]
