{
  prometheusAlerts+:: {
    groups+: [
      {
        name: 'bullmq-warden-schedules',
        rules: [
          {
            alert: 'BullMQSchedulesLost',
            expr: 'bullmq_warden_desired_schedulers > 0 and bullmq_job_schedulers == 0',
            'for': '2m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Queue {{ $labels.queue }} has no job schedulers in Redis',
              description: 'Rows want {{ $value }} job schedulers in queue {{ $labels.queue }}, but Redis holds none (sidecar {{ $labels.instance }}). No scheduled job of this queue runs. Automatic recovery has not restored them within 2 minutes.',
              runbook_url: $._config.runbookURL('BullMQSchedulesLost'),
            },
          },
          {
            alert: 'BullMQSchedulersMissing',
            expr: 'bullmq_warden_drift_schedulers{kind="missing"} > 0',
            'for': '15m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Queue {{ $labels.queue }} is missing job schedulers',
              description: '{{ $value }} enabled rows of queue {{ $labels.queue }} have had no job scheduler in Redis for 15 minutes (sidecar {{ $labels.instance }}); their jobs do not run.',
              runbook_url: $._config.runbookURL('BullMQSchedulersMissing'),
            },
          },
          {
            alert: 'BullMQSchedulersMismatched',
            expr: 'bullmq_warden_drift_schedulers{kind="mismatched"} > 0',
            'for': '30m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Queue {{ $labels.queue }} has job schedulers that differ from their rows',
              description: '{{ $value }} job schedulers in queue {{ $labels.queue }} have differed from their rows for 30 minutes (pattern, data, options or a missing next job; sidecar {{ $labels.instance }}).',
              runbook_url: $._config.runbookURL('BullMQSchedulersMismatched'),
            },
          },
          {
            alert: 'BullMQInvalidSchedulerRows',
            expr: 'bullmq_warden_drift_schedulers{kind="invalid"} > 0',
            'for': '30m',
            labels: { severity: 'info' },
            annotations: {
              summary: 'Queue {{ $labels.queue }} has rows that cannot become job schedulers',
              description: '{{ $value }} enabled rows for queue {{ $labels.queue }} are invalid (bad cron pattern, time zone, JSON or options) and are skipped by every recovery (sidecar {{ $labels.instance }}).',
              runbook_url: $._config.runbookURL('BullMQInvalidSchedulerRows'),
            },
          },
          {
            alert: 'BullMQOrphanedSchedulers',
            expr: 'bullmq_warden_drift_schedulers{kind="orphaned"} > 0',
            'for': '1h',
            labels: { severity: 'info' },
            annotations: {
              summary: 'Queue {{ $labels.queue }} has job schedulers no row wants',
              description: "{{ $value }} job schedulers in queue {{ $labels.queue }} carry the sidecar's id prefix but match no enabled row; they keep creating jobs (sidecar {{ $labels.instance }}).",
              runbook_url: $._config.runbookURL('BullMQOrphanedSchedulers'),
            },
          },
        ],
      },
    ],
  },
}
