"""fitkit.priors."""
