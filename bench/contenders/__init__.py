"""The programs compared with the bridge, each run as its own process."""
