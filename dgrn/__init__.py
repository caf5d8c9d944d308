"""dgrn."""
