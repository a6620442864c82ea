"""fitkit.body."""
