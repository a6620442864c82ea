"""Open pose priors shipped with fitkit (installed as ``fitkit.open_priors``); see README.md."""
