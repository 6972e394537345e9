// Renders the mixin's dashboards, one JSON file each (jsonnet -m DIR).
// `config` overrides _config, e.g. --tla-code config='{runbookURLPattern: "..."}'.
function(config={})
  ((import 'mixin.libsonnet') + { _config+:: config }).grafanaDashboards
