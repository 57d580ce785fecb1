"""GKC, the General Knowledge Center: versioned knowledge in Redis behind gRPC reads and REST ops.

This package never imports torch: its image ships without it.
"""
