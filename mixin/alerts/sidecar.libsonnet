{
  prometheusAlerts+:: {
    groups+: [
      {
        name: 'bullmq-warden-sidecar',
        rules: [
          {
            alert: 'BullMQWardenSourceUnreachable',
            expr: 'bullmq_warden_source_up == 0',
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden cannot query its source database from {{ $labels.instance }}',
              description: 'Sidecar {{ $labels.instance }} has not been able to read the task rows for 5 minutes. Schedulers already in Redis keep running, but lost ones cannot be restored.',
              runbook_url: $._config.runbookURL('BullMQWardenSourceUnreachable'),
            },
          },
          {
            alert: 'BullMQWardenConfigReloadFailed',
            expr: 'bullmq_warden_config_last_reload_successful == 0',
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden on {{ $labels.instance }} cannot load its changed config file',
              description: 'Sidecar {{ $labels.instance }} has failed for 5 minutes to reload its changed config file and keeps running with its previous config. Its next restart will fail until the file is fixed.',
              runbook_url: $._config.runbookURL('BullMQWardenConfigReloadFailed'),
            },
          },
          {
            alert: 'BullMQWardenDown',
            expr: 'up{%s} == 0' % $._config.jobSelector,
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden sidecar {{ $labels.instance }} is down',
              description: 'Prometheus has failed to scrape {{ $labels.instance }} (job {{ $labels.job }}) for 5 minutes. Its Redis is neither watched nor recovered, and the queue alerts for it cannot fire.',
              runbook_url: $._config.runbookURL('BullMQWardenDown'),
            },
          },
          {
            alert: 'BullMQWardenAbsent',
            expr: 'absent_over_time(bullmq_warden_build_info[10m])',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'No bullmq-warden sidecar has reported for 10 minutes',
              description: 'Prometheus has no bullmq_warden_build_info series at all: no sidecar is running or being scraped, so lost job schedulers would go unnoticed.',
              runbook_url: $._config.runbookURL('BullMQWardenAbsent'),
            },
          },
        ],
      },
    ],
  },
}
