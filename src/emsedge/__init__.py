"""emsedge: an edge gateway for SMT/EMS lines (OPC UA, Modbus TCP, SECS/GEM to MQTT, nothing lost)."""

__version__ = "0.1.0"
