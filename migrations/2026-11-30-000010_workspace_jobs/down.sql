DROP TABLE workspace_jobs;
