"""The ranker: the downstream plug-in model, K̂ assembly and model artifacts (shared with training)."""
