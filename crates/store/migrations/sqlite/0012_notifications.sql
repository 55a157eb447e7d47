-- Notifications (issue 8): messages to one console user that persist until
-- read: a claim that bound its device or failed finally, and later alerts
-- and rollouts. `kind` is a stable dotted code (`claim.bound`), `link` a
-- console path. Written in the transaction of the event they report.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    title       TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body        TEXT NOT NULL CHECK (length(body) <= 2000),
    link        TEXT CHECK (link IS NULL OR substr(link, 1, 1) = '/'),
    created_at  INTEGER NOT NULL,
    read_at     INTEGER
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- Who started a claim (its audit actor), to notify when it ends: the owner
-- may be a group, the starter is a person.
ALTER TABLE claims ADD COLUMN requested_by TEXT;
