DROP TABLE analytics_snapshots;
