"""fitkit.synth."""
