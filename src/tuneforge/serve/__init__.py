"""Using a tuned model: generation, terminal chat, export."""
