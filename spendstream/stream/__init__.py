"""Stream workers (Faust): validate, enrich with tokens and cost, window spend, detect spikes."""
