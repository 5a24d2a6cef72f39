"""The web console in a real browser (issue 19)."""
