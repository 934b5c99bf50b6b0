"""Adapters for the converters certified by snnverify: the reference one and the peers."""
