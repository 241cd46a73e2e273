DROP TABLE usage_events;
DROP TABLE usage_counters;
DROP TABLE organization_limits;
DROP TABLE resources;
DROP TABLE organizations;
