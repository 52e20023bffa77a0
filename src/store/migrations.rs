//! Schema migrations, tracked in `PRAGMA user_version` by rusqlite_migration.
//! Append only: never edit a migration that has shipped.

use rusqlite_migration::{Migrations, M};

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            r#"
CREATE TABLE links (
    mm_user_id   TEXT PRIMARY KEY,
    uid          TEXT NOT NULL,
    mm_username  TEXT NOT NULL,
    mode         TEXT NOT NULL,
    linked_at    INTEGER NOT NULL
);
CREATE INDEX links_uid ON links(uid);

-- The durable queue: anything acknowledged to a user is a row here first.
CREATE TABLE queue (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    owner        TEXT NOT NULL,
    request_id   TEXT NOT NULL UNIQUE,
    reply        TEXT,
    state        TEXT NOT NULL CHECK (state IN ('queued','running','done','failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_after    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    last_error   TEXT
);
CREATE INDEX queue_ready ON queue(state, run_after);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    request_id  TEXT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT,
    outcome     TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX audit_actor ON audit(actor, at);

-- Direct messages for users when no bot token is configured.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    recipient   TEXT NOT NULL,
    mm_user_id  TEXT,
    message     TEXT NOT NULL,
    props       TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    read_at     INTEGER
);
CREATE INDEX outbox_recipient ON outbox(recipient, read_at);
"#,
        ),
        M::up(
            r#"
-- Mattermost allows 5 uses of a response_url within 30 minutes; count them.
CREATE TABLE response_urls (
    url         TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE audit ADD COLUMN role TEXT NOT NULL DEFAULT '';
"#,
        ),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
