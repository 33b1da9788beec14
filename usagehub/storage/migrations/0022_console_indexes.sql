-- The console's quarantine browser filters by device and by time received, and the quarantine-burst sweep
-- (once a minute, every hub) counts the last ten minutes: both read by index instead of the whole quarantine.
CREATE INDEX quarantine_device ON quarantine (device_id, quarantine_id);
CREATE INDEX quarantine_received ON quarantine (received_at);
