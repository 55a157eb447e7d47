-- What each enrollment answered (issue 7). A device whose answer was lost
-- (a timeout, a dropped connection) asks again with the same key and the
-- same token; within a short window, and while it has never connected, it
-- gets the same certificate back instead of "id taken". Kept afterwards as
-- the record of how the device came.
CREATE TABLE enrollment_answers (
    device_id          TEXT PRIMARY KEY,
    token_id           TEXT NOT NULL,
    public_key_sha256  TEXT NOT NULL,
    certificate_pem    TEXT NOT NULL,
    enrolled_at        BIGINT NOT NULL
);
