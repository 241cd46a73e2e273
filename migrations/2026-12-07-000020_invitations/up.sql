-- Membership by consent: `addMember` invites, and a membership exists only once the invitee
-- accepts (`acceptInvitation`) with a verified e-mail equal to the invitation's. An
-- invitation lives until it is accepted, declined, revoked or expires
-- (`INVITATION_TTL_DAYS`; the periodic `invitation-expiry` deletes expired ones).
CREATE TABLE invitations (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id),
    -- Normalized (`domain::invitations::normalize_email`): ASCII letters lower-cased,
    -- nothing else folded.
    email        text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    role         text        NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'VIEWER')),
    invited_by   uuid        REFERENCES users (id),
    -- E-mails sent (the first, and each `resendInvitation`).
    sends        integer     NOT NULL DEFAULT 1 CHECK (sends >= 1),
    last_sent_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    UNIQUE (workspace_id, email)
);
CREATE INDEX invitations_email_idx ON invitations (email);
CREATE INDEX invitations_expires_idx ON invitations (expires_at);

-- Pending memberships (a placeholder user who never signed in) were memberships without
-- consent: they become invitations, and the placeholders stop being members.
INSERT INTO invitations (id, workspace_id, email, role, invited_by, created_at, expires_at)
SELECT m.id, m.workspace_id, lower(u.email), m.role, m.invited_by, m.created_at,
       now() + interval '14 days'
  FROM members m JOIN users u ON u.id = m.user_id
 WHERE u.subject IS NULL AND NOT u.service_account
ON CONFLICT DO NOTHING;
DELETE FROM members m USING users u
 WHERE u.id = m.user_id AND u.subject IS NULL AND NOT u.service_account;
