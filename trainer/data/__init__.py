"""The impression-log data contract (README, "Data contract"): schema, readers, vocabularies, histories."""
