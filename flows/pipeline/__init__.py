"""Jobs: prepare, run and finish ingests, replays and live sessions."""
