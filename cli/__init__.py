"""The `rankwatch` command line: the composition root that wires every package together.

Each subcommand lives in its own module here and exposes ``register(subparsers)``; they are
wired in one explicit list in :mod:`rankwatch.cli.main`. Heavy imports (faust, confluent-kafka)
happen inside the command handlers, so ``rankwatch --help`` stays fast.
"""
