"""A minimal fourth domain, outside simgan, registered by the test that runs it through the
chain (simgan.domains.register_domain): what docs/domains.md says a new domain adds."""
