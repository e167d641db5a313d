"""Reading the mimic dataset layout into a catalog (work in progress)."""
