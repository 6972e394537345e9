// Settings of the bullmq-warden mixin. Override any of them when importing:
//
//   (import 'mixin/mixin.libsonnet') + {
//     _config+:: { runbookURLPattern: 'https://wiki.example.com/bullmq/runbook#%s' },
//   }
{
  _config+:: {
    // Selects the sidecars' scrape job. Only queries that reach beyond the
    // sidecar's own metric names need it (`up`); the PodMonitor's job is
    // <namespace>/bullmq-warden, which this matches.
    jobSelector: 'job=~".*bullmq-warden.*"',

    // Where the runbook is published; %s is an alert's name in lower case,
    // which is also its section anchor in docs/runbook.md. Alert annotations
    // and dashboard panel links are built from it, so notifications and
    // panels link to a page that opens outside this repository.
    runbookURLPattern: 'https://github.com/bullmq-warden/bullmq-warden/blob/main/docs/runbook.md#%s',

    // The dashboard's identity in Grafana.
    dashboardUID: 'bullmq-warden',
    dashboardTitle: 'bullmq-warden',
    dashboardTags: ['bullmq', 'redis', 'bullmq-warden'],
    dashboardRefresh: '30s',

    runbookURL(anchor):: std.format(self.runbookURLPattern, std.asciiLower(anchor)),
  },
}
