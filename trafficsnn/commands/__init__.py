"""One module per CLI subcommand; each exposes ``command`` (a click command).

They only parse options and call the library: no logic lives here.
"""
