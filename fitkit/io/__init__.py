"""fitkit.io."""
