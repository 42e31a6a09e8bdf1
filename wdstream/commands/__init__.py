"""Subcommands of the ``wdstream`` CLI, one module each (see ``wdstream.cli``)."""
