"""OpenVoMS: an open prepaid voucher management system."""

__version__ = "0.1.0"
