// The bullmq-warden Grafana dashboard, in plain jsonnet.
//
// Every query is filtered by the `job` and `instance` variables (the target
// labels that tell one sidecar, and so one Redis, from another), queue
// queries by `queue` too; the variables narrow each other in that order.
// Panels that an alert is about link to the alert's runbook section.
local datasource = { type: 'prometheus', uid: '${datasource}' };

// The label matchers of every query; `extra` adds more (e.g. the queue).
local matchers(extra=[]) =
  '{' + std.join(', ', ['job=~"$job"', 'instance=~"$instance"'] + extra) + '}';
local sidecar = matchers();
local queues = matchers(['queue=~"$queue"']);

local target(refId, expr, legend, instant=false) = {
  datasource: datasource,
  refId: refId,
  expr: expr,
  legendFormat: legend,
  range: !instant,
  instant: instant,
  editorMode: 'code',
};

local row(id, title, y) = {
  type: 'row',
  title: title,
  id: id,
  collapsed: false,
  gridPos: { h: 1, w: 24, x: 0, y: y },
  panels: [],
};

local panel(config, type, id, title, description, gridPos, targets, runbook) = {
  type: type,
  title: title,
  description: description,
  id: id,
  datasource: datasource,
  gridPos: gridPos,
  links: [
    {
      title: 'Runbook: ' + anchor,
      url: config.runbookURL(anchor),
      targetBlank: true,
    }
    for anchor in runbook
  ],
  targets: targets,
};

local timeseries(config,
                 id,
                 title,
                 description,
                 gridPos,
                 targets,
                 unit='short',
                 bars=false,
                 stacked=false,
                 runbook=[]) =
  panel(config, 'timeseries', id, title, description, gridPos, targets, runbook) {
    fieldConfig: {
      defaults: {
        unit: unit,
        custom: {
          drawStyle: if bars then 'bars' else 'line',
          lineWidth: 1,
          fillOpacity: if bars then 80 else 10,
          showPoints: 'never',
          spanNulls: false,
          stacking: { mode: if stacked then 'normal' else 'none', group: 'A' },
        },
        min: 0,
      },
      overrides: [],
    },
    options: {
      legend: {
        displayMode: 'table',
        placement: 'bottom',
        showLegend: true,
        calcs: ['lastNotNull', 'max'],
      },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
  };

// Threshold steps from [color, from] pairs; the first starts at -inf.
local steps(pairs) = [
  { color: pair[0], value: if std.length(pair) > 1 then pair[1] else null }
  for pair in pairs
];

// A 0/1 gauge shown as words: off (red) and on (green) unless told otherwise.
local switch(off='off', on='on', offColor='red') = {
  mappings: [{
    type: 'value',
    options: {
      '0': { text: off, color: offColor, index: 0 },
      '1': { text: on, color: 'green', index: 1 },
    },
  }],
  thresholds: steps(if offColor == 'red' then [['red'], ['green', 1]] else [[offColor]]),
  colorMode: 'background',
};

local stat(config,
           id,
           title,
           description,
           gridPos,
           targets,
           unit='none',
           mappings=[],
           thresholds=steps([['green']]),
           colorMode='none',
           textMode='auto',
           noValue=null,
           runbook=[]) =
  panel(config, 'stat', id, title, description, gridPos, targets, runbook) {
    fieldConfig: {
      defaults: {
        unit: unit,
        mappings: mappings,
        thresholds: { mode: 'absolute', steps: thresholds },
        color: { mode: 'thresholds' },
      } + (if noValue == null then {} else { noValue: noValue }),
      overrides: [],
    },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: colorMode,
      graphMode: 'none',
      justifyMode: 'auto',
      orientation: 'auto',
      textMode: textMode,
    },
  };

local switchStat(config, id, title, description, gridPos, expr, sw, runbook=[]) =
  stat(config,
       id,
       title,
       description,
       gridPos,
       [target('A', expr, '{{instance}}', true)],
       mappings=sw.mappings,
       thresholds=sw.thresholds,
       colorMode=sw.colorMode,
       runbook=runbook);

local grid(x, y, w, h) = { h: h, w: w, x: x, y: y };

// A query variable over a label, narrowed by the variables before it.
local variable(name, label, query) = {
  type: 'query',
  name: name,
  label: label,
  datasource: datasource,
  definition: query,
  query: { query: query, refId: 'StandardVariableQuery' },
  refresh: 2,
  sort: 1,
  multi: true,
  includeAll: true,
  allValue: '.*',
  current: { selected: true, text: ['All'], value: ['$__all'] },
  hide: 0,
  regex: '',
  options: [],
};

local panels(c) = [
  row(1, 'Queues', 0),
  timeseries(c, 2, 'Jobs by state', "bullmq_job_count per queue and state (the same series BullMQ's exportPrometheusMetrics exports).", grid(0, 1, 24, 8), [
    target('A', 'max by (queue, state) (bullmq_job_count%s)' % queues, '{{queue}} {{state}}'),
  ]),
  timeseries(c, 3, 'Job schedulers in Redis vs wanted by rows', "Job schedulers in Redis (members of the repeat set) against the enabled valid rows that want one. A drop of 'in Redis' to 0 while 'wanted' stays up is lost schedules.", grid(0, 9, 12, 8), [
    target('A', 'max by (queue) (bullmq_job_schedulers%s)' % queues, '{{queue}} in Redis'),
    target('B', 'max by (queue) (bullmq_warden_desired_schedulers%s)' % queues, '{{queue}} wanted (rows)'),
  ], runbook=['BullMQSchedulesLost']),
  timeseries(c, 4, 'Drift by kind', "missing: rows without a scheduler; mismatched: scheduler differs from its row; orphaned: scheduler with the sidecar's prefix that no row wants; invalid: rows that cannot become a scheduler.", grid(12, 9, 12, 8), [
    target('A', 'max by (queue, kind) (bullmq_warden_drift_schedulers%s)' % queues, '{{queue}} {{kind}}'),
  ], bars=true, stacked=true, runbook=['BullMQSchedulersMissing', 'BullMQSchedulersMismatched', 'BullMQOrphanedSchedulers', 'BullMQInvalidSchedulerRows']),
  stat(c, 5, 'Legacy repeatable jobs', "Repeatable jobs made with BullMQ's older repeat API; bullmq-warden never touches them.", grid(0, 17, 24, 4), [
    target('A', 'max by (queue) (bullmq_warden_legacy_repeatables%s)' % queues, '{{queue}}', true),
  ], colorMode='value'),

  row(6, 'Redis events and detections', 21),
  timeseries(c, 7, 'Redis restarts, flushes, failovers', 'Events the sidecar detected: restarts (new run id), flushes (scheduler sets emptied without a restart), failovers (new primary).', grid(0, 22, 12, 8), [
    target('A', 'sum by (instance) (increase(bullmq_warden_redis_restarts_total%s[$__rate_interval]))' % sidecar, 'restarts {{instance}}'),
    target('B', 'sum by (instance) (increase(bullmq_warden_redis_flushes_total%s[$__rate_interval]))' % sidecar, 'flushes {{instance}}'),
    target('C', 'sum by (instance) (increase(bullmq_warden_redis_failovers_total%s[$__rate_interval]))' % sidecar, 'failovers {{instance}}'),
  ], bars=true, runbook=['BullMQRedisRestarted', 'BullMQRedisFlushed', 'BullMQRedisFailover']),
  timeseries(c, 8, 'Detections by cause', 'Why the sidecar started a check or recovery.', grid(12, 22, 12, 8), [
    target('A', 'sum by (cause) (increase(bullmq_warden_detections_total%s[$__rate_interval]))' % sidecar, '{{cause}}'),
  ], bars=true, stacked=true),
  // The timestamp is 0 until the first restart; `> 0` drops it, so the
  // panel says "never" instead of a date in 1970.
  stat(c, 9, 'Last Redis restart', 'When the watched Redis last started, as the sidecar saw it; "never" before the first restart it saw.', grid(0, 30, 6, 5), [
    target('A', 'max by (instance) (bullmq_warden_redis_last_restart_timestamp_seconds%s > 0) * 1000' % sidecar, '{{instance}}', true),
  ], unit='dateTimeFromNow', noValue='never', runbook=['BullMQRedisRestarted']),
  stat(c, 10, 'Redis loading', '1 while Redis loads its dataset from disk after a start; BullMQ commands fail meanwhile.', grid(6, 30, 6, 5), [
    target('A', 'bullmq_warden_redis_loading%s' % sidecar, '{{instance}}', true),
  ], mappings=[{
    type: 'value',
    options: {
      '0': { text: 'ready', color: 'green', index: 0 },
      '1': { text: 'loading', color: 'red', index: 1 },
    },
  }], thresholds=steps([['green'], ['red', 1]]), colorMode='background'),
  timeseries(c, 11, 'Redis memory', 'used_memory against maxmemory (0 = no limit, not drawn).', grid(12, 30, 12, 5), [
    target('A', 'bullmq_warden_redis_used_memory_bytes%s' % sidecar, 'used {{instance}}'),
    target('B', 'bullmq_warden_redis_maxmemory_bytes%s > 0' % sidecar, 'maxmemory {{instance}}'),
  ], unit='bytes', runbook=['BullMQRedisMemoryHigh']),

  row(12, 'Recovery', 35),
  timeseries(c, 13, 'Recoveries by result and trigger', 'Recovery runs per second, by outcome and by what started them (manual = POST /api/bullmq/recover).', grid(0, 36, 12, 8), [
    target('A', 'sum by (result, trigger) (rate(bullmq_warden_recoveries_total%s[$__rate_interval]))' % queues, '{{result}} {{trigger}}'),
  ], unit='ops', runbook=['BullMQWardenRecoveryErrors']),
  timeseries(c, 14, 'Recovery duration', 'Quantiles of bullmq_warden_recovery_duration_seconds, and the mean.', grid(12, 36, 12, 8), [
    target(q[0], 'histogram_quantile(%s, sum by (le) (rate(bullmq_warden_recovery_duration_seconds_bucket%s[$__rate_interval])))' % [q[1], sidecar], q[2])
    for q in [['A', '0.5', 'p50'], ['B', '0.9', 'p90'], ['C', '0.99', 'p99']]
  ] + [
    target('D', 'sum(rate(bullmq_warden_recovery_duration_seconds_sum%s[$__rate_interval])) / sum(rate(bullmq_warden_recovery_duration_seconds_count%s[$__rate_interval]))' % [sidecar, sidecar], 'mean'),
  ], unit='s'),
  timeseries(c, 15, 'Schedulers restored and catch-up jobs', 'Schedulers created or fixed by recoveries, and jobs added at once for runs missed while the schedulers were gone.', grid(0, 44, 16, 8), [
    target('A', 'sum by (queue) (increase(bullmq_warden_schedulers_restored_total%s[$__rate_interval]))' % queues, 'restored {{queue}}'),
    target('B', 'sum by (queue) (increase(bullmq_warden_catchup_jobs_total%s[$__rate_interval]))' % queues, 'catch-up jobs {{queue}}'),
  ], bars=true),
  // 0 until the first successful recovery: shown as "never", not as 1970.
  stat(c, 16, 'Last successful recovery', 'When a recovery last succeeded on each sidecar; "never" before the first.', grid(16, 44, 8, 8), [
    target('A', '(bullmq_warden_last_recovery_success_timestamp_seconds%s > 0) * 1000' % sidecar, '{{instance}}', true),
  ], unit='dateTimeFromNow', noValue='never', runbook=['BullMQWardenRecoveryFailing']),

  row(17, 'Redis persistence risks', 52),
  switchStat(c,
             18,
             'AOF (appendonly)',
             'appendonly yes keeps every write across restarts. Absent when CONFIG is refused.',
             grid(0, 53, 4, 5),
             'bullmq_warden_redis_aof_enabled%s' % sidecar,
             switch(),
             runbook=['BullMQRedisAofDisabled', 'BullMQRedisPersistenceOff']),
  stat(c, 19, 'appendfsync', 'The current AOF fsync policy: always, everysec (recommended) or no.', grid(4, 53, 4, 5), [
    target('A', 'bullmq_warden_redis_appendfsync%s == 1' % sidecar, '{{policy}}', true),
  ], textMode='name', runbook=['redis-persistence']),
  switchStat(c,
             20,
             'RDB snapshots (save)',
             'Whether a save schedule is configured.',
             grid(8, 53, 4, 5),
             'bullmq_warden_redis_rdb_save_configured%s' % sidecar,
             switch(),
             runbook=['BullMQRedisPersistenceOff']),
  switchStat(c,
             21,
             'Eviction policy',
             'BullMQ requires maxmemory-policy noeviction.',
             grid(12, 53, 4, 5),
             'bullmq_warden_redis_maxmemory_policy_noeviction%s' % sidecar,
             switch('evicts', 'noeviction'),
             runbook=['BullMQRedisEvictionPolicyUnsafe']),
  switchStat(c,
             22,
             'Keyspace notifications',
             'Whether the sidecar is subscribed to keyspace notifications (else it only polls).',
             grid(16, 53, 4, 5),
             'bullmq_warden_keyspace_notifications_active%s' % sidecar,
             switch(),
             runbook=['BullMQRedisKeyspaceNotificationsOff']),
  switchStat(c,
             23,
             'CONFIG readable',
             '0 when CONFIG GET is refused (managed Redis); the persistence panels are then empty.',
             grid(20, 53, 4, 5),
             'bullmq_warden_redis_config_readable%s' % sidecar,
             switch('refused', 'readable'),
             runbook=['BullMQRedisConfigUnreadable']),

  row(24, 'Sidecar health', 58),
  switchStat(c,
             25,
             'Redis reachable',
             'bullmq_warden_redis_up: the sidecar reaches its Redis.',
             grid(0, 59, 3, 5),
             'bullmq_warden_redis_up%s' % sidecar,
             switch('down', 'up'),
             runbook=['BullMQWardenRedisUnreachable']),
  switchStat(c,
             26,
             'Source DB reachable',
             'bullmq_warden_source_up: the sidecar can query the task rows.',
             grid(3, 59, 3, 5),
             'bullmq_warden_source_up%s' % sidecar,
             switch('down', 'up'),
             runbook=['BullMQWardenSourceUnreachable']),
  switchStat(c,
             27,
             'Scraped',
             "Prometheus' own up for the sidecar targets.",
             grid(6, 59, 3, 5),
             'up' + matchers([c.jobSelector]),
             switch('down', 'up'),
             runbook=['BullMQWardenDown']),
  switchStat(c,
             28,
             'Recovery lease',
             'Which sidecar holds the recovery lease (exactly one per Redis should).',
             grid(9, 59, 3, 5),
             'bullmq_warden_lease_held%s' % sidecar,
             switch('standby', 'held', 'blue')),
  switchStat(c,
             29,
             'Automatic recovery',
             'bullmq_warden_auto_recovery_enabled: off means watch and report only.',
             grid(12, 59, 3, 5),
             'bullmq_warden_auto_recovery_enabled%s' % sidecar,
             switch(),
             runbook=['BullMQWardenAutoRecoveryDisabled']),
  stat(c, 30, 'Recovery backoff', 'Delay before the next automatic retry (0 = none pending).', grid(15, 59, 3, 5), [
    target('A', 'bullmq_warden_recovery_backoff_seconds%s' % sidecar, '{{instance}}', true),
  ], unit='s', thresholds=steps([['green'], ['orange', 1]]), colorMode='background', runbook=['BullMQWardenRecoveryFailing']),
  stat(c, 31, 'Consecutive recovery failures', 'Recoveries that failed in a row; 0 after a success. The alert fires at 3.', grid(18, 59, 3, 5), [
    target('A', 'bullmq_warden_recovery_consecutive_failures%s' % sidecar, '{{instance}}', true),
  ], thresholds=steps([['green'], ['orange', 1], ['red', 3]]), colorMode='background', runbook=['BullMQWardenRecoveryFailing']),
  switchStat(c,
             38,
             'Config reload',
             'bullmq_warden_config_last_reload_successful: failed means the changed config file does not load and the previous config stays in force.',
             grid(16, 76, 8, 4),
             'bullmq_warden_config_last_reload_successful%s' % sidecar,
             switch('failed', 'ok'),
             runbook=['BullMQWardenConfigReloadFailed']),
  stat(c, 32, 'Version', 'bullmq_warden_build_info: version and git revision', grid(21, 59, 3, 5), [
    target('A', 'bullmq_warden_build_info%s' % sidecar, '{{instance}} {{version}} ({{revision}})', true),
  ], textMode='name', runbook=['BullMQWardenAbsent']),
  timeseries(c, 33, 'Source query duration', 'Quantiles of the source database query (bullmq_warden_source_query_duration_seconds).', grid(0, 64, 12, 8), [
    target('A', 'histogram_quantile(0.5, sum by (le) (rate(bullmq_warden_source_query_duration_seconds_bucket%s[$__rate_interval])))' % sidecar, 'p50'),
    target('B', 'histogram_quantile(0.99, sum by (le) (rate(bullmq_warden_source_query_duration_seconds_bucket%s[$__rate_interval])))' % sidecar, 'p99'),
  ], unit='s'),
  timeseries(c, 34, 'Sidecar memory', 'process_resident_memory_bytes (what counts against the container limit) and process_virtual_memory_bytes.', grid(12, 64, 12, 8), [
    target('A', 'process_resident_memory_bytes%s' % sidecar, '{{instance}} resident'),
    target('B', 'process_virtual_memory_bytes%s' % sidecar, '{{instance}} virtual'),
  ], unit='bytes'),
  timeseries(c, 35, 'Sidecar CPU', 'CPU seconds per second (rate of process_cpu_seconds_total); 1 is one full core.', grid(0, 72, 8, 8), [
    target('A', 'rate(process_cpu_seconds_total%s[$__rate_interval])' % sidecar, '{{instance}}'),
  ], unit='short'),
  timeseries(c, 36, 'Sidecar file descriptors', 'process_open_fds against the limit process_max_fds.', grid(8, 72, 8, 8), [
    target('A', 'process_open_fds%s' % sidecar, '{{instance}} open'),
    target('B', 'process_max_fds%s' % sidecar, '{{instance}} limit'),
  ]),
  timeseries(c, 42, 'Recovery failures by reason', 'Failed recovery attempts per interval, by reason (bullmq_warden_recovery_failures_total): redis_down, redis, redis_oom, source, timeout, writes_failed, lease_lost, webhook, webhook_incomplete, other.', grid(0, 88, 12, 8), [
    target('A', 'sum by (reason) (increase(bullmq_warden_recovery_failures_total%s[$__rate_interval]))' % sidecar, '{{reason}}'),
  ], unit='short', runbook=['BullMQWardenRecoveryFailing']),
  stat(c, 43, 'Queues withheld', 'Queues left unwritten because their meta hash names a BullMQ major version the warden was not verified against (bullmq_warden_withheld_queues); /readyz and check name them.', grid(12, 88, 12, 8), [
    target('A', 'bullmq_warden_withheld_queues%s' % sidecar, '{{instance}}', true),
  ], thresholds=steps([['green'], ['orange', 1]]), colorMode='background', runbook=['BullMQWardenUnverifiedBullmq']),
  stat(c, 37, 'Sidecar uptime', 'Time since the sidecar process started (process_start_time_seconds); a small value that keeps coming back means it restarts.', grid(16, 72, 8, 4), [
    target('A', 'time() - process_start_time_seconds%s' % sidecar, '{{instance}}', true),
  ], unit='s'),
  timeseries(c, 40, 'Source snapshot age', 'Age of the snapshot of the last rows read (time() - bullmq_warden_source_snapshot_timestamp_seconds): while the source is down, a loss is restored from it if it is younger than [recovery] snapshot_max_age. 0 timestamp: none.', grid(0, 80, 12, 8), [
    target('A', 'time() - (bullmq_warden_source_snapshot_timestamp_seconds%s > 0)' % sidecar, '{{instance}}'),
  ], unit='s', runbook=['BullMQWardenSourceUnreachable']),
  timeseries(c, 41, 'Restores, failed attempts and snapshot file errors', 'Recoveries that wrote, by where their rows came from (bullmq_warden_restores_total: database or snapshot); failed recovery attempts by reason (bullmq_warden_recovery_failures_total; source: the rows could not be read and no snapshot stood in); snapshot files that could not be read or written (bullmq_warden_source_snapshot_errors_total).', grid(12, 80, 12, 8), [
    target('A', 'sum by (source) (increase(bullmq_warden_restores_total%s[$__rate_interval]))' % sidecar, 'restores from {{source}}'),
    target('B', 'sum by (operation) (increase(bullmq_warden_source_snapshot_errors_total%s[$__rate_interval]))' % sidecar, 'snapshot {{operation}} errors'),
    target('C', 'sum by (reason) (increase(bullmq_warden_recovery_failures_total%s[$__rate_interval]))' % sidecar, 'failed attempts: {{reason}}'),
  ], unit='short', runbook=['BullMQWardenSourceUnreachable']),
  timeseries(c, 44, 'Journal changes and errors', 'Journal mode only ([source] url = journal:///…): schedulers the recorder wrote to the journal (bullmq_warden_journal_changes_total: recorded, removed by the application, queues forgotten after obliterate), and failed reads and writes of the journal (bullmq_warden_journal_errors_total). Flat at 0 with a task table.', grid(0, 96, 24, 8), [
    target('A', 'sum by (change) (increase(bullmq_warden_journal_changes_total%s[$__rate_interval]))' % sidecar, '{{change}}'),
    target('B', 'sum by (operation) (increase(bullmq_warden_journal_errors_total%s[$__rate_interval]))' % sidecar, '{{operation}} errors'),
  ], unit='short'),
];

{
  grafanaDashboards+:: {
    'bullmq-warden.json': {
      local c = $._config,
      title: c.dashboardTitle,
      uid: c.dashboardUID,
      description: "BullMQ queues, job schedulers in Redis vs rows, drift, Redis events and persistence, and the bullmq-warden sidecar's recoveries, per scrape job and sidecar. Panel links open the runbook section of the alert a panel is about.",
      tags: c.dashboardTags,
      editable: true,
      graphTooltip: 1,
      schemaVersion: 39,
      version: 1,
      refresh: c.dashboardRefresh,
      time: { from: 'now-6h', to: 'now' },
      timepicker: {},
      timezone: '',
      links: [{
        title: 'Runbook',
        type: 'link',
        url: c.runbookURL('alerts'),
        targetBlank: true,
        icon: 'doc',
      }],
      fiscalYearStartMonth: 0,
      liveNow: false,
      annotations: {
        list: [
          {
            builtIn: 1,
            datasource: { type: 'grafana', uid: '-- Grafana --' },
            enable: true,
            hide: true,
            iconColor: 'rgba(0, 211, 255, 1)',
            name: 'Annotations & Alerts',
            type: 'dashboard',
          },
          {
            datasource: datasource,
            enable: true,
            iconColor: 'red',
            name: 'Redis restarts',
            expr: 'changes(bullmq_warden_redis_restarts_total%s[2m]) > 0' % sidecar,
            step: '1m',
            titleFormat: 'Redis restart',
            textFormat: '{{instance}}',
          },
        ],
      },
      templating: {
        list: [
          {
            type: 'datasource',
            name: 'datasource',
            label: 'Data source',
            query: 'prometheus',
            current: {},
            hide: 0,
            includeAll: false,
            multi: false,
            options: [],
            refresh: 1,
            regex: '',
          },
          variable('job', 'Job', 'label_values(bullmq_warden_build_info, job)'),
          variable('instance', 'Sidecar', 'label_values(bullmq_warden_build_info{job=~"$job"}, instance)'),
          variable('queue', 'Queue', 'label_values(bullmq_job_count%s, queue)' % sidecar),
        ],
      },
      panels: panels(c),
    },
  },
}
