DROP INDEX audit_events_id_idx;
