DROP INDEX stripe_events_received_idx;
DROP INDEX usage_events_created_idx;
DROP INDEX audit_events_created_idx;
DROP TABLE retention_settings;
