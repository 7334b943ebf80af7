{{/*
flowtel's alerting rules: the PrometheusRule spec's `groups:` (templates/prometheusrule.yaml puts
them under `spec:`). Thresholds, windows, `for` and severities come from `.Values.alerts`; an
alert with `enabled: false` is left out, and a group with no alert left is left out too.

Flow alerts group by (flow, deployment, variant): deployment and variant exist when the flowtel
processor sets them (`common_dimensions` / `resource_dimensions`), and `sum by` a label a series
lacks simply groups on the empty value, so the same rules serve a single deployment and an A/B
set-up. They read every series of the metric (flowtel in-process in apps as well as this
collector). Collector alerts are scoped to this release's scrape job and namespace.

tests/test_monitoring_rules.py renders these with `helm template` and runs `promtool check rules`
and `promtool test rules` with helm/flowtel/tests/*.test.yaml; tests/test_prometheus_dashboard.py
evaluates every expression against a real Prometheus scraping a real collector.
*/}}

{{/* " (flow F, deployment D, variant V)": the labels Prometheus fills in when the alert fires; the
deployment and variant parts only when the series has them. */}}
{{- define "flowtel.rules.where" -}}
{{`flow {{ $labels.flow }}{{ with $labels.deployment }}, deployment {{ . }}{{ end }}{{ with $labels.variant }}, variant {{ . }}{{ end }}`}}
{{- end -}}

{{- define "flowtel.rules" -}}
{{- $a := .Values.alerts -}}
{{- $w := $a.rateWindow -}}
{{- $where := include "flowtel.rules.where" . -}}
{{- $by := "flow, deployment, variant" -}}
{{- $flowRules := list -}}

{{- with $a.flowLatencyP95 }}{{ if .enabled }}
{{- $flowRules = append $flowRules (dict
  "alert" "FlowtelFlowLatencyP95High"
  "expr" (printf `histogram_quantile(0.95, sum by (%s, le) (rate(flow_latency_bucket{response_type=~"default|lastbyte"}[%s]))) > %v` $by $w .thresholdMs)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `Flow p95 latency above %v ms: %s` .thresholdMs $where)
    "description" (printf `The 95th percentile of whole-request latency (non-streamed responses, and the last byte of streamed ones) of %s has been {{ $value | humanize }} ms over the last %s, above the %v ms threshold (alerts.flowLatencyP95.thresholdMs).` $where $w .thresholdMs)
    "runbook" `Find the slow part in the dashboard's "Node latency" and "RPC latency by api_call" panels for this flow: a slow model deployment (rpc latency of the LLM call), a retrieval step, or queueing in the app. Exemplars on flow_latency link to the slow traces. Compare variants before rolling one out.`)) }}
{{- end }}{{ end }}

{{- with $a.flowErrorRatio }}{{ if .enabled }}
{{- $flowRules = append $flowRules (dict
  "alert" "FlowtelFlowErrorRatioHigh"
  "expr" (printf `sum by (%s) (rate(flow_request_total{response_code=~"5.."}[%s])) / sum by (%s) (rate(flow_request_total[%s])) > %v` $by $w $by $w .threshold)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `Flow error ratio above %v: %s` .threshold $where)
    "description" (printf `{{ $value | humanizePercentage }} of the requests of %s answered 5xx over the last %s (threshold %v, alerts.flowErrorRatio.threshold).` $where $w .threshold)
    "runbook" `The dashboard's "Flow errors" and "Node failures" panels give the exception type and the node that failed (flow_request_total and node_request_total carry "exception"). An LLM HTTP 429 / 500 shows up as InternalServerError / RateLimitError on the node that called the model; check the model deployment's quota and health.`)) }}
{{- end }}{{ end }}

{{- with $a.nodeFailureRatio }}{{ if .enabled }}
{{- $nodeBy := "flow, node, deployment, variant" }}
{{- $flowRules = append $flowRules (dict
  "alert" "FlowtelNodeFailureRatioHigh"
  "expr" (printf `sum by (%s) (rate(node_request_total{run_status="Failed"}[%s])) / sum by (%s) (rate(node_request_total[%s])) > %v` $nodeBy $w $nodeBy $w .threshold)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `Node failure ratio above %v: node {{ $labels.node }} of %s` .threshold $where)
    "description" (printf `{{ $value | humanizePercentage }} of the runs of node {{ $labels.node }} in %s failed over the last %s (threshold %v, alerts.nodeFailureRatio.threshold).` $where $w .threshold)
    "runbook" `node_request_total{run_status="Failed"} carries the exception type of the failing runs; the failed spans (status ERROR) in your trace backend have the stack trace. A tool or model error that the flow survives still counts here.`)) }}
{{- end }}{{ end }}

{{- with $a.tokenRateSpike }}{{ if .enabled }}
{{- $rate := printf `sum by (%s) (rate(token_consumption_total[%s]))` $by $w }}
{{- $flowRules = append $flowRules (dict
  "alert" "FlowtelTokenRateSpike"
  "expr" (printf `(%s > %v * sum by (%s) (rate(token_consumption_total[%s] offset 1h))) and %s >= %v` $rate .factor $by $w $rate .minTokensPerSecond)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `Token consumption more than %vx its rate an hour ago: %s` .factor $where)
    "description" (printf `%s consumes {{ $value | humanize }} tokens/s (prompt + completion, over the last %s), more than %v times its rate one hour earlier (alerts.tokenRateSpike.factor; alerts fire only from %v tokens/s, alerts.tokenRateSpike.minTokensPerSecond). A flow with no traffic an hour ago does not fire.` $where $w .factor .minTokensPerSecond)
    "runbook" `The dashboard's "Tokens per model" and "Request rate" panels tell more traffic (request rate up too) from costlier requests (tokens per request up: longer prompts, a retrieval returning more context, a new prompt or variant). Check the model budget and rate limits.`)) }}
{{- end }}{{ end }}

{{- with $a.feedbackThumbsDownRatio }}{{ if .enabled }}
{{- $scored := printf `sum by (%s) (rate(feedback_total{score_label=~"thumbup|thumbdown"}[%s]))` $by $w }}
{{- $flowRules = append $flowRules (dict
  "alert" "FlowtelFeedbackThumbsDownRatioHigh"
  "expr" (printf `(sum by (%s) (rate(feedback_total{score_label="thumbdown"}[%s])) / %s > %v) and %s >= %v` $by $w $scored .threshold $scored .minFeedbackPerSecond)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `Thumbs-down ratio above %v: %s` .threshold $where)
    "description" (printf `{{ $value | humanizePercentage }} of the scored user feedback (thumbup + thumbdown) on %s over the last %s was thumbs-down (threshold %v, alerts.feedbackThumbsDownRatio.threshold; counted only from %v scored feedback/s, alerts.feedbackThumbsDownRatio.minFeedbackPerSecond).` $where $w .threshold .minFeedbackPerSecond)
    "runbook" `Feedback spans (promptflow-feedback) are joined to the request they judge: look at the thumbs-down requests' traces for a pattern (a prompt or variant change, a retrieval miss, truncated answers). Compare variants in the dashboard's "Thumbs-down ratio" panel.`)) }}
{{- end }}{{ end }}

{{- $job := include "flowtel.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{/* A ServiceMonitor's targets get job=<Service name>, a PodMonitor's job=<namespace>/<PodMonitor name>. */}}
{{- $target := printf `job=~"%s|%s/%s", namespace="%s"` $job $ns $job $ns -}}
{{- $collectorRules := list -}}

{{- with $a.collectorDropping }}{{ if .enabled }}
{{- $losses := list
  (list "dropped" "flowtel_spans_dropped_total")
  (list "refused" "otelcol_receiver_refused_spans_total")
  (list "send_failed" "otelcol_exporter_send_failed_spans_total")
  (list "enqueue_failed" "otelcol_exporter_enqueue_failed_spans_total") }}
{{- $parts := list }}
{{- range $losses }}
{{- $parts = append $parts (printf `label_replace(increase(%s{%s}[%s]), "loss", "%s", "", "") > 0` (index . 1) $target $w (index . 0)) }}
{{- end }}
{{- $collectorRules = append $collectorRules (dict
  "alert" "FlowtelCollectorDroppingData"
  "expr" (join " or " $parts)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" `flowtel collector {{ $labels.instance }} is losing spans ({{ $labels.loss }})`
    "description" (printf `{{ $value | humanize }} spans were %s over the last %s by flowtel collector {{ $labels.instance }}{{ with $labels.reason }} (reason {{ . }}){{ end }}{{ with $labels.receiver }} at receiver {{ . }}{{ end }}{{ with $labels.exporter }} at exporter {{ . }}{{ end }}. dropped: lost after acceptance (flowtel_spans_dropped_total); refused: the client was told to retry (otelcol_receiver_refused_spans_total); send_failed / enqueue_failed: an exporter gave up or its queue was full.` `{{ $labels.loss }}` $w)
    "runbook" `The collector logs each loss reason once. memory_limit / queue_full: the collector is overloaded, add replicas (the HPA, or the gateway tier for many replicas) or raise resources and max_queue_size. send_failed / enqueue_failed / exporter_queue_full: the backend is down or slow; see the exporter queue panels and the backend's health. A persistent queue (persistence.enabled) keeps batches across restarts.`)) }}
{{- end }}{{ end }}

{{- /* The apps' own metric points and log records (metrics and logs pipelines). An exporter's full queue is
counted in the dropped counters too (reason exporter_queue_full). */}}
{{- with $a.collectorDroppingAppTelemetry }}{{ if .enabled }}
{{- $appLosses := list
  (list "dropped" "flowtel_metric_points_dropped_total" "metric points")
  (list "refused" "otelcol_receiver_refused_metric_points_total" "metric points")
  (list "send_failed" "otelcol_exporter_send_failed_metric_points_total" "metric points")
  (list "dropped" "flowtel_log_records_dropped_total" "log records")
  (list "refused" "otelcol_receiver_refused_log_records_total" "log records")
  (list "send_failed" "otelcol_exporter_send_failed_log_records_total" "log records") }}
{{- $appParts := list }}
{{- range $appLosses }}
{{- $appParts = append $appParts (printf `label_replace(label_replace(increase(%s{%s}[%s]), "loss", "%s", "", ""), "data", "%s", "", "") > 0` (index . 1) $target $w (index . 0) (index . 2)) }}
{{- end }}
{{- $collectorRules = append $collectorRules (dict
  "alert" "FlowtelCollectorDroppingAppTelemetry"
  "expr" (join " or " $appParts)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" `flowtel collector {{ $labels.instance }} is losing the apps' {{ $labels.data }} ({{ $labels.loss }})`
    "description" (printf `{{ $value | humanize }} {{ $labels.data }} were {{ $labels.loss }} over the last %s by flowtel collector {{ $labels.instance }}{{ with $labels.reason }} (reason {{ . }}){{ end }}{{ with $labels.receiver }} at receiver {{ . }}{{ end }}{{ with $labels.exporter }} at exporter {{ . }}{{ end }}. dropped: lost after acceptance (flowtel_metric_points_dropped_total, flowtel_log_records_dropped_total); refused: the client was told to retry; send_failed: an exporter gave up.` $w)
    "runbook" `The collector logs each loss reason once. memory_limit / queue_full: the collector is overloaded, add replicas or raise resources. send_failed / exporter_queue_full: the backend is down or slow; see the exporter queue panels. Prometheus exporter reasons (name_conflict, derived_duplicate, cardinality_limit, out_of_order ...): the app sends metrics the endpoint cannot serve as they are; collector-config/README.md explains each.`)) }}
{{- end }}{{ end }}

{{- with $a.collectorDown }}{{ if .enabled }}
{{- $collectorRules = append $collectorRules (dict
  "alert" "FlowtelCollectorDown"
  "expr" (printf `up{%s} == 0 or absent(up{%s})` $target $target)
  "for" .for
  "labels" (dict "severity" .severity)
  "annotations" (dict
    "summary" (printf `flowtel collector %s is down or not scraped` $job)
    "description" (printf `Prometheus has not scraped flowtel collector %s in namespace %s{{ with $labels.instance }} (instance {{ . }}){{ end }} for %s: the pod is down, not ready, or no ServiceMonitor / PodMonitor selects it. While it is down apps cannot export spans and no flowtel metric is current.` $job $ns .for)
    "runbook" (printf `kubectl -n %s get pods -l app.kubernetes.io/instance=%s; kubectl -n %s logs <pod> (the start-up log lists every listener); check that serviceMonitor.enabled or podMonitor.enabled is set and that Prometheus selects its labels.` $ns $.Release.Name $ns))) }}
{{- end }}{{ end }}

{{- $groups := list -}}
{{- if $flowRules }}{{ $groups = append $groups (dict "name" "flowtel.flows" "rules" $flowRules) }}{{ end -}}
{{- if $collectorRules }}{{ $groups = append $groups (dict "name" "flowtel.collector" "rules" $collectorRules) }}{{ end -}}
{{- dict "groups" $groups | toYaml }}
{{- end -}}
