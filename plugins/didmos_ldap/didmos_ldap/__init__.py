"""didmos_ldap: everything didmos keeps in and reads from the OpenLDAP metadirectory."""

__version__ = "0.1.0"
