"""An app with no flowtel import: run under `opentelemetry-instrument`, it must still get flowtel's metrics.

It runs a small traced flow against the fake model named by FAKE_LLM_URL, then prints the
Prometheus exposition of its own in-process endpoint, which the test reads.
"""

import os
import time
import urllib.request

import openai
from promptflow.tracing import start_trace, trace

start_trace()  # prompt flow's own setup: injects its openai wrapper, keeps the existing provider


@trace
def zero_code_flow(question: str) -> str:
    llm = openai.OpenAI(base_url=os.environ["FAKE_LLM_URL"], api_key="x", max_retries=0)
    reply = llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
    return reply.choices[0].message.content or ""


zero_code_flow("one two three")
url = f"http://127.0.0.1:{os.environ['OTEL_EXPORTER_PROMETHEUS_PORT']}/metrics"
for _ in range(50):  # the worker runs off-thread; wait (bounded) for the flow's trace to be derived
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    if "flow_request_total{" in body:
        break
    time.sleep(0.1)
print(body)
