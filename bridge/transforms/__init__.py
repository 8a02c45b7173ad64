"""Transforms: platform events into the versioned envelope."""
