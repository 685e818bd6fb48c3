"""One module per `mace` sub-command, each with `register(subparsers)`."""
