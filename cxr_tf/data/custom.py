"""Reading the custom dataset layout into a catalog (work in progress)."""
