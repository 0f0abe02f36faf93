-- rotator statistics, SQLite (the default sink). Applied by `rotator migrate` and at start.
-- One row per (minute, country, os, browser, device, campaign, placement, creative); writes add
-- to the counts. A table of release 0.1.0 (no placement, creative_id, viewables) is rebuilt into
-- this one by migrate, in one transaction, its rows kept with placement '' and creative_id 0.
CREATE TABLE IF NOT EXISTS stats (
    ts          INTEGER NOT NULL,           -- start of the minute, Unix seconds, UTC
    country     TEXT    NOT NULL,           -- ISO 3166-1 alpha-2, '' when unknown
    os          TEXT    NOT NULL,
    browser     TEXT    NOT NULL,
    device      TEXT    NOT NULL,           -- desktop | mobile | tablet | tv | bot | other
    campaign_id INTEGER NOT NULL,           -- 0 when no campaign won
    placement   TEXT    NOT NULL DEFAULT '', -- placement id, '' for GET /ad
    creative_id INTEGER NOT NULL DEFAULT 0, -- 0 for none and for GET /ad
    requests    INTEGER NOT NULL DEFAULT 0,
    impressions INTEGER NOT NULL DEFAULT 0,
    viewables   INTEGER NOT NULL DEFAULT 0,
    clicks      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ts, country, os, browser, device, campaign_id, placement, creative_id)
) WITHOUT ROWID;

-- Batches already applied: a batch is written in one transaction with its id, so a retry or a
-- spool replay of the same batch changes nothing.
CREATE TABLE IF NOT EXISTS rotator_batches (
    batch_id   TEXT    NOT NULL PRIMARY KEY,
    rows       INTEGER NOT NULL,
    applied_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
);
