"""What the side-by-side bench runs: otelgate and its peers (nginx, LiteLLM), their config templates."""
