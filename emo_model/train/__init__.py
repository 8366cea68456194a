"""Training: data preparation (`prepare-data`), datasets, the three EMO stages, the learning check."""
