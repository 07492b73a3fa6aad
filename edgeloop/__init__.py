"""edgeloop: edge-cloud incremental learning of detection models over MQTT.

This package is the product's shell: the ``edgeloop`` command and the MQTT client layer shared by
the cloud manager and the edge agents. The domain packages sit beside it: ``protocol``,
``cloud_manager``, ``edge_agent``, ``workers`` and ``mosquitto``.
"""

__version__ = "0.1.0"
