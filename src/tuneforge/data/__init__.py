"""Data: files and bundled datasets -> rows -> examples -> token ids and masks -> batches."""
