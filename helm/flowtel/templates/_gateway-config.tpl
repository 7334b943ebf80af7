{{/*
The gateway's config (upstream OpenTelemetry Collector contrib): OTLP in, then the loadbalancing
exporter routes every span of a trace id to the same flowtel pod, found by resolving the headless
Service. flowtel assembles traces per pod, so this keeps assembly (and feedback correlation, whose
spans come back through here) correct with any number of replicas. Logs go the same way (by trace id);
metrics are routed by service.name, so every point of an app's series reaches one pod, whose Prometheus
endpoint accumulates it (a DELTA series split across pods would be counted in parts).
*/}}
{{- define "flowtel.gatewayConfig" -}}
{{- $v := .Values -}}
{{- $grpc := dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.otlpGrpc)) -}}
{{- $http := dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.otlpHttp)) -}}
{{- $otlpClient := dict "tls" (deepCopy $v.gateway.tls) "timeout" "5s" -}}
{{- $extensions := dict "health_check" (dict "endpoint" (printf "0.0.0.0:%d" (int $v.ports.health))) -}}
{{- $serviceExtensions := list "health_check" -}}
{{- if $v.auth.enabled -}}
{{- /* upstream bearertokenauth checks the apps' token on the way in and sends it on the way out */ -}}
{{- $_ := set $extensions "bearertokenauth" (dict "token" "${env:FLOWTEL_OTLP_TOKEN}") -}}
{{- $serviceExtensions = append $serviceExtensions "bearertokenauth" -}}
{{- $_ := set $grpc "auth" (dict "authenticator" "bearertokenauth") -}}
{{- $_ := set $http "auth" (dict "authenticator" "bearertokenauth") -}}
{{- $_ := set $otlpClient "auth" (dict "authenticator" "bearertokenauth") -}}
{{- end -}}
{{- $cfg := dict
  "extensions" $extensions
  "receivers" (dict "otlp" (dict "protocols" (dict "grpc" $grpc "http" $http)))
  "processors" (dict "memory_limiter" (dict "check_interval" "1s" "limit_percentage" 80 "spike_limit_percentage" 20))
  "exporters" (dict
    "loadbalancing" (dict
      "routing_key" "traceID"
      "protocol" (dict "otlp" $otlpClient)
      "resolver" (dict "dns" (dict "hostname" (include "flowtel.headlessHost" .) "port" (toString $v.ports.otlpGrpc))))
    "loadbalancing/metrics" (dict
      "routing_key" "service"
      "protocol" (dict "otlp" (deepCopy $otlpClient))
      "resolver" (dict "dns" (dict "hostname" (include "flowtel.headlessHost" .) "port" (toString $v.ports.otlpGrpc)))))
  "service" (dict
      "extensions" $serviceExtensions
      "pipelines" (dict
        "traces" (dict "receivers" (list "otlp") "processors" (list "memory_limiter") "exporters" (list "loadbalancing"))
        "logs" (dict "receivers" (list "otlp") "processors" (list "memory_limiter") "exporters" (list "loadbalancing"))
        "metrics" (dict "receivers" (list "otlp") "processors" (list "memory_limiter") "exporters" (list "loadbalancing/metrics"))))
-}}
{{- toYaml $cfg -}}
{{- end -}}
