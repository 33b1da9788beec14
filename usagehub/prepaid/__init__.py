"""Prepaid as an application service: authorizations, top-ups, cards, events, block/restore commands."""
