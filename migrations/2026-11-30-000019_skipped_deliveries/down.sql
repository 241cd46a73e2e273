UPDATE notification_deliveries SET status = 'FAILED' WHERE status = 'SKIPPED';
ALTER TABLE notification_deliveries DROP CONSTRAINT notification_deliveries_status_check;
ALTER TABLE notification_deliveries ADD CONSTRAINT notification_deliveries_status_check
    CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED'));
