"""The store: its backends, Delta tables, the layout of paths, commits, upkeep and migration."""
