"""The web console (`walle ui`, docs/console.md): the pool as a picture, jobs, instances,
placement explanations and packages, live from Consul; scale, stop, drain and install with the
operator's Consul token. Plain HTML, CSS and JavaScript in static/, no build step."""
