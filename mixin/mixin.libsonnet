// The bullmq-warden monitoring mixin: Prometheus alerts (prometheusAlerts)
// and a Grafana dashboard (grafanaDashboards), configured by _config
// (config.libsonnet). scripts/render-mixin renders them into alerts/,
// dashboards/ and the Kubernetes PrometheusRule.
(import 'config.libsonnet') +
(import 'alerts/alerts.libsonnet') +
(import 'dashboards/dashboards.libsonnet')
