-- A tree view reads a page of children for every organization it shows: with the columns a
-- child node shows (name, creation time) in the index, each page is an index-only range scan
-- once autovacuum has marked the table's pages all-visible (heap pages changed since are
-- still read, correctly).
DROP INDEX organizations_parent_idx;
CREATE INDEX organizations_parent_idx ON organizations (parent_id, id) INCLUDE (name, created_at);
