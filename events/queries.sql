-- The log is always named with its schema: the read-model schema comes first on the search path and
-- belongs to labctl_app, which must not be able to shadow the log or its append function there.

-- name: append
SELECT out_first_position, out_versions, out_recorded_at, out_replayed_positions
FROM labctl.labctl_append(%(streams)b, %(expected)b, %(types)b, %(data)b, %(meta)b, %(key)s);

-- name: read_all
SELECT position, stream, version, type, data::text, meta::text, recorded_at
FROM labctl.events
WHERE position > %(after)s
ORDER BY position
LIMIT %(limit)s;

-- name: read_all_filtered
SELECT position, stream, version, type, data::text, meta::text, recorded_at
FROM labctl.events
WHERE position > %(after)s
  AND (%(stream)s::text IS NULL OR stream = %(stream)s)
  AND (%(types)s::text[] IS NULL OR type = ANY (%(types)s))
  AND (%(until)s::bigint IS NULL OR position <= %(until)s)
ORDER BY position
LIMIT %(limit)s;

-- name: read_stream
SELECT position, stream, version, type, data::text, meta::text, recorded_at
FROM labctl.events
WHERE stream = %(stream)s AND version > %(after_version)s
ORDER BY version;

-- name: read_streams
SELECT position, stream, version, type, data::text, meta::text, recorded_at
FROM labctl.events
WHERE stream = ANY (%(streams)s)
ORDER BY stream, version;

-- name: streams_like
SELECT DISTINCT stream FROM labctl.events WHERE stream LIKE %(pattern)s ORDER BY stream LIMIT 20;

-- name: stream_version
SELECT coalesce(max(version), 0) FROM labctl.events WHERE stream = %(stream)s;

-- name: last_position
SELECT coalesce(max(position), 0) FROM labctl.events;

-- name: position_at
SELECT coalesce(max(position), 0) FROM labctl.events WHERE recorded_at <= %(at)s;

-- name: event_count
SELECT count(*) FROM labctl.events;
