"""CLI command groups. Each module exposes ``register(subparsers)``; it must import cheaply (no torch at
module level) because ``keep --help`` imports them all."""
