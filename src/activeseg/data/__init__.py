"""Data: sources (BIDS microscopy, image/mask folders, synthetic phantom) and patches."""
