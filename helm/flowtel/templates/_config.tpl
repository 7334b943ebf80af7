{{/*
The flowtel collector config: `.Values.config` with the toggles applied, as YAML. Built as a dict and
rendered with toYaml, so a value can never break the YAML around it. The ConfigMap holds it and its
checksum rolls the pods. Toggles add to the pipeline named `traces`, which the config must have, and
(forward, appInsights) to the pipelines named `metrics` and `logs` when the config has them.
*/}}
{{- define "flowtel.config" -}}
{{- $v := .Values -}}
{{- $cfg := deepCopy $v.config -}}
{{- $receivers := get $cfg "receivers" | default dict -}}
{{- $exporters := get $cfg "exporters" | default dict -}}
{{- $extensions := get $cfg "extensions" | default dict -}}
{{- $service := get $cfg "service" | default dict -}}
{{- $serviceExtensions := get $service "extensions" | default list -}}
{{- $pipelines := get $service "pipelines" | default dict -}}
{{- $traces := get $pipelines "traces" -}}
{{- if not $traces -}}
{{- fail "config.service.pipelines.traces is required: the chart's toggles add exporters to it" -}}
{{- end -}}
{{- $tracesExporters := get $traces "exporters" | default list -}}
{{- /* the apps' own metrics and logs pipelines, when the config has them */ -}}
{{- $signalPipelines := list -}}
{{- range $name := list "metrics" "logs" -}}
{{- if hasKey $pipelines $name -}}
{{- $signalPipelines = append $signalPipelines (get $pipelines $name) -}}
{{- end -}}
{{- end -}}
{{- $feedback := hasKey $receivers "feedback" -}}

{{- /* persistence: one directory on the pod's volume for every exporter that keeps data on disk. */ -}}
{{- if $v.persistence.enabled -}}
{{- $_ := set $extensions "file_storage" (dict "directory" (printf "%s/storage" $v.persistence.mountPath) "create_directory" true) -}}
{{- $serviceExtensions = append $serviceExtensions "file_storage" -}}
{{- end -}}

{{- /* auth: bearer tokens from the Secret, through the environment (templates/workload.yaml sets it). */ -}}
{{- if $v.auth.enabled -}}
{{- $_ := set $extensions "bearertokenauth/otlp" (dict "token" "${env:FLOWTEL_OTLP_TOKEN}") -}}
{{- $serviceExtensions = append $serviceExtensions "bearertokenauth/otlp" -}}
{{- $otlp := get $receivers "otlp" | default dict -}}
{{- $protocols := get $otlp "protocols" | default dict -}}
{{- range $proto := list "grpc" "http" -}}
{{- if hasKey $protocols $proto -}}
{{- $server := get $protocols $proto | default dict -}}
{{- $_ := set $server "auth" (dict "authenticator" "bearertokenauth/otlp") -}}
{{- $_ := set $protocols $proto $server -}}
{{- end -}}
{{- end -}}
{{- if $feedback -}}
{{- $_ := set $extensions "bearertokenauth/feedback" (dict "token" "${env:FLOWTEL_FEEDBACK_TOKEN}") -}}
{{- $serviceExtensions = append $serviceExtensions "bearertokenauth/feedback" -}}
{{- $fb := get $receivers "feedback" | default dict -}}
{{- $_ := set $fb "auth" (dict "authenticator" "bearertokenauth/feedback") -}}
{{- $_ := set $receivers "feedback" $fb -}}
{{- end -}}
{{- end -}}

{{- /* forward: enriched spans to another OTLP/gRPC backend; queued on disk with persistence. */ -}}
{{- if $v.forward.enabled -}}
{{- if not $v.forward.endpoint -}}
{{- fail "forward.endpoint (host:port of the OTLP/gRPC backend) is required with forward.enabled" -}}
{{- end -}}
{{- $fwd := merge (dict "endpoint" $v.forward.endpoint "tls" (deepCopy $v.forward.tls)) (deepCopy $v.forward.settings) -}}
{{- if $v.forward.headers -}}
{{- $_ := set $fwd "headers" (deepCopy $v.forward.headers) -}}
{{- end -}}
{{- if $v.persistence.enabled -}}
{{- $queue := get $fwd "sending_queue" | default dict -}}
{{- $_ := set $queue "storage" "file_storage" -}}
{{- $_ := set $fwd "sending_queue" $queue -}}
{{- end -}}
{{- $_ := set $exporters "otlp/forward" $fwd -}}
{{- $tracesExporters = append $tracesExporters "otlp/forward" -}}
{{- range $p := $signalPipelines -}}
{{- $_ := set $p "exporters" (append (get $p "exporters" | default list) "otlp/forward") -}}
{{- end -}}
{{- end -}}

{{- /* appInsights: the connection string is the Secret's, read through the environment. */ -}}
{{- if $v.appInsights.enabled -}}
{{- $ai := merge (dict "connection_string" "${env:APPLICATIONINSIGHTS_CONNECTION_STRING}") (deepCopy $v.appInsights.settings) -}}
{{- if $v.persistence.enabled -}}
{{- $_ := set $ai "storage" "file_storage" -}}
{{- end -}}
{{- $_ := set $exporters "azuremonitor" $ai -}}
{{- $tracesExporters = append $tracesExporters "azuremonitor" -}}
{{- range $p := $signalPipelines -}}
{{- $_ := set $p "exporters" (append (get $p "exporters" | default list) "azuremonitor") -}}
{{- end -}}
{{- end -}}

{{- /* gateway: a feedback request lands on any pod, but its trace is held by the pod the gateway routes
that trace id to. So feedback spans go back through the gateway (its own pipeline, no processing
here) and reach the right pod's otlp receiver; the main pipeline takes OTLP only. */ -}}
{{- if and $v.gateway.enabled $feedback -}}
{{- $gw := dict "endpoint" (printf "%s:%d" (include "flowtel.gatewayHost" .) (int $v.ports.otlpGrpc)) "tls" (deepCopy $v.gateway.feedbackTls) -}}
{{- if $v.auth.enabled -}}
{{- $_ := set $gw "headers" (dict "authorization" "Bearer ${env:FLOWTEL_OTLP_TOKEN}") -}}
{{- end -}}
{{- $_ := set $exporters "otlp/gateway" $gw -}}
{{- $_ := set $traces "receivers" (without (get $traces "receivers") "feedback") -}}
{{- $_ := set $pipelines "traces/feedback" (dict "receivers" (list "feedback") "exporters" (list "otlp/gateway")) -}}
{{- end -}}

{{- $_ := set $traces "exporters" $tracesExporters -}}
{{- if $serviceExtensions -}}
{{- $_ := set $service "extensions" $serviceExtensions -}}
{{- end -}}
{{- range $section, $value := dict "receivers" $receivers "exporters" $exporters "extensions" $extensions -}}
{{- if $value -}}
{{- $_ := set $cfg $section $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
