DROP INDEX audit_events_removals_idx;
DROP TABLE removed_member_scrubs;
