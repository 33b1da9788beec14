"""The pipeline: batching, decode, identity, then the stages (usage, sessions, records, prepaid debit)."""
