"""HTTP query API, fleet rollout control and the dashboard page."""
