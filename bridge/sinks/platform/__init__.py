"""The platform sink: recording external task reports and metrics."""
