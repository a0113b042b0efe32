"""netmedic: self-healing for the bridged networking of KVM/libvirt hypervisors."""

__version__ = "0.1.0"
