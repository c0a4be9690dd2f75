"""TFDS builders for the FER sequence datasets (one package per dataset)."""
