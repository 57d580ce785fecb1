"""The impression-log data contract (DESIGN §3): schema, readers, vocabularies, behaviour sequences."""
