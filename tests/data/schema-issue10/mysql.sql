-- rotator statistics, MySQL 8 / MariaDB 10.x. Applied by `rotator migrate` and at start
-- ({table} is replaced with [stats.mysql] table). A table of release 0.1.0 (no placement,
-- creative_id, viewables) is upgraded by migrate with one ALTER TABLE, its rows kept with
-- placement '' and creative_id 0.
CREATE TABLE IF NOT EXISTS {table} (
    ts          DATETIME         NOT NULL,
    country     VARCHAR(2)       NOT NULL,
    os          VARCHAR(64)      NOT NULL,
    browser     VARCHAR(64)      NOT NULL,
    device      VARCHAR(16)      NOT NULL,
    campaign_id INT UNSIGNED     NOT NULL,
    placement   VARCHAR(64)      NOT NULL DEFAULT '',
    creative_id INT UNSIGNED     NOT NULL DEFAULT 0,
    requests    BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    impressions BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    viewables   BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    clicks      BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    PRIMARY KEY (ts, country, os, browser, device, campaign_id, placement, creative_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Batches already applied: written in the same transaction as the batch's rows.
CREATE TABLE IF NOT EXISTS rotator_batches (
    batch_id   VARCHAR(64) NOT NULL PRIMARY KEY,
    `rows`     INT UNSIGNED NOT NULL,
    applied_at TIMESTAMP   NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE = InnoDB;
