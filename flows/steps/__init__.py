"""Bytewax steps: the thin layer between the dataflow and the kernels."""
