"""fitkit.render."""
