"""Publishers: the last stage, from the durable buffer to the broker (MQTT)."""

from emsedge.publish.mqtt import MqttPublisher, PublishResult

__all__ = ["MqttPublisher", "PublishResult"]
