-- Notifications (issue 8): the same table as migrations/sqlite/0012, in
-- PostgreSQL's types. Messages to one console user that persist until read.
CREATE TABLE notifications (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT COLLATE "C" NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    title       TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body        TEXT NOT NULL CHECK (length(body) <= 2000),
    link        TEXT CHECK (link IS NULL OR left(link, 1) = '/'),
    created_at  BIGINT NOT NULL,
    read_at     BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- Who started a claim (its audit actor), to notify when it ends.
ALTER TABLE claims ADD COLUMN requested_by TEXT;
