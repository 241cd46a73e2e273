DROP INDEX organizations_parent_idx;
CREATE INDEX organizations_parent_idx ON organizations (parent_id, id);
