"""Operations as an application service: alerts (raised, streamed, acknowledged, exported) and revenue assurance."""
