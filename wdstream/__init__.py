"""wdstream."""
