"""libvirt support for the agent: typed domain XML objects (domain.py), the designer that turns a
DomainPlan into them (designer.py, disks through disks.py), the Hypervisor driver on a libvirt
connection (driver.py) with its disk hot-plug (devices.py) and bulk statistics (stats.py)."""
