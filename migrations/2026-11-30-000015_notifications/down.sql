DROP TABLE notification_attempts;
DROP TABLE notification_deliveries;
DROP TABLE notifications;
DROP TABLE notification_recipients;
DROP TABLE integration_settings;
DROP TABLE webhook_endpoints;
