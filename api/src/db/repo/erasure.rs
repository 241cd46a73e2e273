//! Erasure of a person (`domain::gdpr::erase`): the `user_erasures` record, the closing of
//! the identity, the tombstone, and the statements that find and rewrite what names them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// A row of `user_erasures`.
#[derive(Debug, Clone, QueryableByName)]
pub struct ErasureRow {
    /// The person (now a tombstone).
    #[diesel(sql_type = SqlUuid)]
    pub user_id: Uuid,
    /// What replaced them (`erased_…`).
    #[diesel(sql_type = Text)]
    pub pseudonym: String,
    /// The person themself, or an owner.
    #[diesel(sql_type = SqlUuid)]
    pub requested_by: Uuid,
    /// The owner's workspace (`None` for the person's own request).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub workspace_id: Option<Uuid>,
    /// The job that erases.
    #[diesel(sql_type = Text)]
    pub job_id: String,
    /// Requested.
    #[diesel(sql_type = Timestamptz)]
    pub requested_at: DateTime<Utc>,
    /// When the data was gone.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub completed_at: Option<DateTime<Utc>>,
}

/// The personal fields of a user, read under a row lock.
#[derive(Debug, Clone, QueryableByName)]
pub struct Person {
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// JWT `sub`, `None` for an invitee who never signed in.
    #[diesel(sql_type = Nullable<Text>)]
    pub subject: Option<String>,
    /// E-mail.
    #[diesel(sql_type = Text)]
    pub email: String,
    /// Name.
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
}

/// The erasure of `user`, if one was requested.
pub async fn find(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<Option<ErasureRow>> {
    diesel::sql_query("SELECT * FROM user_erasures WHERE user_id = $1")
        .bind::<SqlUuid, _>(user)
        .get_result(conn)
        .await
        .optional()
}

/// Records a requested erasure.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    pseudonym: &str,
    requested_by: Uuid,
    workspace: Option<Uuid>,
    job: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO user_erasures (user_id, pseudonym, requested_by, workspace_id, job_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(pseudonym)
    .bind::<SqlUuid, _>(requested_by)
    .bind::<Nullable<SqlUuid>, _>(workspace)
    .bind::<Text, _>(job)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The user `id` with a row lock (`FOR UPDATE` with `exclusive`, else `FOR SHARE`): an erasure
/// request and the end of an export of the same person are serialized on it.
pub async fn lock_person(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    exclusive: bool,
) -> QueryResult<Option<Person>> {
    let sql = if exclusive {
        "SELECT id, subject, email, name FROM users WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id, subject, email, name FROM users WHERE id = $1 FOR SHARE"
    };
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// The person `id` locked for an erasure asked for by `by`, in one statement, when `by` may
/// know of them: a person (never an API key's service account) who shares a live workspace
/// with `by`, or whose erasure `by` asked for; `None` alike for anyone else and a missing id.
pub async fn lock_person_visible(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    by: Uuid,
) -> QueryResult<Option<Person>> {
    diesel::sql_query(
        "SELECT u.id, u.subject, u.email, u.name FROM users u
          WHERE u.id = $1 AND NOT u.service_account
            AND (EXISTS (SELECT 1 FROM members t
                           JOIN members me ON me.workspace_id = t.workspace_id AND me.user_id = $2
                           JOIN workspaces w ON w.id = t.workspace_id AND w.deleted_at IS NULL
                          WHERE t.user_id = u.id)
                 OR EXISTS (SELECT 1 FROM user_erasures e WHERE e.user_id = u.id AND e.requested_by = $2))
            FOR UPDATE OF u",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(by)
    .get_result(conn)
    .await
    .optional()
}

/// Closes the identity of `user` at once: its subject becomes `closed_subject` (so the token's
/// `sub` no longer finds it, and its erased form is refused at sign-in) and its e-mail counts
/// as unverified (so invitations no longer find it).
pub async fn close_identity(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    closed_subject: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE users SET subject = $2, email_verified = false, updated_at = now() WHERE id = $1",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(closed_subject)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Whether a user holds the subject `subject` (a closed one: `erased:…`).
pub async fn subject_taken(conn: &mut AsyncPgConnection, subject: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct B {
        #[diesel(sql_type = Bool)]
        taken: bool,
    }
    let b: B = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM users WHERE subject = $1) AS taken")
        .bind::<Text, _>(subject)
        .get_result(conn)
        .await?;
    Ok(b.taken)
}

/// A membership of a live workspace.
#[derive(Debug, Clone, QueryableByName)]
pub struct Membership {
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// `OWNER`, `ADMIN` or `VIEWER`.
    #[diesel(sql_type = Text)]
    pub role: String,
    /// Whether `user` is its only owner.
    #[diesel(sql_type = Bool)]
    pub last_owner: bool,
}

/// The memberships of `user` in live workspaces.
pub async fn live_memberships(
    conn: &mut AsyncPgConnection,
    user: Uuid,
) -> QueryResult<Vec<Membership>> {
    diesel::sql_query(
        "SELECT m.workspace_id, m.role,
                (m.role = 'OWNER' AND NOT EXISTS (
                    SELECT 1 FROM members o JOIN users ou ON ou.id = o.user_id AND NOT ou.service_account
                     WHERE o.workspace_id = m.workspace_id
                       AND o.role = 'OWNER' AND o.user_id <> m.user_id)) AS last_owner
           FROM members m JOIN workspaces w ON w.id = m.workspace_id AND w.deleted_at IS NULL
          WHERE m.user_id = $1 ORDER BY m.workspace_id",
    )
    .bind::<SqlUuid, _>(user)
    .load(conn)
    .await
}

/// The workspaces whose live rows may name `user`: every one they ever were a member of or
/// acted in, whether they are still there or not — their memberships (live workspaces or
/// not), the workspaces where audit events have them as actor or name them (`userId` in the
/// summary, as membership events do — `member.join`, `member.update_role`, `member.remove`,
/// `member.leave` — or as target), where they recorded usage or asked for or decided an
/// approval, where retention pseudonymized them as a former member (`removed_member_scrubs`),
/// and that of the owner who asked for the erasure. Rows already archived are not here: the
/// archive's own text tells (`domain::gdpr::erase`).
pub async fn linked_workspaces(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct W {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let rows: Vec<W> = diesel::sql_query(
        "SELECT workspace_id AS id FROM members WHERE user_id = $1
         UNION SELECT workspace_id FROM audit_events
                WHERE actor_id = $1 OR summary->>'userId' = $2 OR target_id = $2
         UNION SELECT workspace_id FROM usage_events WHERE actor_id = $1
         UNION SELECT workspace_id FROM approval_requests WHERE requested_by = $1 OR decided_by = $1
         UNION SELECT workspace_id FROM removed_member_scrubs WHERE user_id = $1
         UNION SELECT workspace_id FROM user_erasures WHERE user_id = $1 AND workspace_id IS NOT NULL",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(crate::ids::UserId(user).encode())
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|w| w.id).collect())
}

/// Deletes the idempotency keys `user` used (their stored responses are theirs).
pub async fn delete_idempotency_keys(
    conn: &mut AsyncPgConnection,
    user: Uuid,
) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM idempotency_keys WHERE caller_id = $1")
        .bind::<SqlUuid, _>(user)
        .execute(conn)
        .await
}

/// Drops the stored renderings (JSON text) of other callers' responses that mention the
/// person (lower-cased e-mail `email_needle`, or the name pattern `name_pattern`): a replay
/// then resolves the payload afresh, as the person is now.
pub async fn drop_renderings(
    conn: &mut AsyncPgConnection,
    email_needle: &str,
    name_pattern: Option<&str>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE idempotency_keys SET rendered = NULL
          WHERE rendered IS NOT NULL
            AND (strpos(lower(rendered), $1) > 0 OR ($2::text IS NOT NULL AND rendered ~ $2))",
    )
    .bind::<Text, _>(email_needle)
    .bind::<Nullable<Text>, _>(name_pattern)
    .execute(conn)
    .await
}

/// Takes the e-mail address out of every notification recipient list (a list left empty
/// goes); a no-op without the notifications tables.
pub async fn remove_recipient(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<usize> {
    if !table_exists(conn, "public.notification_recipients").await? {
        return Ok(0);
    }
    let gone = diesel::sql_query(
        "DELETE FROM notification_recipients
          WHERE EXISTS (SELECT 1 FROM unnest(addresses) a WHERE lower(a) = lower($1))
            AND NOT EXISTS (SELECT 1 FROM unnest(addresses) a WHERE lower(a) <> lower($1))",
    )
    .bind::<Text, _>(email)
    .execute(conn)
    .await?;
    let changed = diesel::sql_query(
        "UPDATE notification_recipients
            SET addresses = ARRAY(SELECT a FROM unnest(addresses) WITH ORDINALITY AS u(a, n)
                                   WHERE lower(a) <> lower($1) ORDER BY n),
                updated_at = now()
          WHERE EXISTS (SELECT 1 FROM unnest(addresses) a WHERE lower(a) = lower($1))",
    )
    .bind::<Text, _>(email)
    .execute(conn)
    .await?;
    Ok(gone + changed)
}

/// Whether `name` (`schema.table`) is a table.
pub async fn table_exists(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct B {
        #[diesel(sql_type = Bool)]
        exists: bool,
    }
    let b: B = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS exists")
        .bind::<Text, _>(name)
        .get_result(conn)
        .await?;
    Ok(b.exists)
}

/// How a column holds text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// `text`, `varchar`, `char` and other string types.
    Text,
    /// `jsonb`.
    Jsonb,
    /// `json`.
    Json,
    /// An array of a string type.
    TextArray,
}

/// A column that can hold text, of an ordinary table.
#[derive(Debug, Clone)]
pub struct TextColumn {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Its kind.
    pub kind: TextKind,
    /// Whether its table has a `workspace_id uuid` column.
    pub per_workspace: bool,
}

/// Every column that can hold text, of every ordinary table of every schema but the
/// system's (tables added later included: an erasure finds what they hold too).
pub async fn text_columns(conn: &mut AsyncPgConnection) -> QueryResult<Vec<TextColumn>> {
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = Text)]
        schema: String,
        #[diesel(sql_type = Text)]
        tbl: String,
        #[diesel(sql_type = Text)]
        col: String,
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = Bool)]
        per_workspace: bool,
    }
    let rows: Vec<C> = diesel::sql_query(
        "SELECT n.nspname::text AS schema, c.relname::text AS tbl, a.attname::text AS col,
                CASE WHEN t.typname = 'jsonb' THEN 'jsonb'
                     WHEN t.typname = 'json' THEN 'json'
                     WHEN t.typcategory = 'A' THEN 'text[]'
                     ELSE 'text' END AS kind,
                EXISTS (SELECT 1 FROM pg_attribute w
                         WHERE w.attrelid = c.oid AND w.attname = 'workspace_id'
                           AND w.atttypid = 'uuid'::regtype AND NOT w.attisdropped) AS per_workspace
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                              AND a.attgenerated = ''
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_type e ON e.oid = t.typelem
          WHERE c.relkind = 'r'
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_%'
            AND (t.typname IN ('json', 'jsonb') OR t.typcategory = 'S'
                 OR (t.typcategory = 'A' AND e.typcategory = 'S'))
          ORDER BY 1, 2, 3",
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TextColumn {
            kind: match r.kind.as_str() {
                "jsonb" => TextKind::Jsonb,
                "json" => TextKind::Json,
                "text[]" => TextKind::TextArray,
                _ => TextKind::Text,
            },
            schema: r.schema,
            table: r.tbl,
            column: r.col,
            per_workspace: r.per_workspace,
        })
        .collect())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// What a sweep of one column looks for and writes.
pub struct Sweep<'a> {
    /// A regular expression (PostgreSQL's) of what to replace.
    pub pattern: &'a str,
    /// What replaces it.
    pub replacement: &'a str,
    /// A plain string every match contains in the column's text form (JSON-escaped for
    /// JSON), found with `strpos` before the expression runs.
    pub needle: &'a str,
    /// The needle is lower-case and compared with the lower-cased text.
    pub fold_case: bool,
    /// Only rows of these workspaces (for tables with `workspace_id`).
    pub workspaces: Option<&'a [Uuid]>,
}

/// Rewrites, `batch` rows per statement, every value of `col` that `sweep` matches; how
/// many rows. Rows whose rewrite would change nothing are never picked, so it ends.
pub async fn sweep_column(
    conn: &mut AsyncPgConnection,
    col: &TextColumn,
    sweep: &Sweep<'_>,
    batch: i64,
) -> QueryResult<usize> {
    let table = format!("{}.{}", quote(&col.schema), quote(&col.table));
    let c = quote(&col.column);
    let (rewritten, hay) = match col.kind {
        TextKind::Text => (format!("regexp_replace({c}, $1, $2, 'g')"), c.clone()),
        TextKind::Jsonb => (
            format!("gdpr_scrub_jsonb({c}, $1, $2)"),
            format!("{c}::text"),
        ),
        TextKind::Json => (
            format!("gdpr_scrub_jsonb({c}::jsonb, $1, $2)::json"),
            format!("{c}::text"),
        ),
        TextKind::TextArray => (
            format!(
                "ARRAY(SELECT regexp_replace(x, $1, $2, 'g') FROM unnest({c}) WITH ORDINALITY AS u(x, n) ORDER BY n)"
            ),
            format!("array_to_string({c}, ' ')"),
        ),
    };
    let hay = if sweep.fold_case {
        format!("lower({hay})")
    } else {
        hay
    };
    let scope = if sweep.workspaces.is_some() && col.per_workspace {
        "AND workspace_id = ANY($5)"
    } else {
        "AND $5::uuid[] IS NOT NULL"
    };
    let sql = format!(
        "UPDATE {table} SET {c} = {rewritten}
          WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table}
                 WHERE {c} IS NOT NULL AND strpos({hay}, $3) > 0 {scope}
                   AND ({rewritten})::text IS DISTINCT FROM {c}::text
                 LIMIT $4))"
    );
    let workspaces = sweep.workspaces.unwrap_or(&[]);
    let mut total = 0;
    loop {
        let n = diesel::sql_query(&sql)
            .bind::<Text, _>(sweep.pattern)
            .bind::<Text, _>(sweep.replacement)
            .bind::<Text, _>(sweep.needle)
            .bind::<BigInt, _>(batch)
            .bind::<Array<SqlUuid>, _>(workspaces)
            .execute(conn)
            .await?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// Deletes the invitations addressed to `email` that no one has signed in for yet (the
/// placeholder users other than `user`, and with them their pending memberships).
pub async fn delete_invitee_placeholders(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    email: &str,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM users WHERE subject IS NULL AND lower(email) = lower($2) AND id <> $1",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(email)
    .execute(conn)
    .await
}

/// Turns `user` into its tombstone: the pseudonym instead of the e-mail, no name, and no
/// memberships; marks the erasure complete. Its id, subject (closed when the erasure was
/// requested) and creation time remain, so foreign keys hold.
pub async fn tombstone(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    pseudonym: &str,
) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM members WHERE user_id = $1")
        .bind::<SqlUuid, _>(user)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "UPDATE users SET email = $2, name = NULL, email_verified = false, updated_at = now()
          WHERE id = $1",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(pseudonym)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "UPDATE user_erasures SET completed_at = now() WHERE user_id = $1 AND completed_at IS NULL",
    )
    .bind::<SqlUuid, _>(user)
    .execute(conn)
    .await
    .map(|_| ())
}

/// An archive (`archives`) as erasure sees it.
#[derive(Debug, Clone, QueryableByName)]
pub struct ArchiveRef {
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Its workspace (whose data key seals it).
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Object path.
    #[diesel(sql_type = Text)]
    pub path: String,
}

/// Up to `limit` archives after `after`, by id.
pub async fn archives_after(
    conn: &mut AsyncPgConnection,
    after: Uuid,
    limit: i64,
) -> QueryResult<Vec<ArchiveRef>> {
    diesel::sql_query(
        "SELECT id, workspace_id, path FROM archives WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind::<SqlUuid, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Archive `id`, if it still exists.
pub async fn archive(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ArchiveRef>> {
    diesel::sql_query("SELECT id, workspace_id, path FROM archives WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// `lines` (JSON objects) with `pattern`, and `name_pattern` when given, replaced by
/// `replacement` in their strings and keys (`gdpr_scrub_jsonb`), in order.
pub async fn scrub_lines(
    conn: &mut AsyncPgConnection,
    lines: &[&str],
    pattern: &str,
    name_pattern: Option<&str>,
    replacement: &str,
) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct L {
        #[diesel(sql_type = Text)]
        line: String,
    }
    let rows: Vec<L> = diesel::sql_query(
        "SELECT CASE WHEN $3::text IS NULL THEN s.doc ELSE gdpr_scrub_jsonb(s.doc, $3, $4) END::text AS line
           FROM (SELECT gdpr_scrub_jsonb(l::jsonb, $2, $4) AS doc, n
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(l, n)) s
          ORDER BY s.n",
    )
    .bind::<Array<Text>, _>(lines)
    .bind::<Text, _>(pattern)
    .bind::<Nullable<Text>, _>(name_pattern)
    .bind::<Text, _>(replacement)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|l| l.line).collect())
}

/// Points archive `id` at its redacted object (`path` and the facts of `sealed`) if it
/// still points at `old_path`; whether it did.
pub async fn repoint_archive(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old_path: &str,
    sealed: &crate::storage::Sealed,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE archives SET path = $3, plaintext_bytes = $4, object_bytes = $5,
                plaintext_sha256 = $6, object_sha256 = $7
          WHERE id = $1 AND path = $2",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(old_path)
    .bind::<Text, _>(&sealed.path)
    .bind::<BigInt, _>(sealed.plaintext_bytes)
    .bind::<BigInt, _>(sealed.object_bytes)
    .bind::<Text, _>(&sealed.plaintext_sha256)
    .bind::<Text, _>(&sealed.object_sha256)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Records that `ws`'s rows were pseudonymized for its former member `user` as of
/// `removed_at` (retention then leaves them be).
pub async fn record_scrub(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    user: Uuid,
    removed_at: chrono::DateTime<chrono::Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO removed_member_scrubs (workspace_id, user_id, removed_at) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, user_id) DO UPDATE SET removed_at = EXCLUDED.removed_at,
                scrubbed_at = now()",
    )
    .bind::<diesel::sql_types::Uuid, _>(ws)
    .bind::<diesel::sql_types::Uuid, _>(user)
    .bind::<diesel::sql_types::Timestamptz, _>(removed_at)
    .execute(conn)
    .await
    .map(|_| ())
}
