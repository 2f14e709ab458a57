"""obsflow dataflows and stream logic: ingest, windows, the CLI that runs them."""
