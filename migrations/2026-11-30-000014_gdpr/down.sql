DROP FUNCTION gdpr_scrub_jsonb(jsonb, text, text);
DROP TABLE user_erasures;
DROP TABLE data_exports;
DELETE FROM workspace_jobs WHERE workspace_id IS NULL;
DROP INDEX workspace_jobs_personal_idx;
ALTER TABLE workspace_jobs DROP CONSTRAINT workspace_jobs_has_reader;
ALTER TABLE workspace_jobs ALTER COLUMN workspace_id SET NOT NULL;
DROP TABLE consents;
DROP FUNCTION consents_append_only();
