"""Where readings come from: files, the simulator, brokers, Bluesky."""
