DROP TABLE archives;
ALTER TABLE retention_settings DROP COLUMN archive_before_delete;
DROP TABLE data_keys;
