-- `node(id: "aud_…")` refetches an audit event by its id alone.
CREATE UNIQUE INDEX audit_events_id_idx ON audit_events (id);
