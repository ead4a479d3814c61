"""Tools around strata runs that need Python: plotting of training curves (plot)."""
