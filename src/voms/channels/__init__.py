"""Channels: protocol adapters (SOAP, USSD, SMS, IVR, mobile web) over the services."""
