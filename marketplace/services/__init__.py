"""Writes. Each service is keyword-only, runs in a transaction and raises MarketError."""
