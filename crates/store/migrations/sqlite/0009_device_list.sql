-- The console's device list (issue 8): sorting by last contact or by
-- registration time, and the "online now" filter, use these instead of
-- sorting the whole table. `id` is the tie-breaker of every sort, so it is
-- part of each index. Certificate expiry is served by
-- `certificates_not_after` (0001). Only columns of 0001 are used: this
-- migration must not depend on 0007 or 0008.
CREATE INDEX devices_last_seen ON devices (last_seen, id);
CREATE INDEX devices_created ON devices (created_at, id);
CREATE INDEX devices_online ON devices (online, id);
