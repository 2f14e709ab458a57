"""The ``obsflow`` command."""
