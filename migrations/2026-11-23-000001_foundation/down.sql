DROP TABLE idempotency_keys;
DROP TABLE audit_events;
DROP TABLE members;
DROP TABLE workspaces;
DROP TABLE users;
