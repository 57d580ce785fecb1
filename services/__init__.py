"""What every KEEP service shares: settings base, logging, metrics, errors, gRPC bootstrap.

Nothing here imports torch, redis or the trainer: the GKC image ships without them.
"""
