"""Readings' schema and the formats readings arrive in."""
