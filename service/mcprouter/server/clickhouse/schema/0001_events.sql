-- Raw events, one row per accepted event.
--
-- Sorting key (experiment_id, toStartOfHour(timestamp), variant, event_type, event_id):
--   * hourly metrics filter on experiment, hour, variant and event type: a
--     prefix of the key, so they read one narrow granule range;
--   * daily analytics filter on experiment and a 24-hour range: a contiguous
--     range of the key (hours come right after the experiment);
--   * event_id ends the key and everything before it is a function of the
--     event itself, so two copies of one event have equal keys and
--     ReplacingMergeTree collapses them: the second line of defence behind
--     the Redis SET NX dedup (a retry after an insert that timed out but
--     landed, or a repeat after the Redis marker expired).
-- Partitions are months: old data can be dropped a partition at a time, and
-- a partition is a function of the timestamp, so copies of one event always
-- meet in the same partition (ReplacingMergeTree only dedups within one).
-- The version column keeps the latest copy; copies are identical anyway.
CREATE TABLE IF NOT EXISTS events
(
    event_id      String,
    experiment_id LowCardinality(String),
    variant       LowCardinality(String),
    user_id       String,
    event_type    LowCardinality(String),
    value         Float64,
    timestamp     DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, toStartOfHour(timestamp), variant, event_type, event_id)
