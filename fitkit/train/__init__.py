"""fitkit.train."""
