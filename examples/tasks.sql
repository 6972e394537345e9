-- Example source: the recovery manual's InspectionTask table with a few schedules.
CREATE TABLE inspection_tasks (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    cron      TEXT,
    every_ms  INTEGER,
    tz        TEXT,
    payload   TEXT,
    opts      TEXT,
    queue     TEXT,
    enabled   BOOLEAN NOT NULL DEFAULT 1
);

INSERT INTO inspection_tasks (id, name, cron, every_ms, tz, payload, opts, queue, enabled) VALUES
    (1, 'disk-usage',     '*/5 * * * *',    NULL,  NULL,            '{"host":"db-1"}',          '{"attempts":3,"backoff":{"type":"exponential","delay":1000}}', NULL,      1),
    (2, 'nightly-report', '0 30 2 * * *',   NULL,  'Europe/Berlin', '{"recipients":["ops"]}',   '{"removeOnComplete":100}',                                     'reports', 1),
    (3, 'heartbeat',      NULL,             15000, NULL,            NULL,                       NULL,                                                           NULL,      1),
    (4, 'weekly-audit',   '0 0 9 * * MON',  NULL,  'UTC',           '{"scope":"all"}',          NULL,                                                           'reports', 1),
    (5, 'retired-check',  '0 * * * *',      NULL,  NULL,            NULL,                       NULL,                                                           NULL,      0);
