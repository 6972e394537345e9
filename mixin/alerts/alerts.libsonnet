// Alert groups, in the order they appear in the rendered rules file.
(import 'schedules.libsonnet') +
(import 'recovery.libsonnet') +
(import 'redis.libsonnet') +
(import 'sidecar.libsonnet')
