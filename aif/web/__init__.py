"""HTTP API and the leaderboard page."""
