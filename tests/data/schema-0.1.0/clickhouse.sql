-- rotator statistics, ClickHouse. Applied by `rotator migrate` and at start ({db} and {table}
-- are replaced with [stats.clickhouse] database and table). Works on 18.16 (Debian) and current
-- releases: no LowCardinality, no DateTime64. On servers that support it (22.2+), migrate adds
-- SETTINGS non_replicated_deduplication_window so that insert_deduplication_token works.
CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.{table} (
    ts          DateTime,
    country     String,
    os          String,
    browser     String,
    device      String,
    campaign_id UInt32,
    requests    UInt64,
    impressions UInt64,
    clicks      UInt64
) ENGINE = SummingMergeTree((requests, impressions, clicks))
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, country, os, browser, device, campaign_id)
