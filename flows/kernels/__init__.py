"""Pure, engine-independent batch kernels: windows, aggregates, sketches, features."""
