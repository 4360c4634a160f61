"""Reads. Every selector returns rows already scoped to the caller."""
