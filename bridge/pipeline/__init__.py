"""What joins sources to sinks: records, acknowledgements, back-off, the delivery loop."""
