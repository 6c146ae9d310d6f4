-- The events table on a ClickHouse cluster (CLICKHOUSE_URL pointing at any
-- node; set MIGRATE_ON_START=false and apply this once instead of
-- service/mcprouter/server/clickhouse/schema/0001_events.sql).
--
-- events_local holds each shard's rows, replicated within the shard; events
-- is what the service writes to and reads from. Rows are sharded by
-- experiment: every copy of one event has the same experiment_id, so copies
-- meet on one shard and ReplacingMergeTree (with FINAL at read time, as the
-- service queries) still counts an event once; and an hour's metrics or a
-- day's analytics, always of one experiment, are read from one shard
-- (optimize_skip_unused_shards). A very hot experiment lands on one shard:
-- shard by cityHash64(event_id) instead if that matters more than read fan-out.
--
-- Replace the cluster name `mcprouter` and the database `default` with yours.

CREATE TABLE IF NOT EXISTS default.events_local ON CLUSTER mcprouter
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/default/events_local', '{replica}', inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (experiment_id, toStartOfHour(timestamp), variant, event_type, event_id);

CREATE TABLE IF NOT EXISTS default.events ON CLUSTER mcprouter
AS default.events_local
ENGINE = Distributed(mcprouter, default, events_local, cityHash64(experiment_id))
SETTINGS fsync_after_insert = 1;
