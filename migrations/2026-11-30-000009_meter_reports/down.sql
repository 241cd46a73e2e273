DROP INDEX usage_events_resource_time_idx;
DROP TABLE meter_reports;
