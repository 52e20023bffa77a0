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
        M::up(
            r#"
-- Containers: ownership lives here (and in labels), never in parsed names.
CREATE TABLE containers (
    id           INTEGER PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT NOT NULL,
    blade        TEXT NOT NULL,
    podman_name  TEXT NOT NULL,
    podman_id    TEXT,
    image        TEXT NOT NULL,
    command      TEXT NOT NULL DEFAULT '[]',
    env          TEXT NOT NULL DEFAULT '{}',
    cpus_milli   INTEGER NOT NULL,
    memory       INTEGER NOT NULL,
    gpus         INTEGER NOT NULL DEFAULT 0,
    private      INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL CHECK (state IN ('pending','waiting','running','stopping','exited','removing')),
    exit_code    INTEGER,
    oom          INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    expires_at   INTEGER,
    UNIQUE (owner, name),
    UNIQUE (blade, podman_name)
);
CREATE INDEX containers_state ON containers(blade, state);

-- A host port belongs to at most one container; `bad` marks ports Podman could not bind.
CREATE TABLE port_leases (
    blade          TEXT NOT NULL,
    port           INTEGER NOT NULL,
    container_id   INTEGER REFERENCES containers(id) ON DELETE CASCADE,
    container_port INTEGER,
    proto          TEXT NOT NULL DEFAULT 'tcp',
    bad            INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (blade, port)
);
CREATE INDEX port_leases_container ON port_leases(container_id);

-- The local allocator's ledger (blades that are not Slurm nodes).
CREATE TABLE gpu_leases (
    blade        TEXT NOT NULL,
    gpu          TEXT NOT NULL,
    container_id INTEGER NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    PRIMARY KEY (blade, gpu, container_id)
);
"#,
        ),
        M::up(
            r#"
-- Blades an admin has drained: no new placement.
CREATE TABLE blade_drains (
    blade  TEXT PRIMARY KEY,
    actor  TEXT NOT NULL,
    at     INTEGER NOT NULL
);

-- `run --ip` leases, same rules as ports.
CREATE TABLE ip_leases (
    blade        TEXT NOT NULL,
    ip           TEXT NOT NULL,
    container_id INTEGER NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    PRIMARY KEY (blade, ip)
);
CREATE INDEX ip_leases_container ON ip_leases(container_id);
"#,
        ),
        M::up(
            r#"
-- The registry's tags as shisa knows them (notifications, repaired by sync).
CREATE TABLE images (
    repository  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    owner       TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        INTEGER NOT NULL DEFAULT 0,
    pushed_at   INTEGER NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX images_owner ON images(owner);

-- Sharing is per repository: with a user, a group, or `all`.
CREATE TABLE shares (
    repository  TEXT NOT NULL,
    owner       TEXT NOT NULL,
    grantee     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, grantee)
);
CREATE TABLE image_descriptions (
    repository  TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

-- Personal registry tokens: only a hash is kept.
CREATE TABLE registry_tokens (
    id          INTEGER PRIMARY KEY,
    owner       TEXT NOT NULL,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    last_used   INTEGER,
    revoked_at  INTEGER
);

-- Notification event ids already applied (replays are ignored).
CREATE TABLE registry_events (
    id     TEXT PRIMARY KEY,
    at     INTEGER NOT NULL
);
"#,
        ),
        M::up(
            r#"
-- Small service secrets generated on first use (the SIF link signing key).
CREATE TABLE kv (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- The SIF store: files by content, when last used, and who must not lose them.
CREATE TABLE sif_files (
    file       TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    last_used  INTEGER NOT NULL
);
CREATE TABLE sif_pins (
    file    TEXT NOT NULL,
    holder  TEXT NOT NULL,
    PRIMARY KEY (file, holder)
);
"#,
        ),
        M::up(
            r#"
-- GitLab deliveries seen, by Idempotency-Key / webhook-id (or X-Gitlab-Event-UUID): processed once.
CREATE TABLE gitlab_deliveries (
    key       TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    received  INTEGER NOT NULL
);
-- Projects whose pushes shisa builds, and who enabled them.
CREATE TABLE gitlab_projects (
    project_id  INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    hook_id     INTEGER,
    gitlab_user TEXT NOT NULL,            -- the enabler's GitLab username: builds fetch as them (Sudo)
    mode        TEXT NOT NULL DEFAULT 'direct',   -- direct (shisa builds) or runner (the project's CI)
    runner_id   INTEGER,
    runner_token BLOB,                    -- sealed (ChaCha20-Poly1305, key file outside the database)
    broken      TEXT,                     -- why the runner cannot work, when it cannot
    enabled_at  INTEGER NOT NULL
);
-- Projects that pushed while not enabled and whose pusher was told how to enable them.
CREATE TABLE gitlab_notices (
    project_id  INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL
);
CREATE TABLE builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL,
    path        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    sha         TEXT NOT NULL,
    git_ref     TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    state       TEXT NOT NULL,        -- queued, running, succeeded, failed, superseded
    image       TEXT,
    digest      TEXT,
    size        INTEGER,
    blade       TEXT,
    detail      TEXT,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER
);
CREATE INDEX builds_by_project ON builds(project_id, id);
"#,
        ),
        M::up(
            r#"
-- Slurm jobs submitted through shisa; the public id is Slurm's.
CREATE TABLE jobs (
    slurm_id     INTEGER PRIMARY KEY,
    owner        TEXT NOT NULL,
    name         TEXT NOT NULL,
    image        TEXT NOT NULL,
    sif          TEXT NOT NULL,      -- the content file it pins
    dir          TEXT NOT NULL,      -- the job directory in the owner's home
    gpus         TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    exit_code    INTEGER,
    submitted_at INTEGER NOT NULL,
    start_time   INTEGER NOT NULL DEFAULT 0,
    end_time     INTEGER NOT NULL DEFAULT 0,
    node         TEXT NOT NULL DEFAULT '',
    done         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_owner ON jobs(owner, slurm_id);
-- GPU containers on Slurm nodes: the holder allocation that owns their GPUs.
CREATE TABLE gpu_holders (
    container_id INTEGER PRIMARY KEY,
    slurm_id     INTEGER NOT NULL,
    blade        TEXT NOT NULL
);
"#,
        ),
        // Typed tasks: the shape of each queued payload. Every row before this one has
        // version 1's shape (`work::tasks`), so no payload is rewritten.
        M::up("ALTER TABLE queue ADD COLUMN version INTEGER NOT NULL DEFAULT 1;"),
        // Why each reader of a SIF content file may read it: the image's repository it came
        // through ('' for images outside the registry). Unsharing drops the claims, and the
        // file's ACL is rewritten from those left.
        M::up(
            r#"
CREATE TABLE sif_readers (
    file    TEXT NOT NULL,
    reader  TEXT NOT NULL,
    uid     INTEGER NOT NULL,
    repo    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (file, reader, repo)
);
CREATE INDEX sif_readers_by_repo ON sif_readers(repo, reader);
"#,
        ),
        // Personal registry tokens expire; those made before expiry existed get 90 days.
        M::up(
            r#"
ALTER TABLE registry_tokens ADD COLUMN expires_at INTEGER;
UPDATE registry_tokens SET expires_at = created_at + 7776000;
"#,
        ),
        // Each project's own webhook secret (sealed under state.key); none: enabled before
        // this, its hook carries the global token.
        M::up("ALTER TABLE gitlab_projects ADD COLUMN hook_secret TEXT;"),
        // Layers uploaded (the registry's blob notifications) that no recorded image holds
        // yet: they count against their owner's quota until an image claims them or shisa
        // deletes them after the grace.
        M::up(
            r#"
CREATE TABLE registry_uploads (
    repository  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    size        INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX registry_uploads_by_owner ON registry_uploads(owner, digest);
"#,
        ),
        // Courses: each applied version of a course project (the file as applied and the
        // image by digest), the one plan comment per merge request, each blade's readiness,
        // the readiness notices sent, and which containers are a course's seats.
        M::up(
            r#"
CREATE TABLE course_versions (
    project_id  INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    course      TEXT NOT NULL,
    sha         TEXT NOT NULL,
    file        TEXT NOT NULL,
    image       TEXT NOT NULL,
    digest      TEXT NOT NULL,
    mr_iid      INTEGER,
    applied_by  TEXT NOT NULL,
    applied_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, version)
);
CREATE INDEX course_versions_by_course ON course_versions(course, version);
CREATE TABLE course_plans (
    project_id  INTEGER NOT NULL,
    mr_iid      INTEGER NOT NULL,
    note_id     INTEGER,
    sha         TEXT NOT NULL DEFAULT '',
    image       TEXT,
    digest      TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, mr_iid)
);
CREATE TABLE course_blades (
    course      TEXT NOT NULL,
    blade       TEXT NOT NULL,
    digest      TEXT NOT NULL,
    ready_at    INTEGER NOT NULL,
    PRIMARY KEY (course, blade)
);
CREATE TABLE course_notices (
    course      TEXT NOT NULL,
    lecture     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (course, lecture, kind)
);
CREATE TABLE course_builds (
    course      TEXT NOT NULL,
    source      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (course, source)
);
ALTER TABLE containers ADD COLUMN course TEXT;
"#,
        ),
        // Reclaim and fair queues: each task's lane and each owner's last turn in a lane
        // (round robin); when a container stopped, was last seen busy (and its CPU counter
        // then), how long its owner asked to keep it, the last warning sent; whether it
        // wants a pool address (released while stopped); since when a run waits for room;
        // and when each image was last run on each blade (for pruning).
        M::up(
            r#"
ALTER TABLE queue ADD COLUMN lane TEXT NOT NULL DEFAULT 'quick';
UPDATE queue SET lane = CASE
    WHEN kind IN ('container.sif', 'gitlab.event', 'build.run') THEN 'slow'
    WHEN kind = 'job.submit' THEN 'slurm'
    ELSE 'quick' END;
CREATE INDEX queue_lane_ready ON queue(state, lane, run_after);
CREATE TABLE queue_turns (
    lane   TEXT NOT NULL,
    owner  TEXT NOT NULL,
    turn   INTEGER NOT NULL,
    PRIMARY KEY (lane, owner)
);
ALTER TABLE containers ADD COLUMN stopped_at INTEGER;
UPDATE containers SET stopped_at = strftime('%s', 'now') WHERE state = 'exited';
ALTER TABLE containers ADD COLUMN active_at INTEGER;
ALTER TABLE containers ADD COLUMN cpu_seen INTEGER;
ALTER TABLE containers ADD COLUMN sampled_at INTEGER;
ALTER TABLE containers ADD COLUMN keep_until INTEGER;
ALTER TABLE containers ADD COLUMN warned TEXT;
ALTER TABLE containers ADD COLUMN wants_ip INTEGER NOT NULL DEFAULT 0;
UPDATE containers SET wants_ip = 1 WHERE id IN (SELECT container_id FROM ip_leases);
ALTER TABLE containers ADD COLUMN waiting_since INTEGER;
UPDATE containers SET waiting_since = created_at WHERE state = 'waiting';
CREATE TABLE blade_images (
    blade    TEXT NOT NULL,
    image    TEXT NOT NULL,
    used_at  INTEGER NOT NULL,
    PRIMARY KEY (blade, image)
);
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
