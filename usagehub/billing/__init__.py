"""Billing as an application service: sessions, records, runs, corrections, inspection."""
