"""Subcommands of the ``vsdloral`` command line, one module each."""
