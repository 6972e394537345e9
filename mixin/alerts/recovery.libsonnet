{
  prometheusAlerts+:: {
    groups+: [
      {
        name: 'bullmq-warden-recovery',
        rules: [
          {
            alert: 'BullMQWardenRecoveryFailing',
            expr: 'bullmq_warden_recovery_consecutive_failures >= 3',
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden recovery keeps failing on {{ $labels.instance }}',
              description: 'The last {{ $value }} automatic recoveries on sidecar {{ $labels.instance }} failed in a row; the sidecar retries with exponential backoff (see bullmq_warden_recovery_backoff_seconds).',
              runbook_url: $._config.runbookURL('BullMQWardenRecoveryFailing'),
            },
          },
          {
            alert: 'BullMQWardenRecoveryErrors',
            expr: 'sum without (trigger, result) (increase(bullmq_warden_recoveries_total{result="failure"}[1h])) > 0',
            labels: { severity: 'info' },
            annotations: {
              summary: 'bullmq-warden recoveries of queue {{ $labels.queue }} failed in the last hour',
              description: 'About {{ $value | printf "%.0f" }} recoveries of queue {{ $labels.queue }} failed in the last hour on sidecar {{ $labels.instance }}.',
              runbook_url: $._config.runbookURL('BullMQWardenRecoveryErrors'),
            },
          },
          {
            alert: 'BullMQWardenAutoRecoveryDisabled',
            expr: 'bullmq_warden_auto_recovery_enabled == 0',
            'for': '1h',
            labels: { severity: 'info' },
            annotations: {
              summary: 'bullmq-warden automatic recovery is off on {{ $labels.instance }}',
              description: 'Sidecar {{ $labels.instance }} only watches and reports: lost job schedulers are not restored until someone runs bullmq-warden recover.',
              runbook_url: $._config.runbookURL('BullMQWardenAutoRecoveryDisabled'),
            },
          },
          {
            alert: 'BullMQWardenUnverifiedBullmq',
            expr: 'bullmq_warden_withheld_queues > 0',
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'bullmq-warden leaves {{ $value }} queues alone on {{ $labels.instance }}: set up by an unverified BullMQ',
              description: 'Sidecar {{ $labels.instance }} writes nothing to {{ $value }} queues whose meta hash names a BullMQ major version bullmq-warden was not verified against, so their lost schedulers are not restored; /readyz and bullmq-warden check name them.',
              runbook_url: $._config.runbookURL('BullMQWardenUnverifiedBullmq'),
            },
          },
        ],
      },
    ],
  },
}
