"""Bluesky event-model documents: their readings, files and external assets."""
