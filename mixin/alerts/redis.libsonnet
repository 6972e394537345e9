{
  prometheusAlerts+:: {
    groups+: [
      {
        name: 'bullmq-warden-redis',
        rules: [
          {
            alert: 'BullMQWardenRedisUnreachable',
            expr: 'bullmq_warden_redis_up == 0',
            'for': '2m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'bullmq-warden cannot reach Redis from {{ $labels.instance }}',
              description: 'Sidecar {{ $labels.instance }} has not reached its Redis for 2 minutes. BullMQ producers and workers using the same Redis are probably down too; job schedulers can be neither watched nor restored.',
              runbook_url: $._config.runbookURL('BullMQWardenRedisUnreachable'),
            },
          },
          {
            alert: 'BullMQRedisPersistenceOff',
            expr: 'bullmq_warden_redis_config_readable == 1 and bullmq_warden_redis_aof_enabled == 0 and bullmq_warden_redis_rdb_save_configured == 0',
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} has no persistence',
              description: 'Neither AOF (appendonly no) nor RDB snapshots (save "") are on in the Redis watched by {{ $labels.instance }}: the next restart loses every job scheduler and every job.',
              runbook_url: $._config.runbookURL('BullMQRedisPersistenceOff'),
            },
          },
          {
            alert: 'BullMQRedisAofDisabled',
            expr: 'bullmq_warden_redis_config_readable == 1 and bullmq_warden_redis_aof_enabled == 0 and bullmq_warden_redis_rdb_save_configured == 1',
            'for': '1h',
            labels: { severity: 'info' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} persists by RDB snapshots only',
              description: 'AOF is off in the Redis watched by {{ $labels.instance }}: a restart loses every change since the last RDB snapshot. BullMQ recommends appendonly yes.',
              runbook_url: $._config.runbookURL('BullMQRedisAofDisabled'),
            },
          },
          {
            alert: 'BullMQRedisEvictionPolicyUnsafe',
            expr: 'bullmq_warden_redis_config_readable == 1 and bullmq_warden_redis_maxmemory_policy_noeviction == 0',
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} may evict BullMQ keys',
              description: 'maxmemory-policy is not noeviction in the Redis watched by {{ $labels.instance }}: under memory pressure Redis may delete job schedulers and jobs. BullMQ requires noeviction.',
              runbook_url: $._config.runbookURL('BullMQRedisEvictionPolicyUnsafe'),
            },
          },
          {
            alert: 'BullMQRedisMemoryHigh',
            expr: 'bullmq_warden_redis_used_memory_bytes / (bullmq_warden_redis_maxmemory_bytes > 0) > 0.9',
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} is above 90% of maxmemory',
              description: 'The Redis watched by {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its maxmemory. With noeviction, writes (new jobs, scheduler updates) start failing when it is full; with any other policy, keys are evicted.',
              runbook_url: $._config.runbookURL('BullMQRedisMemoryHigh'),
            },
          },
          {
            alert: 'BullMQRedisConfigUnreadable',
            expr: 'bullmq_warden_redis_config_readable == 0',
            'for': '1h',
            labels: { severity: 'info' },
            annotations: {
              summary: 'bullmq-warden cannot read the Redis configuration on {{ $labels.instance }}',
              description: 'CONFIG GET is refused to sidecar {{ $labels.instance }} (managed Redis or ACL), so persistence and eviction settings are not monitored.',
              runbook_url: $._config.runbookURL('BullMQRedisConfigUnreadable'),
            },
          },
          {
            alert: 'BullMQRedisKeyspaceNotificationsOff',
            expr: 'bullmq_warden_keyspace_notifications_active == 0',
            'for': '30m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden receives no keyspace notifications on {{ $labels.instance }}',
              description: 'Sidecar {{ $labels.instance }} is not subscribed to Redis keyspace notifications; it notices lost job schedulers only on its periodic checks, so recovery starts later.',
              runbook_url: $._config.runbookURL('BullMQRedisKeyspaceNotificationsOff'),
            },
          },
          {
            alert: 'BullMQRedisRestarted',
            expr: 'increase(bullmq_warden_redis_restarts_total[15m]) > 0',
            labels: { severity: 'info' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} restarted',
              description: 'Sidecar {{ $labels.instance }} saw the Redis it watches restart in the last 15 minutes; it checked and, if needed, restored the job schedulers.',
              runbook_url: $._config.runbookURL('BullMQRedisRestarted'),
            },
          },
          {
            alert: 'BullMQRedisFlushed',
            expr: 'increase(bullmq_warden_redis_flushes_total[15m]) > 0',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Job schedulers were wiped without a Redis restart on {{ $labels.instance }}',
              description: 'Sidecar {{ $labels.instance }} saw scheduler sets emptied while Redis kept running (FLUSHALL, FLUSHDB, DEL or eviction) in the last 15 minutes.',
              runbook_url: $._config.runbookURL('BullMQRedisFlushed'),
            },
          },
          {
            alert: 'BullMQRedisFailover',
            expr: 'increase(bullmq_warden_redis_failovers_total[15m]) > 0',
            labels: { severity: 'info' },
            annotations: {
              summary: 'Redis behind {{ $labels.instance }} failed over',
              description: 'Sidecar {{ $labels.instance }} saw a new Redis primary in the last 15 minutes; it checked and, if needed, restored the job schedulers.',
              runbook_url: $._config.runbookURL('BullMQRedisFailover'),
            },
          },
        ],
      },
    ],
  },
}
