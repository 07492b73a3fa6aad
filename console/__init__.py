"""The labelling console: a web page, served by its own process (``edgeloop console serve``),
where a person reviews a job's hard examples, corrects the model's boxes and saves them to the
job's dataset. It is a client of the cloud manager's API, as the CLI is."""
