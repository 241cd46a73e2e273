-- A delivery not attempted because the workspace's policy turned external integrations off
-- (`externalIntegrationsAllowed`) is `SKIPPED`, with the reason in `last_error`: nothing was
-- sent, and the log says why.
ALTER TABLE notification_deliveries DROP CONSTRAINT notification_deliveries_status_check;
ALTER TABLE notification_deliveries ADD CONSTRAINT notification_deliveries_status_check
    CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED', 'SKIPPED'));
