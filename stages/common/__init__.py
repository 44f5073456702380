"""What the stage entry points share: params, data sources, the prompt renderer, the metric registry, model I/O."""
