DROP TABLE rate_limit_windows;
DROP TABLE workspace_templates;
DROP TABLE approval_requests;
DROP TABLE api_keys;
ALTER TABLE users DROP COLUMN service_account;
DROP TABLE quota_counters;
DROP TABLE workspace_quotas;
DROP TABLE workspace_settings;
