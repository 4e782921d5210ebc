"""chatterd's asyncio service: MQTT in, a speech queue, audio out. It never imports torch."""
