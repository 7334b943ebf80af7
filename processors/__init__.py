"""flowtel processors: the logic shared by the in-process span processor and the collector."""
