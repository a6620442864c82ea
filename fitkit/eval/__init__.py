"""fitkit.eval."""
