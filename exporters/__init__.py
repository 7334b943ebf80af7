"""flowtel exporters: where derived metrics and enriched spans go."""
