"""One module per ``streamtrain`` subcommand; see :mod:`streamtrain.cli`."""
