DROP TABLE api_request_counters;
