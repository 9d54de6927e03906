"""What the tests share besides fixtures (those are in ``conftest.py``): the broker under test,
MQTT probes, waiting on a condition, and a gateway worker run in a thread."""
