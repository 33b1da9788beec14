-- An open session's walk state after its last point (core.sessions.Carry): in-order data
-- continues the session from it instead of replaying every point since the session opened.
ALTER TABLE sessions ADD COLUMN carry jsonb;
