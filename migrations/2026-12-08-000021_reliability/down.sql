DROP INDEX workspace_jobs_personal_kind_idx;
DROP INDEX workspace_jobs_kind_idx;
DROP TABLE stripe_reads;
ALTER TABLE stripe_events DROP COLUMN failures, DROP COLUMN retry_at, DROP COLUMN last_error;
