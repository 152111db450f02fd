"""Deploy and snapshot nova VMware instances on vSAN with revertible TaskFlow flows."""
