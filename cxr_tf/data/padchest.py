"""Reading the padchest dataset layout into a catalog (work in progress)."""
