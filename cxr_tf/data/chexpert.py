"""Reading the chexpert dataset layout into a catalog (work in progress)."""
