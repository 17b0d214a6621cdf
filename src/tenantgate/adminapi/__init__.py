"""The Admin API (tenantgate.v1.RegistryService) beside the server: registry records to and from protobuf
(``wire``), and a client that changes a registry through a running server (``client``)."""
