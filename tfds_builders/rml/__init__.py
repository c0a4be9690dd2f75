"""TFDS builder package; see the README next to this file."""
