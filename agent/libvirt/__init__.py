"""libvirt support for the agent: typed domain XML objects (domain.py), the designer that turns a
DomainPlan into them (designer.py) and the Hypervisor driver on a libvirt connection (driver.py)."""
