"""Everything that touches the outside world: record formats, stores, sources and sinks."""
