"""twinjax.inference — see DESIGN.md; built by its own issue."""
