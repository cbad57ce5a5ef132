"""The library verbs: one module per command, each returning a report record."""
