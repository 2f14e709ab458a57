"""Pure functions over reading tables: deduplication, partitions and seq numbers."""
