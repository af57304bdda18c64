"""One trial, end to end and without Ray: the context a worker holds (data, models, caches), the
trial's phases (craft, check, train, defend, evaluate) and the rows it returns, saved victims, and
pre-training of the models a scenario names."""
