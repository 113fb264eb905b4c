"""The per-op channel rules, split by op family, and the table built from them."""
