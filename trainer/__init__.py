"""KEEP trainer: data contract, synthetic world, Stage 1 extraction, export, Stage 2 plugging, experiments."""
