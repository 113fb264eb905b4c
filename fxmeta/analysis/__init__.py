"""Channel analysis: channel spaces, dependency groups and the per-op rule table."""
