-- rotator statistics, ClickHouse. Applied by `rotator migrate` and at start ({db} and {table}
-- are replaced with [stats.clickhouse] database and table; {dim} with LowCardinality(String) on
-- servers from 20.1 on, String before). Works on 18.16 (Debian) and current releases: no
-- DateTime64. On servers that support it (22.2+), migrate adds SETTINGS
-- non_replicated_deduplication_window so that insert_deduplication_token works.
-- A table of release 0.1.0 (no placement, creative_id, viewables) is upgraded by migrate: this
-- table is created as {table}_upgrade, the old rows copied (placement '', creative_id 0), then
-- the two are swapped with RENAME TABLE (see src/stats/sinks/clickhouse.rs).
CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.{table} (
    ts          DateTime,
    country     {dim},
    os          {dim},
    browser     {dim},
    device      {dim},
    campaign_id UInt32,
    placement   {dim},
    creative_id UInt32,
    requests    UInt64,
    impressions UInt64,
    viewables   UInt64,
    clicks      UInt64
) ENGINE = SummingMergeTree((requests, impressions, viewables, clicks))
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, country, os, browser, device, campaign_id, placement, creative_id)
